"""Publish artifacts to a Maven repository: one jar per variant under one set of coordinates.

Each variant's jar (classifier: the variant, e.g. cpu-static) holds the artifact's library and
its bundled dependencies under native/linux-x86_64/ (with a FILES index and the .meta), the
licence files under META-INF/licenses/, and a loader class, <group>.<artifact>.NativeLibrary
(compiled here with javac, --release 8), whose load() extracts them into a temporary
directory and System.load()s the library: its RPATH ($ORIGIN) finds the rest there. The POM
(packaging pom) lists the classifiers. Every file gets a detached gpg signature (.asc), made
with the key given in $BUILDGRAPH_GPG_KEY (an armoured secret key) in a temporary keyring.
Maven's own client deploys them (deploy:deploy-file, plugins from Debian's maven-repo, so it
runs without network): the files first, then the metadata that makes them visible.

A release is immutable: files the repository has byte for byte are not deployed again, and
other bytes under a released version are refused before anything is uploaded. Nightlies are
VERSION-SNAPSHOT, which Maven stores as timestamped files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from buildgraph.errors import UsageError
from buildgraph.fsutil import write_zip
from buildgraph.publish import Credentials, PublishError, Request, Restored

PLATFORM_DIR = "native/linux-x86_64"
DEBIAN_MAVEN_REPO = "/usr/share/maven-repo"
DEPLOY_PLUGIN = "org.apache.maven.plugins:maven-deploy-plugin:3.0.0:deploy-file"

LOADER = """\
package {package};

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.file.Files;
import java.nio.file.Path;

/** Loads {library} and the libraries it ships with from this jar. */
public final class NativeLibrary {{
    private static final String DIR = "/{platform_dir}/";
    private static String loaded;

    private NativeLibrary() {{}}

    /** Extract the native files into a temporary directory, System.load the library; returns its path. */
    public static synchronized String load() throws IOException {{
        if (loaded != null) return loaded;
        String arch = System.getProperty("os.arch");
        if (!System.getProperty("os.name").startsWith("Linux") || !(arch.equals("amd64") || arch.equals("x86_64")))
            throw new UnsatisfiedLinkError("this jar carries {library} for linux-x86_64 only");
        Path dir = Files.createTempDirectory("{stem}-");
        dir.toFile().deleteOnExit();
        try (InputStream index = NativeLibrary.class.getResourceAsStream(DIR + "FILES")) {{
            if (index == null) throw new IOException(DIR + "FILES is missing from the jar");
            BufferedReader names = new BufferedReader(new InputStreamReader(index, "UTF-8"));
            for (String name; (name = names.readLine()) != null; ) {{
                if (name.isEmpty()) continue;
                try (InputStream in = NativeLibrary.class.getResourceAsStream(DIR + name)) {{
                    Files.copy(in, dir.resolve(name));
                }}
                dir.resolve(name).toFile().deleteOnExit();
            }}
        }}
        String path = dir.resolve("{library}").toString();
        System.load(path);
        loaded = path;
        return path;
    }}
}}
"""


@dataclass(frozen=True)
class Coordinates:
    group: str
    artifact: str
    version: str

    def path(self) -> str:
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}"

    def file(self, classifier: str | None, ext: str) -> str:
        return f"{self.artifact}-{self.version}{'-' + classifier if classifier else ''}.{ext}"


def loader_classes(package: str, library: str, work: Path) -> list[tuple[str, bytes]]:
    """The NativeLibrary class for `package`, compiled with javac (--release 8)."""
    javac = shutil.which("javac")
    if javac is None:
        raise PublishError("publishing to Maven compiles a loader class with javac: apt-get install "
                           "default-jdk-headless")
    src = work / "src" / package.replace(".", "/") / "NativeLibrary.java"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(LOADER.format(package=package, library=library, platform_dir=PLATFORM_DIR,
                                 stem=re.sub(r"\W", "_", library.split(".")[0])))
    classes = work / "classes"
    proc = subprocess.run([javac, "--release", "8", "-encoding", "UTF-8", "-d", str(classes), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PublishError(f"javac failed on the loader class:\n{proc.stderr.strip()[-2000:]}")
    return [(str(p.relative_to(classes)), p.read_bytes()) for p in sorted(classes.rglob("*.class"))]


def make_jar(dist: Path, classes: list[tuple[str, bytes]], target: Path) -> Path:
    """The variant's jar from its artifact's dist/ tree and the loader's classes."""
    natives = sorted(p for p in (dist / "lib").iterdir() if p.is_file())
    entries = [("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\r\nCreated-By: buildgraph\r\n\r\n"), *classes]
    entries += [(f"{PLATFORM_DIR}/{p.name}", p.read_bytes()) for p in natives]
    entries.append((f"{PLATFORM_DIR}/FILES", "".join(f"{p.name}\n" for p in natives).encode()))
    entries += [(f"{PLATFORM_DIR}/{p.name}", p.read_bytes()) for p in sorted(dist.glob("*.meta"))]
    entries += [(f"META-INF/licenses/{p.relative_to(dist / 'licenses')}", p.read_bytes())
                for p in sorted((dist / "licenses").rglob("*")) if p.is_file()]
    write_zip(target, [(name, data, 0o644) for name, data in entries])   # fixed dates: the same jar again
    return target


