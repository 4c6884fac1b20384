"""buildgraph publish: built artifacts to a Python package index (pypiserver on loopback, with
authentication), never rebuilt, credentials only in that step; nightlies and their pruning."""

import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import PypiServer

USER, PASSWORD = "releaser", "pw-7f3a9c1e-never-in-a-file"

LIB_C = "int answer(void) { return ANSWER; }\n"   # pure code: no C library, so every tag is true
TAG = "py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.musllinux_1_1_x86_64.whl"
WORKSPACE = """\
    variants:
      device: [cpu, gpu]
    toolchain: host-gcc
    targets:
      lib:
        kind: script
        srcs: [lib.c, LICENSE]
        features: [device]
        outs: [lib/libanswer.so, LICENSE]
        licenses: [LICENSE]
        cmds: ["mkdir -p $OUT/lib && cp $SRC/LICENSE $OUT/",
               "$CC -O2 -fPIC -shared -DANSWER=$ANSWER $SRC/lib.c -o $OUT/lib/libanswer.so"]
        env: {ANSWER: "42"}
      pkg:
        kind: artifact
        backend: lib
        library: lib/libanswer.so
        policy: manylinux_2_17
        wheel: answer
        project: "answer-{device}"
        version: "1.0"
        deps: [lib]
        features: [device]
    """


@pytest.fixture
def index(tmp_path):
    srv = PypiServer(tmp_path / "pypi", USER, PASSWORD)
    yield srv
    srv.stop()


def make(ws, answer="42"):
    ws.write("lib.c", LIB_C)
    ws.write("LICENSE", "MIT\n")
    ws.write("BUILD.yaml", WORKSPACE.replace('ANSWER: "42"', f'ANSWER: "{answer}"'))


def listed(index, project) -> list[str]:
    try:
        with urllib.request.urlopen(f"{index.url}/simple/{project}/") as resp:
            page = resp.read().decode()
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return []
    return sorted(p.split("#")[0].rsplit("/", 1)[-1] for p in page.split('href="')[1:])


def files_containing(root, secret: bytes) -> list[str]:
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if secret in f.read():
                        found.append(path)
            except OSError:
                pass
    return found


