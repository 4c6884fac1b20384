"""The artifact node: bundle and repair, licences, .meta, manylinux audit, wheel, repository."""

import os
import re
import subprocess
import sys

import pytest

from buildgraph.audit import audit_file

ZDEP_C = '#include "zdep.h"\nint zdep_value(void) { return 42; }\n'
ZDEP_H = "int zdep_value(void);\n"
BACKEND_CPP = """\
#include <string>
#include <thread>
extern "C" {
#include "zdep.h"
}
static std::string& tag() { static std::string t("bk"); return t; }
extern "C" int bk_value() {
    int v = 0;
    std::thread th([&] { v = zdep_value() + (int)tag().size(); });
    th.join();
    return v;   // 44
}
"""

WORKSPACE = """\
variants:
  linking: [static, dynamic]
toolchain: {toolchain}
targets:
  zdep:
    kind: script
    version: "1.2"
    license: {license}
    srcs: [zdep/*]
    outs: [include/, lib/, share/]
    {licenses}
    cmds:
      - mkdir -p $OUT/include $OUT/lib $OUT/share/licenses/zdep
      - $CC -O2 -fPIC -c $SRC/zdep/zdep.c -o zdep.o
      - $CC -shared -Wl,-soname,libzdep.so.1 zdep.o -o $OUT/lib/libzdep.so.1
      - ln -s libzdep.so.1 $OUT/lib/libzdep.so
      - $AR rcs $OUT/lib/libzdep.a zdep.o
      - cp $SRC/zdep/zdep.h $OUT/include/ && cp $SRC/zdep/LICENSE $OUT/share/licenses/zdep/
  backend:
    kind: script
    srcs: [backend.cpp]
    deps: [zdep]
    features: [linking]
    outs: [lib/libbk.so]
    when:
      - if: {{linking: dynamic}}
        cmds: ["mkdir -p $OUT/lib && $CXX -O2 -fPIC -shared $SRC/backend.cpp -I$DEP_ZDEP/include -L$DEP_ZDEP/lib -lzdep -o $OUT/lib/libbk.so"]
      - if: {{linking: static}}
        cmds: ["mkdir -p $OUT/lib && $CXX -O2 -fPIC -shared $SRC/backend.cpp -I$DEP_ZDEP/include $DEP_ZDEP/lib/libzdep.a -o $OUT/lib/libbk.so"]
  release:
    kind: artifact
    backend: backend
    library: lib/libbk.so
    policy: manylinux_2_17
    wheel: bkpkg
    version: "0.1"
    deps: [backend, zdep]
"""


def make(ws, toolchain="portable", license="MIT", licenses="licenses: [share/licenses/zdep/LICENSE]"):
    ws.use_toolchains("portable", "gcc-12")
    ws.write("zdep/zdep.c", ZDEP_C)
    ws.write("zdep/zdep.h", ZDEP_H)
    ws.write("zdep/LICENSE", "zdep licence text\n")
    ws.write("backend.cpp", BACKEND_CPP)
    ws.write("BUILD.yaml", WORKSPACE.format(toolchain=toolchain, license=license, licenses=licenses))


def load_value(lib_path) -> str:
    """Load the library in a fresh process with no LD_LIBRARY_PATH and call it."""
    code = f"import ctypes; print(ctypes.CDLL({str(lib_path)!r}).bk_value())"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()