def make_pom(coords: Coordinates, classifiers: list[str], description: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            f"  <modelVersion>4.0.0</modelVersion>\n"
            f"  <groupId>{escape(coords.group)}</groupId>\n"
            f"  <artifactId>{escape(coords.artifact)}</artifactId>\n"
            f"  <version>{escape(coords.version)}</version>\n"
            f"  <packaging>pom</packaging>\n"
            f"  <description>{escape(description)}</description>\n"
            f"  <!-- one jar per variant; its classifier names it -->\n"
            f"  <properties>\n"
            f"    <buildgraph.classifiers>{escape(','.join(classifiers))}</buildgraph.classifiers>\n"
            f"  </properties>\n"
            f"</project>\n").encode()


class Repository:
    """A Maven repository over HTTP(S) (or file://), read with httpclient, written by mvn."""

    def __init__(self, url: str, creds: Credentials):
        self.url = url.rstrip("/")
        self.creds = creds

    def sha1(self, coords: Coordinates, name: str) -> str | None:
        """The SHA-1 the repository records for one file of a release (None: it has none)."""
        try:
            return self.creds.request(f"{self.url}/{coords.path()}/{name}.sha1").data.decode().split()[0].strip().lower()
        except OSError as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise PublishError(f"cannot read the repository at {self.url}: {exc} (reading {name}.sha1)") from None

    def deploy(self, coords: Coordinates, pom: Path, attached: list[tuple[Path, str, str]], work: Path) -> None:
        """mvn deploy:deploy-file: the POM as the main file, `attached` as (file, classifier, type)."""
        mvn = shutil.which("mvn")
        if mvn is None or not os.path.isdir(DEBIAN_MAVEN_REPO):
            raise PublishError("publishing to Maven deploys with Maven: apt-get install maven "
                               "libmaven-deploy-plugin-java libmaven-resolver-transport-http-java")
        settings = work / "settings.xml"
        # The credentials stay in mvn's environment: settings.xml names them, it does not hold them.
        settings.write_text(
            "<settings>\n"
            f"  <localRepository>{escape(str(work / 'm2'))}</localRepository>\n"
            "  <mirrors><mirror><id>debian</id><mirrorOf>central</mirrorOf>"
            f"<url>file://{DEBIAN_MAVEN_REPO}</url></mirror></mirrors>\n"
            "  <servers><server><id>target</id><username>${env.BUILDGRAPH_MAVEN_USER}</username>"
            "<password>${env.BUILDGRAPH_MAVEN_PASSWORD}</password></server></servers>\n"
            "</settings>\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDGRAPH_MAVEN_")}
        env.update(BUILDGRAPH_MAVEN_USER=self.creds.username or "", BUILDGRAPH_MAVEN_PASSWORD=self.creds.password or "")
        cmd = [mvn, "-B", "-q", "-s", str(settings), DEPLOY_PLUGIN, f"-Dfile={pom}", f"-DpomFile={pom}",
               "-Dpackaging=pom", f"-Durl={self.url}", "-DrepositoryId=target",
               f"-Dfiles={','.join(str(f) for f, _, _ in attached)}",
               f"-Dclassifiers={','.join(c for _, c, _ in attached)}",
               f"-Dtypes={','.join(t for _, _, t in attached)}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
        if proc.returncode != 0:
            tail = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line)[-3000:]
            raise PublishError(f"mvn could not deploy {coords.group}:{coords.artifact}:{coords.version} to "
                               f"{self.url}:\n{tail}")