def test_publish_uploads_built_wheels_once_never_builds_and_keeps_credentials_out(ws, capsys, index, tmp_path,
                                                                                 monkeypatch):
    make(ws)
    monkeypatch.setenv("TWINE_USERNAME", USER)
    monkeypatch.setenv("TWINE_PASSWORD", PASSWORD)
    to = ["--to", f"pypi:{index.url}/"]

    # Not built: refused, and nothing was built or uploaded.
    rc, out, err = ws.run("publish", "pkg", *to, capsys=capsys)
    assert rc == 1 and "not built: pkg@cpu, pkg@gpu" in err and "never builds" in err, out + err
    assert not (ws.out("lib@cpu")).exists() and listed(index, "answer-cpu") == []

    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    rc, out, err = ws.run("publish", "pkg", *to, capsys=capsys)
    assert rc == 0, out + err
    assert "uploaded 2 files" in out
    assert listed(index, "answer-cpu") == [f"answer_cpu-1.0-{TAG}"]
    # Again: the index has both, byte for byte.
    rc, out, err = ws.run("publish", "pkg", *to, capsys=capsys)
    assert rc == 0 and "nothing to upload" in out and "already there, identical" in out, out + err

    # A user installs it from the index into a fresh venv and loads the library.
    for project in ("answer-cpu", "answer-gpu"):    # each uploaded wheel, as a user installs it
        venv = tmp_path / f"venv-{project}"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--index-url",
                              f"{index.url}/simple/", f"{project}==1.0"], capture_output=True, text=True)
        assert pip.returncode == 0, pip.stderr
        call = subprocess.run([str(venv / "bin/python"), "-c", "import answer; print(answer.load().answer())"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert call.stdout == "42\n", call.stderr

    # The same version with other contents: refused before anything is uploaded (PyPI's rule).
    make(ws, answer="43")
    assert ws.build(capsys=capsys)["_rc"] == 0
    rc, out, err = ws.run("publish", "pkg", *to, capsys=capsys)
    assert rc == 1 and "cannot be replaced" in err and "nothing was uploaded" in err, out + err
    assert listed(index, "answer-cpu") == [f"answer_cpu-1.0-{TAG}"]

    # Wrong credentials: the upload fails, and the message does not show them.
    monkeypatch.setenv("TWINE_PASSWORD", "wrong-" + PASSWORD)
    rc, out, err = ws.run("publish", "pkg", *to, "--nightly", capsys=capsys)
    assert rc == 1 and "twine could not upload" in err and PASSWORD not in out + err, out + err

    # Nothing the runs wrote holds the password: workspace, cache, state, logs.
    for root in (ws.root, ws.cache):
        assert files_containing(root, PASSWORD.encode()) == []


def test_nightlies_are_dev_releases_numbered_per_day_and_pruned(ws, capsys, index, tmp_path, monkeypatch):
    make(ws)
    assert ws.build(capsys=capsys)["_rc"] == 0
    # Credentials from a netrc file this time.
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("TWINE_PASSWORD", raising=False)
    to = ["--to", f"pypi:{index.url}/"]

    def nightly(date):
        rc, out, err = ws.run("publish", "pkg@cpu", *to, "--nightly", "--nightly-date", date, capsys=capsys)
        assert rc == 0, out + err
        return out

    assert "uploaded 1 files" in nightly("20261120")
    assert "nothing to upload" in nightly("20261120")        # the same bytes, the same day
    make(ws, answer="43")
    assert ws.build(capsys=capsys)["_rc"] == 0
    nightly("20261120")                                       # new bytes: the day's second nightly
    nightly("20261121")
    tag = TAG
    assert listed(index, "answer-cpu") == [f"answer_cpu-1.0.dev202611201-{tag}", f"answer_cpu-1.0.dev202611202-{tag}",
                                           f"answer_cpu-1.0.dev202611211-{tag}"]
    # pip sees them as pre-releases of 1.0, newest last
    from packaging.version import Version
    assert Version("1.0.dev202611202") > Version("1.0.dev202611201") and Version("1.0.dev202611211").is_devrelease

    sizes = {p.name: p.stat().st_size for p in index.packages.iterdir()}
    rc, out, err = ws.run("publish", "pkg@cpu", *to, "--prune-nightlies", "--keep", "1", capsys=capsys)
    assert rc == 0, out + err
    assert "removed answer_cpu 1.0.dev202611201" in out and "removed answer_cpu 1.0.dev202611202" in out
    freed = sizes[f"answer_cpu-1.0.dev202611201-{tag}"] + sizes[f"answer_cpu-1.0.dev202611202-{tag}"]
    assert f"pruned 2 nightlies, {freed} bytes freed" in out, out
    assert listed(index, "answer-cpu") == [f"answer_cpu-1.0.dev202611211-{tag}"]


def throwaway_key(tmp_path) -> tuple[str, Path]:
    """(an armoured secret key, a keyring holding only its public half) for this test."""
    home, verify = tmp_path / "gnupg-make", tmp_path / "gnupg-verify"
    for d in (home, verify):
        d.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "Release <release@example.invalid>", "ed25519",
                    "sign", "never"], check=True, capture_output=True)
    secret = subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True, capture_output=True).stdout
    public = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout
    subprocess.run(["gpg", "--batch", "--homedir", str(verify), "--import"], input=public, check=True,
                   capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=True)
    return secret.decode(), verify


