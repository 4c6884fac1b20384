"""Upstream sources: pinned, fetched once, looked up in mirrors first, unpacked into a store.

A target may name one `source` (its upstream tree, seen by the action read-only at
$SOURCE) besides its `srcs` (workspace files, at $SRC). Kinds and their identity — the
identity is in every dependent key, and is known before anything is fetched, so a
cached build needs no source at all:

  url         {url, sha256, strip_components}          sha256 of the archive
  debian      {debian: SOURCE-PACKAGE, version, file,   sha256 of the upstream tarball (the
               sha256, strip_components[, url]}         .orig file), fetched with `apt-get
                                                        source --download-only PKG=VERSION`
                                                        (deb-src enabled); `url`, where the
                                                        same bytes are an upstream release
                                                        file, serves machines without apt.
                                                        Same identity as a url source: one pin.
  pypi-sdist  {pypi-sdist: NAME, version, sha256,        sha256 of the sdist, fetched with
               subdirectory}                            `pip download` (e.g. the full OpenCV
                                                        tree inside opencv-python's sdist)
  pypi-wheel  {pypi-wheel: NAME, version, sha256         sha256 of the wheel (`pip download
               [, file]}                                --only-binary`); `file`, the wheel's
                                                        name, selects that file whatever
                                                        Python runs buildgraph (its tags
                                                        become pip's --platform, --abi, ...).
                                                        The tree is the wheel's data directory
                                                        (lib/, include/, share/), or its root
                                                        where it has none; licence files of
                                                        .dist-info under share/licenses/NAME/.
                                                        Prebuilt binaries, audited like ours
  git         {git: URL, commit: 40-hex SHA}            the commit (git verifies its objects)
  path        {path: DIR}                               tree digest of DIR in the workspace

Mirror layout (a directory, or an http(s) base URL), by digest:
  <mirror>/sha256/<sha256>          url, debian, pypi-sdist and pypi-wheel archives
  <mirror>/git/<commit>.bundle      a git bundle holding the commit
Lookup order: the unpacked store, then each mirror in --mirror / $BUILDGRAPH_MIRROR
(':'-separated), then upstream. A downloaded archive whose sha256 differs is an
error naming the source and both digests; nothing is unpacked from it.

Store: <cache>/sources/<identity digest>/tree, built in a temp dir and renamed in
under a lock (two builds fetching one source do it once).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# hashlib, subprocess, tarfile, zipfile and the HTTP client are imported where used: the workspace
# loader imports this module for `Source`, and a no-op build must not pay for them.

from buildgraph.digest import sha256_file, value_digest
from buildgraph.errors import BuildgraphError
from buildgraph.fsutil import force_remove


class SourceError(BuildgraphError):
    """A source could not be obtained, or was not what it was pinned to."""


@dataclass(frozen=True)
class Source:
    kind: str                     # url | debian | pypi-sdist | pypi-wheel | git | path
    location: str                 # URL, package name, repository URL or workspace path
    sha256: str | None = None
    commit: str | None = None
    version: str | None = None
    subdirectory: str = ""
    strip_components: int = 0
    declared_in: str = ""         # file:line, for messages
    file: str = ""                # debian: the upstream tarball's name in the source package
    url: str = ""                 # debian: an upstream URL serving the same bytes

    def identity(self) -> list:
        """What the key hashes for this source (path sources add their tree digest). An archive
        is its sha256, whichever origin delivers it (url or debian)."""
        if self.kind in ("url", "debian"):
            return ["archive", self.sha256, self.subdirectory, self.strip_components, None]
        pin = {"pypi-sdist": self.sha256, "pypi-wheel": self.sha256, "git": self.commit, "path": self.location}[self.kind]
        return [self.kind, pin, self.subdirectory, self.strip_components,
                self.version if self.kind in ("pypi-sdist", "pypi-wheel") else None]

    @property
    def prebuilt(self) -> bool:
        """Binaries someone else built (a wheel), not sources."""
        return self.kind == "pypi-wheel"

    def describe(self) -> str:
        if self.kind in ("pypi-sdist", "pypi-wheel"):
            return f"{self.kind} {self.location}=={self.version}"
        if self.kind == "debian":
            return f"debian source {self.location}={self.version} ({self.file})"
        return f"{self.kind} {self.location}" + (f"@{self.commit[:12]}" if self.commit else "")

    def mirror_name(self) -> str:
        return f"git/{self.commit}.bundle" if self.kind == "git" else f"sha256/{self.sha256}"


def mirror_list(extra=()) -> list[str]:
    env = [p for p in os.environ.get("BUILDGRAPH_MIRROR", "").split(":") if p]
    # http(s) URLs contain ':' themselves: re-join "https" + "//host/..." pieces
    joined, i = [], 0
    while i < len(env):
        if env[i] in ("http", "https") and i + 1 < len(env):
            joined.append(f"{env[i]}:{env[i + 1]}")
            i += 2
        else:
            joined.append(env[i])
            i += 1
    return list(dict.fromkeys([str(m) for m in extra] + joined))   # each place looked in once


def mirror_copies(src: Source, mirrors: list[str]) -> list[str]:
    """Where the mirrors would hold `src`, in the order they are tried (directories or URLs)."""
    return [f"{mirror.rstrip('/')}/{src.mirror_name()}" for mirror in mirrors]


class SourceStore:
    def __init__(self, root: Path, mirrors: list[str]):
        self.root = Path(root)
        self.mirrors = mirrors

    def tree_path(self, src: Source) -> Path:
        return self.root / value_digest(src.identity())[:24] / "tree"

    def get(self, src: Source, log=None) -> Path:
        """The unpacked tree of `src` (its subdirectory), fetching it if needed."""
        if src.kind == "path":
            raise AssertionError("path sources live in the workspace")
        tree = self.tree_path(src)
        if (tree.parent / "complete").exists():
            return tree / src.subdirectory if src.subdirectory else tree
        tree.parent.mkdir(parents=True, exist_ok=True)
        with open(tree.parent.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (tree.parent / "complete").exists():
                tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
                try:
                    archive = self.obtain(src, tmp, log)
                    self.unpack(src, archive, tmp / "tree")
                    if tree.exists():
                        force_remove(tree)
                    os.rename(tmp / "tree", tree)
                    (tree.parent / "complete").write_text(src.describe() + "\n")
                finally:
                    force_remove(tmp)
        if src.subdirectory and not (tree / src.subdirectory).is_dir():
            raise SourceError(f"{src.describe()} ({src.declared_in}): no directory {src.subdirectory!r} in it")
        return tree / src.subdirectory if src.subdirectory else tree

    def to_mirror(self, src: Source, mirror: Path, log=None) -> Path:
        """Put `src` into the mirror directory (if it is not there); returns its path there."""
        dest = mirror / src.mirror_name()
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".mirror-", dir=mirror))
        try:
            archive = self.obtain(src, tmp, log)
            os.replace(archive, dest)
        finally:
            force_remove(tmp)
        return dest

    # ------------------------------------------------------------ obtaining

    def obtain(self, src: Source, tmp: Path, log=None) -> Path:
        """The archive (or git bundle) for `src` in `tmp`, verified, from a mirror or upstream."""
        tried = []
        for where in mirror_copies(src, self.mirrors):
            tried.append(where)
            got = tmp / "archive"
            try:
                if where.startswith(("http://", "https://")):
                    _download(where, got)
                elif os.path.isfile(where):
                    shutil.copyfile(where, got)
                else:
                    continue
            except OSError:
                force_remove(got)
                continue
            self._verify(src, got, where)
            return got
        if log:
            log(f"fetching {src.describe()} from upstream")
        tried.append("upstream")
        try:
            got = {"url": self._from_url, "debian": self._from_debian, "pypi-sdist": self._from_pypi,
                   "pypi-wheel": self._from_pypi, "git": self._from_git}[src.kind](src, tmp)
        except SourceError:
            raise
        except Exception as exc:  # any failure to reach upstream is reported with what was tried
            raise SourceError(f"cannot fetch {src.describe()} ({src.declared_in}): {exc}. Looked in: "
                              f"{', '.join(tried)}. Put it in a mirror as {src.mirror_name()} "
                              f"(`buildgraph fetch --mirror DIR` on a machine that can reach it)") from None
        self._verify(src, got, "upstream")
        return got

    def _verify(self, src: Source, archive: Path, where: str) -> None:
        if src.kind == "git":
            return  # `git fetch` from the bundle verifies every object against the commit
        found = sha256_file(archive)
        if found != src.sha256:
            raise SourceError(f"{src.describe()} ({src.declared_in}) from {where}: sha256 is {found}, "
                              f"expected {src.sha256}")

    def _from_url(self, src: Source, tmp: Path) -> Path:
        if src.location.startswith("file://"):
            shutil.copyfile(src.location[len("file://"):], tmp / "archive")
        else:
            _download(src.location, tmp / "archive")
        return tmp / "archive"

    def _from_pypi(self, src: Source, tmp: Path) -> Path:
        import subprocess
        import sys

        if src.kind == "pypi-wheel":
            wheel = WheelName.parse(src.file) if src.file else None   # checked when the workspace loaded
            what = ["--only-binary=:all:", *(wheel.pip_options() if wheel else [])]
        else:
            what = [f"--no-binary={src.location}"]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               *what, "--dest", str(tmp / "pip"), f"{src.location}=={src.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list((tmp / "pip").glob("*")) if (tmp / "pip").is_dir() else []
        if proc.returncode != 0 or len(files) != 1:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise SourceError(f"pip could not download {src.describe()}: {tail}")
        return files[0]

    def _from_debian(self, src: Source, tmp: Path) -> Path:
        """`apt-get source --download-only` (deb-src enabled), else the upstream URL if given."""
        import subprocess

        work = tmp / "apt"
        work.mkdir()
        problem = "apt-get is not installed"
        if shutil.which("apt-get"):
            proc = subprocess.run(["apt-get", "source", "--download-only", "--only-source", "-qq",
                                   f"{src.location}={src.version}"], cwd=work, capture_output=True, text=True)
            if (work / src.file).is_file():
                return work / src.file
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")]
            problem = (errors[-1] if errors else f"it did not deliver {src.file}") + \
                " (is deb-src among the Types of the apt sources? `bash .ci/setup` enables it)"
        if src.url:
            return self._from_url(Source("url", src.url, sha256=src.sha256), tmp)
        raise SourceError(f"apt-get source {src.location}={src.version}: {problem}")

    def _from_git(self, src: Source, tmp: Path) -> Path:
        repo = tmp / "repo"
        _git("init", "-q", "--bare", str(repo))
        _git("-C", str(repo), "fetch", "-q", "--depth", "1", src.location, src.commit)
        # A bundle needs a ref to carry the commit; fetching from it verifies every object.
        _git("-C", str(repo), "update-ref", "refs/heads/pinned", src.commit)
        bundle = tmp / "archive"
        _git("-C", str(repo), "bundle", "create", "-q", str(bundle), "refs/heads/pinned")
        return bundle

    # ------------------------------------------------------------ unpacking

    def unpack(self, src: Source, archive: Path, dest: Path) -> None:
        """Unpack a verified archive (or check out a bundle) into the new directory `dest`."""
        import tarfile
        import zipfile

        dest.mkdir()
        if src.kind == "git":
            repo = dest.parent / "git"
            _git("init", "-q", str(repo))
            _git("-C", str(repo), "fetch", "-q", str(archive), src.commit)
            _git("-C", str(repo), "-c", "advice.detachedHead=false", "checkout", "-q", src.commit)
            shutil.rmtree(repo / ".git")
            os.rmdir(dest)
            os.rename(repo, dest)
            return
        if src.kind == "pypi-wheel":
            self._unpack_wheel(src, archive, dest)
            return
        strip = src.strip_components if src.kind in ("url", "debian") else 1   # an sdist holds NAME-VERSION/
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    parts = Path(info.filename).parts[strip:]
                    if not parts or info.is_dir():
                        continue
                    if ".." in parts or Path(info.filename).is_absolute():
                        raise SourceError(f"{src.describe()}: archive member {info.filename!r} leaves the tree")
                    target = dest.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    if info.external_attr >> 16 & 0o111:
                        target.chmod(0o755)
            return
        with tarfile.open(archive) as t:
            members = []
            for m in t.getmembers():
                parts = Path(m.name).parts[strip:]
                if parts:
                    m.name = str(Path(*parts))
                    members.append(m)
            t.extractall(dest, members=members, filter="data")


    def _unpack_wheel(self, src: Source, archive: Path, dest: Path) -> None:
        """A wheel's data directory (NAME-VERSION.data/data/: lib/, include/, share/) becomes the
        tree; its licence files from .dist-info go to share/licenses/NAME/."""
        import zipfile

        with zipfile.ZipFile(archive) as z:
            members = [(info, Path(info.filename).parts) for info in z.infolist()
                       if not info.is_dir() and ".." not in Path(info.filename).parts
                       and not Path(info.filename).is_absolute()]
            has_data = any(len(parts) > 2 and parts[0].endswith(".data") and parts[1] == "data"
                           for _, parts in members)
            for info, parts in members:
                if len(parts) > 2 and parts[0].endswith(".data") and parts[1] == "data":
                    target = dest.joinpath(*parts[2:])
                elif len(parts) == 2 and parts[0].endswith(".dist-info"):
                    if not any(word in parts[1].upper() for word in ("LICENSE", "LICENCE", "COPYING", "NOTICE")):
                        continue
                    target = dest / "share" / "licenses" / src.location / parts[1]
                elif not has_data and not parts[0].endswith((".data", ".dist-info")):
                    target = dest.joinpath(*parts)    # e.g. a vendored NAME.libs/ directory
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                if info.external_attr >> 16 & 0o111:
                    target.chmod(0o755)
        if not any(dest.iterdir()):
            raise SourceError(f"{src.describe()} ({src.declared_in}): the wheel holds no files")


def wheel_stem(project: str) -> str:
    """A project's name as wheel file names spell it (PEP 427 with PEP 503's normalization:
    runs of -_. as one _, lower case): My.Backend -> my_backend."""
    import re

    return re.sub(r"[-_.]+", "_", project).lower()


@dataclass(frozen=True)
class WheelName:
    """A wheel file's name (PEP 427: NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl), tags split."""
    project: str                  # normalized: lower case, runs of -_. as _
    version: str
    pythons: tuple[str, ...]      # cp311 | py3 | py2, py3 ...
    abis: tuple[str, ...]
    platforms: tuple[str, ...]    # manylinux_2_17_x86_64, manylinux2014_x86_64 ...

    @staticmethod
    def parse(file: str) -> "WheelName | None":
        parts = file[:-len(".whl")].split("-") if file.endswith(".whl") and "/" not in file else []
        if len(parts) not in (5, 6):
            return None
        python, abi, platform = (tuple(p.split(".")) for p in parts[-3:])
        return WheelName(wheel_stem(parts[0]), parts[1], python, abi, platform)

    def pip_options(self) -> list[str]:
        """What makes `pip download` choose this wheel whatever the running Python is."""
        tag = self.pythons[-1]                          # cp311; py3 of py2.py3
        implementation, digits = tag[:2], tag[2:]
        version = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        options = ["--implementation", implementation, "--python-version", version, "--abi", self.abis[0]]
        for platform in self.platforms:
            options += ["--platform", platform]
        return options


def _download(url: str, dest: Path) -> None:
    from buildgraph.httpclient import client

    client().download(url, dest)


def _git(*args) -> None:
    import subprocess

    proc = subprocess.run(["git", *args], capture_output=True, text=True,
                          env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
    if proc.returncode != 0:
        raise SourceError(f"git {' '.join(args[:3])}…: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