@pytest.mark.slow
def test_portable_artifact_passes_manylinux_2_17_and_loads(shared_ws, capsys):
    ws = shared_ws
    make(ws)
    st = ws.build("--git-sha", "abc123", capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    dist = ws.out("release@dynamic") / "dist"
    libs = sorted(p.name for p in (dist / "lib").iterdir())
    bundled = [n for n in libs if n.startswith("libzdep-")]
    assert len(bundled) == 1 and bundled[0].endswith(".so.1")          # renamed with a content hash
    req = audit_file(str(dist / "lib" / "libbk.so")).req
    assert bundled[0] in req.needed and "libzdep.so.1" not in req.needed
    assert req.rpaths == ["$ORIGIN"]
    assert audit_file(str(dist / "lib" / bundled[0])).req.rpaths == ["$ORIGIN"]
    assert load_value(dist / "lib" / "libbk.so") == "44"                 # no LD_LIBRARY_PATH needed
    assert (dist / "licenses/zdep/LICENSE").read_text() == "zdep licence text\n"
    meta = dict(line.split("=", 1) for line in (dist / "libbk.so.meta").read_text().splitlines())
    assert meta["variant"] == "default" and meta["linking"] == "dynamic" and meta["commit"] == "abc123"
    assert meta["platform_tag"] == "manylinux2014_x86_64.manylinux_2_17_x86_64"
    assert meta["dependency.zdep.version"] == "1.2" and meta["toolchain.portable"]
    assert meta["os"].startswith("debian")
    assert f"file.lib/{bundled[0]}.sha256" in meta
    # Shipped files are stripped; their debug info is kept apart, named by GNU build-id.
    from buildgraph.elf import build_id, has_debug_info
    for name in libs:
        bid = build_id(str(dist / "lib" / name))
        assert bid and not has_debug_info(str(dist / "lib" / name)), name
        debug = ws.out("release@dynamic") / "debug" / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
        assert has_debug_info(str(debug)) and build_id(str(debug)) == bid
        assert meta[f"debug.{name}.build_id"] == bid
        assert f"{bid} {name}" in (ws.out("release@dynamic") / "debug" / "build-ids.txt").read_text()
    # The runtimes the portable toolchain links in are credited too.
    assert "LLVM Exceptions" in (dist / "licenses/libc++/LICENSE.TXT").read_text()
    assert (dist / "licenses/libunwind/LICENSE.TXT").is_file()
    static = ws.out("release@static") / "dist"
    assert sorted(p.name for p in (static / "lib").iterdir()) == ["libbk.so"]   # zdep linked in
    assert (static / "licenses/zdep/LICENSE").exists()                          # and still credited
    assert load_value(static / "lib" / "libbk.so") == "44"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_loads(shared_ws, capsys, tmp_path):
    ws = shared_ws
    make(ws)
    assert ws.build("release@dynamic", capsys=capsys)["_rc"] == 0
    wheels = list((ws.out("release@dynamic") / "wheel").glob("*.whl"))
    assert [w.name for w in wheels] == ["bkpkg-0.1-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "--no-index", "--quiet", str(wheels[0])], check=True)
    out = subprocess.run([str(venv / "bin/python"), "-c", "import bkpkg; print(bkpkg.load().bk_value())"],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.strip() == "44", out.stderr


@pytest.mark.slow
def test_gcc12_build_is_refused_and_labelled_with_its_true_tag(shared_ws, capsys):
    ws = shared_ws
    make(ws, toolchain="gcc-12")
    st = ws.build("release@dynamic", capsys=capsys)
    assert st["release@dynamic"] == "failed"
    out = st["_out"]
    assert "refusing to label this artifact manylinux_2_17: its true tag is manylinux_2_" in out
    assert "libbk.so:" in out and "GLIBCXX_3.4." in out and "> 3.4.19" in out
    assert re.search(r"libbk\.so: \S+@GLIBCXX_3\.4\.\d+ needs GLIBCXX [\d.]+ > 3\.4\.19 \(from backend\)", out), out
    rc, audit_out, _ = ws.run("build", "backend@dynamic", capsys=capsys)
    lib = ws.out("backend@dynamic") / "lib/libbk.so"
    from buildgraph.cli import main
    assert main(["audit", "--policy", "manylinux_2_17", str(lib)]) == 1
    text = capsys.readouterr().out
    assert "not manylinux_2_17" in text and "GLIBCXX" in text
    # --explain: the refused artifact assembled again, every offending symbol with its file and
    # dependency node, each file's tags, and the tightest tag that is true.
    rc, out, err = ws.run("audit", "--explain", "release@dynamic", capsys=capsys)
    assert rc == 1, out + err
    lines = out.splitlines()
    tightest = re.search(r"its files prove (manylinux_2_\d+)", lines[0]).group(1)
    assert lines[0] == f"release@dynamic: claims manylinux_2_17; its files prove {tightest}"
    assert f"  libbk.so (from backend@dynamic): {tightest}" in lines
    # (pure C calling nothing: it needs no C library, so it is true on musl too)
    assert any(re.fullmatch(r"  libzdep-[0-9a-f]{8}\.so\.1 \(from zdep\): manylinux_2_5, musllinux_1_1", l)
               for l in lines), out
    assert "> TM_1" not in out    # the newest numbered version, not CXXABI_TM_1
    refused = [l for l in lines if l.startswith("  not manylinux_2_17: libbk.so: ")]
    assert refused and all(l.endswith("(from backend@dynamic)") and " more)" not in l for l in refused), out
    assert any(l.startswith(f"  tightest true tag: {tightest}, set by: libbk.so: ") for l in lines), out
    rc, out, _ = ws.run("audit", "--explain", "release@dynamic", "--policy", tightest, capsys=capsys)
    assert rc == 0 and not any(l.startswith("  not ") for l in out.splitlines()), out


def test_what_an_artifact_ships_is_checked_when_the_workspace_loads(ws, capsys):
    # Each is refused before anything builds (exit 2), naming the offending file:line.
    make(ws, toolchain="host-gcc", licenses="")
    text = (ws.root / "BUILD.yaml").read_text()
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:37: targets.release.deps: artifact release ships or links" in err, err
    assert "BUILD.yaml:6: zdep declares no licence files ('licenses:')" in err, err
    assert not (ws.root / ".buildgraph/out").exists()
    ws.write("BUILD.yaml", text.replace("    outs: [include/, lib/, share/]\n",
                                        "    outs: [include/, lib/]\n    licenses: [share/licenses/zdep/LICENSE]\n"))
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:11: zdep's licence file share/licenses/zdep/LICENSE is not among its outputs " \
                       "(include/, lib/)" in err, err
    make(ws, toolchain="host-gcc")
    text = (ws.root / "BUILD.yaml").read_text()
    for old, new, message in [
            ("library: lib/libbk.so", "library: lib/libbk.a",
             "BUILD.yaml:33: targets.release.library: 'lib/libbk.a' is not a shared library"),
            ("library: lib/libbk.so", "library: lib/libbk.so.1",
             "BUILD.yaml:33: targets.release.library: 'lib/libbk.so.1' is not among backend's outputs (lib/libbk.so)"),
            ("wheel: bkpkg", "wheel: Mx.Backend",
             "BUILD.yaml:35: targets.release.wheel: 'Mx.Backend' is not a Python package name (`import Mx.Backend` "
             "would fail)\n  hint: write 'mx_backend'"),
            ('version: "0.1"\n    deps: [backend', 'version: "1.9.0-rc1"\n    deps: [backend',
             "BUILD.yaml:36: targets.release.version: '1.9.0-rc1' is not written as pip writes it (PEP 440): the "
             "wheel's file name would not match its metadata\n  hint: write '1.9.0rc1'"),
            ('version: "0.1"\n    deps: [backend', 'version: "nightly"\n    deps: [backend',
             "BUILD.yaml:36: targets.release.version: 'nightly' is not a version pip accepts (PEP 440)")]:
        ws.write("BUILD.yaml", text.replace(old, new))
        rc, _, err = ws.run("plan", capsys=capsys)
        assert rc == 2 and message in err, err


def test_licence_directory_ships_every_file_in_it(ws, capsys):
    # What a project installs beside its own licence (OpenCV: the zlib it builds in) ships too.
    make(ws, toolchain="host-gcc", licenses="licenses: [share/licenses/zdep/]")
    text = (ws.root / "BUILD.yaml").read_text().replace("policy: manylinux_2_17", "policy: manylinux_2_35").replace(
        "cp $SRC/zdep/LICENSE $OUT/share/licenses/zdep/",
        "cp $SRC/zdep/LICENSE $OUT/share/licenses/zdep/ && mkdir $OUT/share/licenses/zdep/3rdparty"
        " && echo zlib terms > $OUT/share/licenses/zdep/3rdparty/zlib-LICENSE")
    ws.write("BUILD.yaml", text)
    st = ws.build("release@static", capsys=capsys)
    assert st["release@static"] == "ran", st["_out"] + st["_err"]
    dist = ws.out("release@static") / "dist/licenses/zdep"
    assert (dist / "LICENSE").read_text() == "zdep licence text\n"
    assert (dist / "3rdparty/zlib-LICENSE").read_text() == "zlib terms\n"
    # A declared licence directory is an output: a dependency that does not make it fails.
    ws.write("BUILD.yaml", text.replace("licenses: [share/licenses/zdep/]", "licenses: [share/licenses/none/]"))
    st = ws.build("release@static", capsys=capsys)
    assert st.get("zdep") == "failed" and st.get("release@static") == "skipped"
    assert "share/licenses/none" in st["_out"] + st["_err"]


def test_gpl_dependency_linked_statically_is_refused_before_building(ws, capsys):
    make(ws, toolchain="host-gcc", license="GPL-3.0-only")
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2
    assert "release@static would link zdep (GPL-3.0-only) statically into a shipped artifact" in err
    assert not (ws.root / ".buildgraph" / "out").exists()


@pytest.mark.slow
def test_push_to_webdav_and_pull_back_verified(shared_ws, capsys, tmp_path):
    from servers import NGINX, NginxServer
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    ws = shared_ws
    make(ws)
    assert ws.build("release@dynamic", "--git-sha", "c0ffee", capsys=capsys)["_rc"] == 0
    srv = NginxServer(tmp_path / "repo-nginx")
    try:
        rc, out, err = ws.run("artifact", "push", "release@dynamic", "--to", srv.url, "--git-sha", "c0ffee",
                              capsys=capsys)
        assert rc == 0, err
        prefix = out.split(srv.url + "/")[1].strip().rstrip("/")
        assert prefix.startswith("c0ffee/debian") and prefix.endswith("/default/dynamic")
        from buildgraph.cli import main
        dest = tmp_path / "pulled"
        assert main(["artifact", "pull", "--from", srv.url, "--prefix", prefix, "--library", "libbk.so",
                     "-o", str(dest)]) == 0
        dist = ws.out("release@dynamic") / "dist"
        for p in dist.rglob("*"):
            if p.is_file():
                assert (dest / p.relative_to(dist)).read_bytes() == p.read_bytes()
        # Tamper with one file on the server: the pull fails, naming it, and writes nothing.
        served = srv.data / prefix / "lib" / "libbk.so"
        served.write_bytes(served.read_bytes() + b"x")
        dest2 = tmp_path / "pulled2"
        assert main(["artifact", "pull", "--from", srv.url, "--prefix", prefix, "--library", "libbk.so",
                     "-o", str(dest2)]) == 1
        assert "lib/libbk.so: sha256" in capsys.readouterr().err and not dest2.exists()
    finally:
        srv.stop()


def test_directory_repository_round_trip(ws, capsys, tmp_path):
    make(ws, toolchain="host-gcc")
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("policy: manylinux_2_17", "policy: manylinux_2_35"))
    st = ws.build("release@static", "--git-sha", "d1d1", capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    repo = tmp_path / "repo"
    rc, out, err = ws.run("artifact", "push", "release@static", "--to", str(repo), "--git-sha", "d1d1", capsys=capsys)
    assert rc == 0, err
    prefix = next(p for p in repo.rglob("libbk.so.meta")).parent.relative_to(repo)
    from buildgraph.cli import main
    assert main(["artifact", "pull", "--from", str(repo), "--prefix", str(prefix), "--library", "libbk.so",
                 "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "licenses/zdep/LICENSE").exists()


def test_push_files_under_the_commit_the_meta_records(ws, capsys, tmp_path):
    """The commit an artifact is filed under comes from its .meta; a different --git-sha is
    refused (exit 2) and nothing is uploaded."""
    make(ws, toolchain="host-gcc")
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("policy: manylinux_2_17", "policy: manylinux_2_35"))
    assert ws.build("release@static", "--git-sha", "d1d1aaaa", capsys=capsys)["_rc"] == 0
    repo = tmp_path / "repo"
    rc, _, err = ws.run("artifact", "push", "release@static", "--to", str(repo), "--git-sha", "beefbeef",
                        capsys=capsys)
    assert rc == 2 and "not the commit libbk.so.meta records (d1d1aaaa)" in err, err
    assert not repo.exists()
    rc, out, err = ws.run("artifact", "push", "release@static", "--to", str(repo), capsys=capsys)
    assert rc == 0 and "/d1d1aaaa/" in out, err
    rc, out, err = ws.run("artifact", "push", "release@static", "--to", str(repo), "--git-sha", "d1d1",
                          capsys=capsys)
    assert rc == 0 and [p.parts[len(repo.parts)] for p in repo.rglob("*.meta")] == ["d1d1aaaa"]


def test_dirty_working_tree_is_flagged_and_not_pushed_as_the_commit(ws, capsys, tmp_path):
    make(ws, toolchain="host-gcc")
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("policy: manylinux_2_17", "policy: manylinux_2_35"))
    ws.write(".gitignore", ".buildgraph/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(ws.root)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    meta = lambda: (ws.out("release@static") / "dist/libbk.so.meta").read_text().splitlines()
    assert ws.build("release@static", capsys=capsys)["_rc"] == 0
    assert "working_tree=clean" in meta()
    ws.write("backend.cpp", (ws.root / "backend.cpp").read_text() + "// an uncommitted edit\n")
    st = ws.build("release@static", capsys=capsys)
    assert st["release@static"] == "ran" and "working_tree=dirty" in meta()
    repo = tmp_path / "repo"
    rc, _, err = ws.run("artifact", "push", "release@static", "--to", str(repo), capsys=capsys)
    assert rc != 0 and "uncommitted changes" in err and "--allow-dirty" in err, err
    assert not repo.exists() or not list(repo.rglob("*.meta"))
    rc, _, err = ws.run("artifact", "push", "release@static", "--to", str(repo), "--allow-dirty", capsys=capsys)
    assert rc == 0, err


def test_s3_repository_through_boto3_against_moto(ws, capsys, tmp_path, monkeypatch):
    from servers import MotoS3Server
    boto3 = pytest.importorskip("boto3")
    make(ws, toolchain="host-gcc")
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("policy: manylinux_2_17", "policy: manylinux_2_35"))
    assert ws.build("release@dynamic", "--git-sha", "5e5e", capsys=capsys)["_rc"] == 0
    srv = MotoS3Server(tmp_path / "moto")
    try:
        for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("BUILDGRAPH_S3_ENDPOINT", srv.url)):
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=srv.url).create_bucket(Bucket="releases")
        rc, out, err = ws.run("artifact", "push", "release@dynamic", "--to", "s3://releases/backend",
                              "--git-sha", "5e5e", capsys=capsys)
        assert rc == 0, err
        prefix = out.split("s3://releases/backend/")[1].strip().rstrip("/")
        from buildgraph.cli import main
        dest = tmp_path / "pulled"
        assert main(["artifact", "pull", "--from", "s3://releases/backend", "--prefix", prefix,
                     "--library", "libbk.so", "-o", str(dest)]) == 0
        dist = ws.out("release@dynamic") / "dist"
        assert (dest / "lib/libbk.so").read_bytes() == (dist / "lib/libbk.so").read_bytes()
    finally:
        srv.stop()


def test_bundled_library_is_found_by_soname(ws, capsys):
    """The loader matches NEEDED against SONAMEs: a dependency installing only libzdep.so.1.2
    (SONAME libzdep.so.1, no libzdep.so.1 file) is still found and bundled."""
    make(ws, toolchain="host-gcc")
    text = (ws.root / "BUILD.yaml").read_text()
    text = text.replace("-o $OUT/lib/libzdep.so.1\n", "-o $OUT/lib/libzdep.so.1.2\n")
    text = text.replace("ln -s libzdep.so.1 $OUT/lib/libzdep.so", "ln -s libzdep.so.1.2 $OUT/lib/libzdep.so")
    ws.write("BUILD.yaml", text.replace("policy: manylinux_2_17", "policy: manylinux_2_35"))
    st = ws.build("release@dynamic", capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    libs = sorted(p.name for p in (ws.out("release@dynamic") / "dist" / "lib").iterdir())
    assert [n for n in libs if n.startswith("libzdep-")], libs