def gpg_agents(named: str) -> list[str]:
    """The command lines of running gpg-agents with `named` in them (in their --homedir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and named.encode() in b" ".join(argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


@pytest.mark.skipif(not all(map(shutil.which, ("mvn", "javac", "gpg"))), reason="needs maven, a JDK and gpg")
def test_maven_jars_signed_deployed_once_resolved_and_loaded_from_java(ws, capsys, tmp_path, monkeypatch, index):
    from servers import NginxServer

    repo = NginxServer(tmp_path / "maven", basic_auth=(USER, PASSWORD))
    # The publish's keyring goes in here. Not under tmp_path: gpg-agent's socket path must be short.
    short_tmp = tempfile.mkdtemp(prefix="bg-test-")
    try:
        make(ws)
        assert ws.build(capsys=capsys)["_rc"] == 0
        secret, verify_home = throwaway_key(tmp_path)
        monkeypatch.setattr(tempfile, "tempdir", short_tmp)
        monkeypatch.setenv("BUILDGRAPH_GPG_KEY", secret)
        monkeypatch.setenv("MAVEN_USERNAME", USER)
        monkeypatch.setenv("MAVEN_PASSWORD", PASSWORD)
        monkeypatch.setenv("TWINE_USERNAME", USER)
        monkeypatch.setenv("TWINE_PASSWORD", PASSWORD)
        to = ["--to", f"maven:{repo.url}/maven", "--group", "org.example"]
        both = [*to, "--to", f"pypi:{index.url}/"]
        # One command publishes the matrix: every variant's jar and wheel.
        rc, out, err = ws.run("publish", "pkg", *both, capsys=capsys)
        assert rc == 0, out + err
        assert "deployed 3 files (and their signatures) as org.example:answer:1.0" in out
        assert "uploaded 2 files" in out
        release = repo.data / "maven/org/example/answer/1.0"
        names = sorted(p.name for p in release.iterdir())
        for name in ("answer-1.0.pom", "answer-1.0-cpu.jar", "answer-1.0-gpu.jar"):
            assert name in names and f"{name}.asc" in names, names
        # Every file's signature verifies against the public key.
        for asc in release.glob("*.asc"):
            check = subprocess.run(["gpg", "--batch", "--homedir", str(verify_home), "--verify", str(asc),
                                    str(asc)[:-4]], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
        rc, out, err = ws.run("publish", "pkg", *both, capsys=capsys)
        assert rc == 0 and "nothing to deploy" in out and "nothing to upload" in out, out + err

        # Maven resolves it into a fresh local repository ...
        settings = tmp_path / "settings.xml"
        settings.write_text(f"""<settings><localRepository>{tmp_path}/m2</localRepository>
            <mirrors><mirror><id>debian</id><mirrorOf>central</mirrorOf><url>file:///usr/share/maven-repo</url></mirror></mirrors>
            <servers><server><id>target</id><username>{USER}</username><password>{PASSWORD}</password></server></servers>
            </settings>""")
        get = subprocess.run(["mvn", "-B", "-q", "-s", str(settings),
                              "org.apache.maven.plugins:maven-dependency-plugin:3.5.0:get",
                              "-Dartifact=org.example:answer:1.0:jar:gpu",
                              f"-DremoteRepositories=target::default::{repo.url}/maven"], capture_output=True, text=True)
        assert get.returncode == 0, get.stdout[-3000:] + get.stderr[-2000:]
        jar = tmp_path / "m2/org/example/answer/1.0/answer-1.0-gpu.jar"
        # ... and a Java program loads the library from the jar, with no LD_LIBRARY_PATH.
        (tmp_path / "Check.java").write_text(
            "public class Check { public static void main(String[] a) throws Exception {\n"
            "  System.out.println(\"loaded \" + org.example.answer.NativeLibrary.load()); } }\n")
        subprocess.run(["javac", "-cp", str(jar), "-d", str(tmp_path), str(tmp_path / "Check.java")], check=True)
        run = subprocess.run(["java", "-cp", f"{jar}:{tmp_path}", "Check"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"]})
        assert run.returncode == 0 and run.stdout.startswith("loaded /") and run.stdout.strip().endswith(
            "/libanswer.so"), run.stdout + run.stderr

        # A release is immutable: other bytes under 1.0 are refused, and nothing is deployed.
        make(ws, answer="43")
        assert ws.build(capsys=capsys)["_rc"] == 0
        before = {p.name: p.read_bytes() for p in release.iterdir()}
        rc, out, err = ws.run("publish", "pkg", *to, capsys=capsys)
        assert rc == 1 and "release is immutable" in err and "nothing was deployed" in err, out + err
        assert {p.name: p.read_bytes() for p in release.iterdir()} == before
        # A nightly: a -SNAPSHOT, stored by Maven as timestamped files.
        rc, out, err = ws.run("publish", "pkg", *to, "--nightly", capsys=capsys)
        assert rc == 0, out + err
        snapshot = repo.data / "maven/org/example/answer/1.0-SNAPSHOT"
        assert any(re.fullmatch(r"answer-1\.0-\d{8}\.\d{6}-1-cpu\.jar", p.name) for p in snapshot.iterdir()), \
            sorted(p.name for p in snapshot.iterdir())
        assert (snapshot / "maven-metadata.xml").exists()
        for root in (ws.root, ws.cache):
            assert files_containing(root, PASSWORD.encode()) == []
        # No publish left a gpg-agent running for its keyring (made in its temporary directory).
        assert not gpg_agents(short_tmp)
    finally:
        repo.stop()
        subprocess.run(["gpgconf", "--homedir", str(tmp_path / "gnupg-verify"), "--kill", "all"])
        shutil.rmtree(short_tmp, ignore_errors=True)
