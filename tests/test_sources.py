"""Upstream sources (url, debian, git, path, pypi-sdist, pypi-wheel), mirrors, and the recipe kinds on fixtures of our own."""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from conftest import REPO, ran

CONFIGURE = """\
#!/bin/sh
# A minimal autotools-style configure: out-of-tree, honours --prefix.
prefix=/usr/local
for arg in "$@"; do case "$arg" in --prefix=*) prefix="${arg#--prefix=}";; --greeting=*) greeting="${arg#--greeting=}";; esac; done
srcdir=$(dirname "$0")
cat > Makefile <<EOF
all: hello
hello: $srcdir/hello.c
\t\\$(CC) -O2 -DGREETING='"$greeting"' -o hello $srcdir/hello.c
install: hello
\tmkdir -p $prefix/bin && cp hello $prefix/bin/
EOF
"""
HELLO_C = '#include <stdio.h>\nint main(void) { printf("%s\\n", GREETING); return 0; }\n'


def project_tarball(tmp_path, name="hello-1.0", greeting_src=HELLO_C) -> tuple:
    """A release tarball of a tiny autotools-style project: (path, sha256)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for rel, text, mode in (("configure", CONFIGURE, 0o755), ("hello.c", greeting_src, 0o644),
                                ("LICENSE", "MIT-ish\n", 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    path = tmp_path / f"{name}.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, hashlib.sha256(buf.getvalue()).hexdigest()


AUTOTOOLS_TARGET = """\
targets:
  hello:
    kind: autotools
    toolchain: host-gcc
    source: {{url: "{url}", sha256: "{sha}", strip_components: 1}}
    configure_args: [--greeting=hi-from-configure]
    post_install: ["mkdir -p $OUT/share && cp $SOURCE/LICENSE $OUT/share/"]
    outs: [bin/hello, share/LICENSE]
    licenses: [share/LICENSE]
  run:
    kind: script
    deps: [hello]
    outs: [out.txt]
    cmds: ["$DEP_HELLO/bin/hello > $OUT/out.txt"]
