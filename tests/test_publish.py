"""buildgraph publish: built artifacts to a Python package index (pypiserver on loopback, with
authentication), never rebuilt, credentials only in that step; nightlies and their pruning."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

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
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--index-url", f"{index.url}/simple/",
                          "answer-gpu==1.0"], capture_output=True, text=True)
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