class Signer:
    """Detached ASCII signatures with the key in $BUILDGRAPH_GPG_KEY, in a keyring of its own.
    A context manager: gpg starts an agent for the keyring, which would outlive it."""

    def __init__(self, work: Path):
        key = os.environ.get("BUILDGRAPH_GPG_KEY")
        if not key:
            raise PublishError("publishing to Maven signs every file: put an armoured secret key in "
                               "$BUILDGRAPH_GPG_KEY (and its passphrase, if any, in $BUILDGRAPH_GPG_PASSPHRASE)")
        self.passphrase = os.environ.get("BUILDGRAPH_GPG_PASSPHRASE", "")
        self.home = work / "gnupg"
        self.home.mkdir(mode=0o700)
        self._key = key

    def __enter__(self) -> Signer:
        try:
            self._gpg(["--import"], self._key.encode(), "could not import the key in $BUILDGRAPH_GPG_KEY")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run([gpgconf, "--homedir", str(self.home), "--kill", "all"], capture_output=True)

    def _gpg(self, args: list[str], data: bytes | None, what: str) -> None:
        gpg = shutil.which("gpg")
        if gpg is None:
            raise PublishError("signing needs gpg: apt-get install gnupg")
        proc = subprocess.run([gpg, "--batch", "--yes", "--homedir", str(self.home), "--pinentry-mode", "loopback",
                               "--passphrase-fd", "0", *args], input=self.passphrase.encode() + b"\n" + (data or b""),
                              capture_output=True)
        if proc.returncode != 0:
            raise PublishError(f"gpg: {what}: {proc.stderr.decode(errors='replace').strip()[-500:]}")

    def sign(self, path: Path) -> Path:
        self._gpg(["--armor", "--detach-sign", "--output", f"{path}.asc", str(path)], None,
                  f"could not sign {path.name}")
        return Path(f"{path}.asc")


def publish_artifacts(restored: list[Restored], url: str, creds: Credentials, request: Request) -> list[str]:
    """Every restored variant's jar, and the POM, to the repository at `url`, under
    request.group : the wheel name : the version (-SNAPSHOT for a nightly); the report's lines."""
    targets = {r.target.name for r in restored}
    if len(targets) != 1:
        raise UsageError(f"one artifact target per Maven publish (its variants are the classifiers); "
                         f"got {', '.join(sorted(targets))}")
    t = restored[0].target
    version = (t.version or "0") + ("-SNAPSHOT" if request.nightly else "")
    coords = Coordinates(request.group, t.wheel or t.name, version)
    variants = [(r.node.partition("@")[2] or "default", r.out / "dist") for r in restored]
    deployed, there = deploy(variants, os.path.basename(t.library), coords, Repository(url, creds),
                             t.description or t.name, bool(request.nightly))
    where = f"{coords.group}:{coords.artifact}:{coords.version}"
    return [f"deployed {name}" for name in deployed] + [
        f"deployed {len(deployed)} files (and their signatures) as {where}" if deployed else
        f"nothing to deploy: {url} has {where} with all {len(there)} files, identical"]


def deploy(variants: list[tuple[str, Path]], library: str, coords: Coordinates, repo: Repository,
           description: str, snapshot: bool) -> tuple[list[str], list[str]]:
    """Deploy every (classifier, dist/ tree) variant's jar, and the POM, under `coords`:
    (deployed, already there) file names."""
    with tempfile.TemporaryDirectory(prefix="bg-maven-") as tmp:
        work = Path(tmp)
        package = re.sub(r"[^A-Za-z0-9_.]", "_", f"{coords.group}.{coords.artifact}")
        classes = loader_classes(package, library, work / "loader")     # one loader for every variant
        files = [(make_jar(dist, classes, work / coords.file(classifier, "jar")), classifier, "jar")
                 for classifier, dist in variants]
        pom = work / coords.file(None, "pom")
        pom.write_bytes(make_pom(coords, [classifier for classifier, _ in variants], description))
        there, refused = [], []
        if not snapshot:
            for path, _, _ in [(pom, "", "pom"), *files]:
                recorded = repo.sha1(coords, path.name)
                mine = hashlib.sha1(path.read_bytes()).hexdigest()
                if recorded == mine:
                    there.append(path.name)
                elif recorded is not None:
                    refused.append(f"{repo.url} already has {coords.path()}/{path.name} with other contents: a "
                                   "release is immutable; publish a new version, or a nightly (--nightly: -SNAPSHOT)")
        if refused:
            raise PublishError("nothing was deployed:\n  " + "\n  ".join(refused))
        new = [f for f in files if f[0].name not in there]
        if not new and pom.name in there:
            return [], there
        with Signer(work) as signer:
            attached = [*new, *((signer.sign(f), c, f"{t}.asc") for f, c, t in new),
                        (signer.sign(pom), "", "pom.asc")]
        repo.deploy(coords, pom, attached, work)
        return [pom.name, *(f.name for f, _, _ in new)], there