"""


def test_url_source_autotools_build_and_key(ws, capsys, tmp_path):
    tarball, sha = project_tarball(tmp_path)
    ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball}", sha=sha))
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    assert (ws.out("run") / "out.txt").read_text() == "hi-from-configure\n"
    assert (ws.out("hello") / "share/LICENSE").read_text() == "MIT-ish\n"
    # The pin is in the key: a new release (new sha256) rebuilds, even before it is fetched.
    (tmp_path / "v2").mkdir()
    tarball2, sha2 = project_tarball(tmp_path / "v2", greeting_src=HELLO_C.replace("%s", "%s!"))
    ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball2}", sha=sha2))
    assert ran(ws.build(capsys=capsys)) == {"hello", "run"}
    assert (ws.out("run") / "out.txt").read_text() == "hi-from-configure!\n"


def test_checksum_mismatch_names_the_source_and_both_digests(ws, capsys, tmp_path):
    tarball, sha = project_tarball(tmp_path)
    wrong = "0" * 64
    ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball}", sha=wrong))
    st = ws.build(capsys=capsys)
    assert st.get("hello") == "failed", st["_out"] + st["_err"]
    assert f"url file://{tarball}" in st["_out"] and f"sha256 is {sha}, expected {wrong}" in st["_out"]
    assert not any((ws.cache / "sources").glob("*/tree"))   # nothing unpacked from it


def test_mirror_then_air_gapped_build(ws, capsys, tmp_path):
    tarball, sha = project_tarball(tmp_path)
    ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball}", sha=sha))
    mirror = tmp_path / "mirror"
    rc, out, err = ws.run("fetch", "--mirror", str(mirror), capsys=capsys)
    assert rc == 0, err
    assert (mirror / "sha256" / sha).exists()
    tarball.unlink()                                          # upstream is gone: air-gapped
    shutil.rmtree(ws.cache)
    st = ws.build("--mirror", str(mirror), capsys=capsys)
    assert st["_rc"] == 0, st["_out"]
    assert (ws.out("run") / "out.txt").read_text() == "hi-from-configure\n"
    shutil.rmtree(ws.cache)
    shutil.rmtree(ws.root / ".buildgraph")
    st = ws.build(capsys=capsys)                              # neither upstream nor a mirror
    assert st["hello"] == "failed" and "Looked in" in st["_out"] and f"sha256/{sha}" in st["_out"]


def test_mirror_over_http(ws, capsys, tmp_path):
    from servers import NGINX, NginxServer
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    tarball, sha = project_tarball(tmp_path)
    srv = NginxServer(tmp_path / "mirror-nginx")
    try:
        (srv.data / "sha256").mkdir(parents=True)
        shutil.copyfile(tarball, srv.data / "sha256" / sha)
        tarball.unlink()
        ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball}", sha=sha))
        st = ws.build("--mirror", srv.url, capsys=capsys)
        assert st["_rc"] == 0, st["_out"]
    finally:
        srv.stop()


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_git_source_by_commit_and_mirror_bundle(ws, capsys, tmp_path):
    repo = tmp_path / "upstream"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "msg.txt").write_text("first\n")
    git("add", ".", cwd=repo)
    git("commit", "-qm", "one", cwd=repo)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "msg.txt").write_text("second\n")
    git("commit", "-qam", "two", cwd=repo)
    ws.write("BUILD.yaml", f"""\
        targets:
          t:
            kind: script
            source: {{git: "file://{repo}", commit: {first}}}
            outs: [msg.txt]
            cmds: ["cp $SOURCE/msg.txt $OUT/"]
        """)
    mirror = tmp_path / "mirror"
    rc, _, err = ws.run("fetch", "--mirror", str(mirror), capsys=capsys)
    assert rc == 0, err
    assert (mirror / "git" / f"{first}.bundle").exists()
    shutil.rmtree(repo)                                       # upstream gone; the bundle suffices
    st = ws.build("--mirror", str(mirror), capsys=capsys)
    assert st["t"] == "ran", st["_out"]
    assert (ws.out("t") / "msg.txt").read_text() == "first\n"  # the pinned commit, not the tip


def test_path_source_is_hashed_and_isolated(ws, capsys):
    ws.write("third_party/lib/a.txt", "a\n")
    ws.write("third_party/lib/sub/b.txt", "b\n")
    ws.write("BUILD.yaml", """\
        targets:
          t:
            kind: script
            source: {path: third_party/lib}
            outs: [all.txt]
            cmds: ["cat $SOURCE/a.txt $SOURCE/sub/b.txt > $OUT/all.txt", "! touch $SOURCE/new 2>/dev/null"]
        """)
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert ran(ws.build(capsys=capsys)) == set()
    ws.write("third_party/lib/sub/b.txt", "b2\n")
    rc, out, _ = ws.run("why", "t", capsys=capsys)       # before the build: which file
    assert "file in the source tree changed: sub/b.txt" in out, out
    rc, out, _ = ws.run("plan", "t", capsys=capsys)
    assert "file in the source tree changed: sub/b.txt" in out, out
    assert ran(ws.build(capsys=capsys)) == {"t"}
    assert (ws.out("t") / "all.txt").read_text() == "a\nb2\n"
    rc, out, _ = ws.run("why", "t", capsys=capsys)
    assert "no input changed" in out
    # The file list is cached between builds; a file added or removed deep inside still counts.
    ws.write("third_party/lib/sub/c.txt", "c\n")
    assert ran(ws.build(capsys=capsys)) == {"t"}
    (ws.root / "third_party/lib/sub/c.txt").unlink()
    assert ws.build(capsys=capsys)["t"] == "cached"   # the tree is the one built before c.txt
    assert ran(ws.build(capsys=capsys)) == set()


BACKEND = """\
import os
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, "tinyproj-1.0.dist-info")
    os.makedirs(d)
    with open(os.path.join(d, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: tinyproj\\nVersion: 1.0\\n")
    return "tinyproj-1.0.dist-info"
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError
"""


def test_pypi_sdist_source_through_pip(ws, capsys, tmp_path, monkeypatch):
    """A real `pip download` of an sdist, from a local find-links directory (no network).
    The sdist carries an in-tree build backend so pip can read its metadata offline."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for rel, text in (("PKG-INFO", "Metadata-Version: 2.1\nName: tinyproj\nVersion: 1.0\n"),
                          ("pyproject.toml", '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                             'backend-path = ["."]\n'),
                          ("backend.py", BACKEND), ("src/hello.c", HELLO_C)):
            info = tarfile.TarInfo(f"tinyproj-1.0/{rel}")
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    links = tmp_path / "links"
    links.mkdir()
    (links / "tinyproj-1.0.tar.gz").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    ws.write("BUILD.yaml", f"""\
        targets:
          t:
            kind: script
            source: {{pypi-sdist: tinyproj, version: "1.0", sha256: "{sha}", subdirectory: src}}
            outs: [hello.c]
            cmds: ["cp $SOURCE/hello.c $OUT/"]
        """)
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "hello.c").read_text() == HELLO_C


def test_source_fields_are_validated(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t:
            kind: cmake
            source: {url: "https://example.invalid/x.tar.gz", sha256: abc}
        """)
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "targets.t.source.sha256: expected 64 lowercase hex digits" in err
    ws.write("BUILD.yaml", "targets:\n  t:\n    kind: cmake\n    source: {git: x, url: y}\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "a source names exactly one of" in err


def test_cached_build_needs_no_source(ws, capsys, tmp_path):
    tarball, sha = project_tarball(tmp_path)
    ws.write("BUILD.yaml", AUTOTOOLS_TARGET.format(url=f"file://{tarball}", sha=sha))
    ws.build(capsys=capsys)
    tarball.unlink()
    shutil.rmtree(ws.cache / "sources")
    shutil.rmtree(ws.root / ".buildgraph")
    st = ws.build(capsys=capsys)
    assert {st["hello"], st["run"]} == {"cached"}


@pytest.mark.upstream
def test_release_recipes_from_a_mirror():
    """The real dependency recipes, from real upstream sources in a mirror."""
    mirror = os.environ.get("BUILDGRAPH_TEST_MIRROR")
    if not mirror:
        pytest.skip("set BUILDGRAPH_TEST_MIRROR to a mirror filled by `buildgraph fetch --mirror DIR` "
                    "on a machine that can reach the upstream sources")
    rc = subprocess.run([sys.executable, "-m", "buildgraph", "build", "-C", str(REPO), "--mirror", mirror,
                         "libjpeg-turbo", "protobuf@static"], env=dict(os.environ, PYTHONPATH=str(REPO))).returncode
    assert rc == 0


# Debian source packages and prebuilt wheels: the origins these machines reach (issue 12).

JPEG_ORIG = ("libjpeg-turbo", "1:2.1.5-2", "libjpeg-turbo_2.1.5.orig.tar.gz",
             "254f3642b04e309fee775123133c6464181addc150499561020312ec61c1bf7c")


def _debian_target(package, version, file, sha, url=None) -> str:
    extra = f', url: "{url}"' if url else ""
    return f"""\
targets:
  t:
    kind: script
    source: {{debian: {package}, version: "{version}", file: {file}, sha256: {sha}, strip_components: 1{extra}}}
    outs: [files.txt]
    cmds: ["cd $SOURCE && ls > $OUT/files.txt"]
"""


def test_debian_source_package_through_apt(ws, capsys, tmp_path):
    if not shutil.which("apt-get"):
        pytest.skip("needs apt-get")
    ws.write("BUILD.yaml", _debian_target(*JPEG_ORIG))
    st = ws.build(capsys=capsys)
    if st["t"] != "ran" and "deb-src" in st["_out"] + st["_err"]:
        pytest.skip("deb-src is not enabled here (bash .ci/setup enables it)")
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert "jchuff.c" in (ws.out("t") / "files.txt").read_text().split()
    mirror = tmp_path / "mirror"
    rc, out, _ = ws.run("fetch", "--mirror", str(mirror), capsys=capsys)
    assert rc == 0 and (mirror / "sha256" / JPEG_ORIG[3]).is_file()


def test_debian_source_falls_back_to_the_same_bytes_upstream(ws, capsys, tmp_path):
    """A machine without the package in its apt sources reaches the same pin by URL; a wrong
    file is refused by its sha256 whichever way it came."""
    archive, sha = project_tarball(tmp_path)
    ws.write("BUILD.yaml", _debian_target("no-such-source-package", "1.0-1", "hello_1.0.orig.tar.gz", sha,
                                          url=f"file://{archive}"))
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "files.txt").read_text().split() == ["LICENSE", "configure", "hello.c"]
    ws.write("BUILD.yaml", _debian_target("no-such-source-package", "1.0-1", "hello_1.0.orig.tar.gz", "ab" * 32,
                                          url=f"file://{archive}"))
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed" and f"sha256 is {sha}" in st["_out"] + st["_err"]


def test_a_url_and_a_debian_origin_of_the_same_bytes_share_keys(ws, capsys, tmp_path):
    archive, sha = project_tarball(tmp_path)
    debian = _debian_target("no-such-source-package", "1.0-1", "hello_1.0.orig.tar.gz", sha, url=f"file://{archive}")
    ws.write("BUILD.yaml", debian)
    assert ws.build(capsys=capsys)["t"] == "ran"
    ws.write("BUILD.yaml", debian.replace('debian: no-such-source-package, version: "1.0-1", '
                                          'file: hello_1.0.orig.tar.gz, ', ""))
    assert "source: {sha256:" in (ws.root / "BUILD.yaml").read_text()
    assert ws.build(capsys=capsys)["t"] == "up-to-date"


def test_prebuilt_wheel_origin(ws, capsys):
    """oneDNN's headers wheel (small): its data directory is the tree, its licence kept."""
    ws.write("BUILD.yaml", """\
        targets:
          headers:
            kind: script
            source: {pypi-wheel: onednn-devel-cpu-gomp, version: "2023.2.0",
                     sha256: 9763c69e8c907e119056bd52ad918ca84ac9ba939d130a99dfa95ccca3e5e284}
            outs: [include/, lib/, share/]
            licenses: [share/doc/onednn/LICENSE]
            cmds: ["cp -r $SOURCE/. $OUT/"]
        """)
    rc, out, _ = ws.run("plan", capsys=capsys)
    assert "[prebuilt: pypi-wheel onednn-devel-cpu-gomp==2023.2.0]" in out
    st = ws.build(capsys=capsys)
    if st["headers"] != "ran" and "pip could not download" in st["_out"] + st["_err"]:
        pytest.skip("PyPI is not reachable")
    assert st["headers"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("headers") / "include" / "oneapi" / "dnnl" / "dnnl.h").is_file()
    assert (ws.out("headers") / "lib" / "cmake" / "dnnl" / "dnnl-config.cmake").is_file()
    assert (ws.out("headers") / "share" / "licenses" / "onednn-devel-cpu-gomp" / "LICENSE.txt").is_file()


def _wheel(path, members: dict) -> str:
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wheel_file_pin_selects_that_wheel_whatever_python_runs(ws, capsys, tmp_path, monkeypatch):
    """`file` names the wheel: pip gets its tags, so a cp39 wheel is fetched by a Python that
    would never pick it; a wheel without a data directory is its root (a vendored NAME.libs/),
    and a COPYING in .dist-info is kept as a licence."""
    index = tmp_path / "index"
    index.mkdir()
    METADATA = b"Metadata-Version: 2.1\nName: vendored-thing\nVersion: 1.0\n"
    name = "vendored_thing-1.0-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    sha = _wheel(index / name, {"vendored_thing.libs/libgomp-abc.so.1.0.0": b"\x7fELF not really",
                                "vendored_thing/__init__.py": b"",
                                "vendored_thing-1.0.dist-info/COPYING": b"the terms",
                                "vendored_thing-1.0.dist-info/METADATA": METADATA, "vendored_thing-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n"})
    # Another wheel of the same release that the running Python would prefer.
    _wheel(index / "vendored_thing-1.0-py3-none-any.whl", {"vendored_thing-1.0.dist-info/METADATA": METADATA,
                                                             "vendored_thing-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n"})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    ws.write("BUILD.yaml", f"""\
        targets:
          gomp:
            kind: script
            source: {{pypi-wheel: vendored-thing, version: "1.0", file: {name}, sha256: {sha}}}
            outs: [lib/, share/]
            licenses: [share/licenses/vendored-thing/COPYING]
            cmds:
              - mkdir -p $OUT/lib
              - cp $SOURCE/vendored_thing.libs/libgomp-abc.so.1.0.0 $OUT/lib/libgomp.so.1
              - cp -r $SOURCE/share $OUT/
        """)
    st = ws.build(capsys=capsys)
    assert st["gomp"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("gomp") / "lib/libgomp.so.1").read_bytes() == b"\x7fELF not really"
    assert (ws.out("gomp") / "share/licenses/vendored-thing/COPYING").read_text() == "the terms"


@pytest.mark.parametrize("file", ["other_thing-1.0-py3-none-any.whl", "vendored_thing-2.0-py3-none-any.whl",
                                  "vendored_thing-1.0.tar.gz", "vendored_thing-1.0-any.whl"])
def test_a_wheel_file_pin_must_name_that_release(ws, capsys, file):
    ws.write("BUILD.yaml", f"""\
        targets:
          gomp:
            kind: script
            source: {{pypi-wheel: vendored-thing, version: "1.0", file: {file}, sha256: {"ab" * 32}}}
            outs: [x]
            cmds: ["touch $OUT/x"]
        """)
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:4" in err and "source.file" in err and "vendored_thing-1.0-PYTHON" in err, err


def test_wheel_tags_become_pip_options():
    from buildgraph.sources import WheelName
    wheel = WheelName.parse("Scikit.Learn-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert (wheel.project, wheel.version) == ("scikit_learn", "1")
    assert wheel.pip_options() == [
        "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
    assert WheelName.parse("a-1-2-py2.py3-none-manylinux1_x86_64.whl").pip_options()[:6] == [
        "--implementation", "py", "--python-version", "3", "--abi", "none"]
    assert WheelName.parse("a-1.tar.gz") is None and WheelName.parse("a-1-any.whl") is None


def test_fetch_to_a_mirror_names_each_place_it_looked_once(ws, capsys, tmp_path, monkeypatch):
    """Three targets, the mirror named by --mirror and by $BUILDGRAPH_MIRROR: looked in once."""
    tarball, sha = project_tarball(tmp_path)
    monkeypatch.setenv("BUILDGRAPH_MIRROR", str(tmp_path / "mirror"))
    ws.write("BUILD.yaml", f"""\
        targets:
          a: {{kind: script, source: {{url: "file://{tarball}", sha256: {sha}}}, outs: [o], cmds: ["touch $OUT/o"]}}
          b: {{kind: script, source: {{url: "file://{tarball}", sha256: {sha}}}, outs: [o], cmds: ["touch $OUT/o"]}}
          c: {{kind: script, source: {{url: "file://{tmp_path}/gone.tar.gz", sha256: {"ab" * 32}}},
               outs: [o], cmds: ["touch $OUT/o"]}}
        """)
    mirror = tmp_path / "mirror"
    rc, out, err = ws.run("fetch", "--mirror", str(mirror), capsys=capsys)
    assert rc != 0 and "Looked in" in err, err
    looked = err.split("Looked in: ")[1].split(". Put it")[0].split(", ")
    assert looked == [f"{mirror}/sha256/{'ab' * 32}", "upstream"], looked
