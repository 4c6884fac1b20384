"""Pinned toolchains: the store, providers, the portable glibc-2.17 toolchain, CUDA, rules."""

import subprocess
import io
import json
import os
import tarfile
import time

import pytest
from conftest import REPO, ran

from buildgraph.elf import parse_version, requirements

C_SRC = """\
#include <string.h>
#include <stdlib.h>
int portable_c(const char *s) {
    char *d = malloc(strlen(s) + 1);
    memcpy(d, s, strlen(s) + 1);
    int n = (int)strlen(d);
    free(d);
    return n;
}
"""
CPP_SRC = """\
#include <string>
#include <thread>
static std::string& name() { static std::string n("portable"); return n; }  // function-local static
extern "C" int portable_cpp() {
    int result = 0;
    std::thread t([&] { result = (int)name().size(); });
    t.join();
    return result;
}
"""
CU_SRC = """\
__global__ void add_one(float *x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }
extern "C" int launch_add_one(float *x, int n) { add_one<<<(n + 255) / 256, 256>>>(x, n); return 0; }
"""


def glibc_needed(path) -> tuple[int, ...]:
    found = requirements(str(path)).highest.get("GLIBC")
    return found[0] if found else ()


@pytest.mark.slow
def test_portable_libraries_need_no_more_than_glibc_2_17(shared_ws, capsys):
    ws = shared_ws
    ws.use_toolchains("portable", "gcc-12")
    ws.write("lib.c", C_SRC)
    ws.write("lib.cpp", CPP_SRC)
    ws.write("BUILD.yaml", """\
        targets:
          c: {kind: script, toolchain: portable, srcs: [lib.c], outs: [lib.so],
              cmds: ["$CC -O2 -fPIC -shared $SRC/lib.c -o $OUT/lib.so"]}
          cpp: {kind: script, toolchain: portable, srcs: [lib.cpp], outs: [lib.so],
                cmds: ["$CXX -O2 -fPIC -shared $SRC/lib.cpp -o $OUT/lib.so"]}
          cpp_gcc12: {kind: script, toolchain: gcc-12, srcs: [lib.cpp], outs: [lib.so],
                      cmds: ["$CXX -O2 -fPIC -shared $SRC/lib.cpp -o $OUT/lib.so"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    for node in ("c", "cpp"):
        req = requirements(str(ws.out(node) / "lib.so"))
        assert glibc_needed(ws.out(node) / "lib.so") <= (2, 17), req.highest
        assert not any(n.startswith(("libstdc++", "libgcc_s")) for n in req.needed), req.needed
        assert "GLIBCXX" not in req.highest and "CXXABI" not in req.highest
    host = requirements(str(ws.out("cpp_gcc12") / "lib.so"))
    assert "libstdc++.so.6" in host.needed        # the same source with gcc 12 needs more
    assert host.highest["GLIBCXX"][0] >= parse_version("3.4.22")
    # Reproducible: nothing host-specific is embedded.
    data = (ws.out("cpp") / "lib.so").read_bytes()
    assert str(ws.root).encode() not in data and str(ws.toolchain_dir).encode() not in data


ONCE_CPP = """\
#include <mutex>
#include <stdexcept>
#include <string>
static std::once_flag flag;
static int calls;
static std::string& greeting() { static std::string g(WHO); return g; }   // function-local static
extern "C" int NAME(int n) {
    std::call_once(flag, [] { ++calls; });
    try {
        if (n < 0) throw std::invalid_argument(greeting());
        return n + calls;
    } catch (const std::exception& e) {
        return -(int)std::string(e.what()).size();
    }
}
"""


@pytest.mark.slow
def test_portable_and_gcc12_cxx_runtimes_coexist_in_one_process(shared_ws, capsys, tmp_path):
    """A portable library (libc++ linked in) and a gcc-12 one (libstdc++), both using
    std::call_once, function-local statics and exceptions, loaded into one process with
    RTLD_GLOBAL in either order: each keeps its own runtime, because the portable one exports
    none of libc++'s, libc++abi's or libunwind's symbols."""
    from buildgraph.audit import audit_file
    ws = shared_ws
    ws.use_toolchains("portable", "gcc-12")
    ws.write("once.cpp", ONCE_CPP)
    ws.write("BUILD.yaml", """\
        targets:
          zig: {kind: script, toolchain: portable, srcs: [once.cpp], outs: [libzig.so],
                cmds: ["$CXX -O2 -fPIC -shared -DNAME=zig_once -DWHO='\\"portable\\"' $SRC/once.cpp -o $OUT/libzig.so"]}
          gcc: {kind: script, toolchain: gcc-12, srcs: [once.cpp], outs: [libgcc.so],
                cmds: ["$CXX -O2 -fPIC -shared -DNAME=gcc_once -DWHO='\\"gcc-12\\"' $SRC/once.cpp -o $OUT/libgcc.so"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    zig, gcc = ws.out("zig") / "libzig.so", ws.out("gcc") / "libgcc.so"
    assert audit_file(str(zig)).runtime_leaks == []
    assert not any(s.startswith(("_Unwind_", "unw_", "__cxa_")) for s in audit_file(str(zig)).req.exported)
    check = ("import ctypes, sys\n"
             "libs = [ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL) for p in sys.argv[1:]]\n"
             "zig = [l for l in libs if hasattr(l, 'zig_once')][0].zig_once\n"
             "gcc = [l for l in libs if hasattr(l, 'gcc_once')][0].gcc_once\n"
             "print(zig(1), zig(2), gcc(1), gcc(2), zig(-1), gcc(-1))\n")
    for order in ((zig, gcc), (gcc, zig)):
        proc = subprocess.run(["/usr/bin/python3", "-c", check, *map(str, order)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        # call_once ran once per library; each caught its own exception ("portable", "gcc-12")
        assert proc.stdout.split() == ["2", "3", "2", "3", "-8", "-6"], proc.stdout


@pytest.mark.slow
def test_portable_toolchain_through_cmake(shared_ws, capsys):
    ws = shared_ws
    ws.use_toolchains("portable")
    ws.write("proj/lib.c", C_SRC)
    ws.write("proj/CMakeLists.txt", """\
        cmake_minimum_required(VERSION 3.16)
        project(p C)
        add_library(p SHARED lib.c)
        install(TARGETS p LIBRARY DESTINATION lib)
        """)
    ws.write("BUILD.yaml", """\
        targets:
          p: {kind: cmake, toolchain: portable, srcs: ["proj/*"], source_dir: proj, outs: [lib/libp.so]}
        """)
    st = ws.build(capsys=capsys)
    assert st["p"] == "ran", st["_out"]
    assert glibc_needed(ws.out("p") / "lib/libp.so") <= (2, 17)
    # No build RPATH leaks in; the install RPATH is relative to the library, never a sandbox path.
    assert requirements(str(ws.out("p") / "lib/libp.so")).rpaths == ["$ORIGIN/../lib"]


CUDA_CU = """\
#include <string>
#include <vector>
#include <cuda_runtime.h>
__global__ void scale(int n, float a, float* y) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] *= a; }
// A C++ interface across .cu and .cpp: one C++ library (libc++) on both sides.
std::string scale_all(float a, std::vector<float>& y) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return "no CUDA device";
    float* d = nullptr;
    cudaMalloc(&d, y.size() * sizeof(float));
    cudaMemcpy(d, y.data(), y.size() * sizeof(float), cudaMemcpyHostToDevice);
    scale<<<1, 256>>>((int)y.size(), a, d);
    cudaMemcpy(y.data(), d, y.size() * sizeof(float), cudaMemcpyDeviceToHost);
    cudaFree(d);
    return "scaled " + std::to_string(y[1]);
}
"""
CUDA_CPP = """\
#include <cstdio>
#include <string>
#include <vector>
std::string scale_all(float a, std::vector<float>& y);
int main() { std::vector<float> y{1, 2, 3}; std::printf("%s\\n", scale_all(2, y).c_str()); }
"""


def write_cuda_project(ws) -> None:
    """proj/: a CUDA library (scale.cu, through nvcc) and a C++ program using it (main.cpp)."""
    ws.use_toolchains("cuda-13.0", "portable")
    ws.write("proj/scale.cu", CUDA_CU)
    ws.write("proj/main.cpp", CUDA_CPP)
    ws.write("proj/CMakeLists.txt", """\
        cmake_minimum_required(VERSION 3.18)
        project(p CXX CUDA)
        set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
        add_library(scale SHARED scale.cu)
        add_executable(scale_test main.cpp)
        target_link_libraries(scale_test PRIVATE scale)
        install(TARGETS scale scale_test LIBRARY DESTINATION lib RUNTIME DESTINATION bin)
        """)


@pytest.mark.slow
def test_cuda_13_through_cmake_shares_the_cpp_runtime_and_loads_on_glibc_2_17(shared_ws, capsys):
    ws = shared_ws
    write_cuda_project(ws)
    ws.write("BUILD.yaml", """\
        targets:
          p:
            kind: cmake
            toolchain: cuda-13.0
            srcs: ["proj/*"]
            source_dir: proj
            cmake_args: [-DCMAKE_CUDA_ARCHITECTURES=75]
            outs: [lib/libscale.so, bin/scale_test]
          run:
            kind: script
            deps: [p]
            outs: [run.txt]
            cmds: ["$DEP_P/bin/scale_test > $OUT/run.txt"]
        """)
    st = ws.build(capsys=capsys)
    assert st["p"] == "ran" and st["run"] == "ran", st["_out"] + st["_err"]
    lib = ws.out("p") / "lib/libscale.so"
    req = requirements(str(lib))
    # libc++ and the CUDA runtime are linked in: no libstdc++, no libcudart to find at run time.
    assert not any(n.startswith(("libstdc++", "libgcc_s", "libcudart")) for n in req.needed), req.needed
    assert glibc_needed(lib) <= (2, 17), req.highest
    symbols = subprocess.run(["nm", "-DC", str(lib)], capture_output=True, text=True).stdout
    assert "scale_all(float, std::__1::vector<float" in symbols
    # The .cpp executable called the .cu function across that interface (no GPU here).
    assert (ws.out("run") / "run.txt").read_text() in ("no CUDA device\n", "scaled 4.000000\n")


def test_incompatible_cuda_and_gcc_exit_2_before_anything_runs(ws, capsys):
    ws.use_toolchains("gcc-12", "portable")
    pinned = (REPO / "toolchains" / "cuda-11.8.yaml").read_text()
    ws.write("toolchains/cuda-11.8.yaml", pinned.replace("host_compiler: gcc-11", "host_compiler: gcc-12"))
    ws.write("BUILD.yaml", "targets:\n  k: {kind: script, toolchain: cuda-11.8, outs: [o], cmds: ['touch $OUT/o']}\n")
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2
    assert "toolchain 'cuda-11.8' (CUDA 11.8) cannot use host compiler 'gcc-12' (gcc 12.2.0)" in err
    assert "CUDA 11.8 supports gcc <= 11" in err and "toolchains/cuda-11.8.yaml" in err
    assert not (ws.root / ".buildgraph" / "out").exists()


def test_cuda_with_a_too_new_clang_host_exits_2(ws, capsys):
    ws.use_toolchains("cuda-13.0", "portable")
    text = (ws.root / "toolchains/portable.yaml").read_text()
    ws.write("toolchains/portable.yaml", text.replace("compiler: clang 19.1.7", "compiler: clang 21.1.0"))
    ws.write("BUILD.yaml", "targets:\n  k: {kind: script, toolchain: cuda-13.0, outs: [o], cmds: ['touch $OUT/o']}\n")
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2, err
    assert "cannot use host compiler 'portable' (clang 21.1.0): CUDA 13.0 supports clang <= 20" in err


def test_missing_gcc5_and_old_cuda_say_what_they_looked_for(ws, capsys):
    ws.use_toolchains("gcc-5", "cuda-10.1", "portable")
    ws.write("BUILD.yaml", "targets: {}\n")
    rc, out, err = ws.run("toolchain", "fetch", "gcc-5", capsys=capsys)
    assert rc == 2   # the workspace names what this machine lacks: bad input, with its line
    line = next(n for n, text in enumerate((ws.root / "toolchains/gcc-5.yaml").read_text().splitlines(), 1)
                if text.strip().startswith("cc:"))
    assert f"toolchains/gcc-5.yaml:{line}: tools.cc: toolchain gcc-5 5.5.0 (host) is not on this machine: " \
           "looked for cc=gcc-5, cxx=g++-5 on PATH" in err
    assert "point 'tools' at an existing installation" in err
    rc, out, err = ws.run("toolchain", "list", capsys=capsys)
    assert rc == 0
    line = next(l for l in out.splitlines() if l.startswith("gcc-5 "))
    assert "host" in line and line.split()[-2:] == ["no", "no"]   # not hermetic, not installed


# ------------------------------------------------------------------ store, with a small archive toolchain

def make_archive(tmp_path, tool_body="echo tool-v1", big=0):
    """A toolchain archive with bin/tool, share/data.txt (and optional padding), in a mirror dir."""
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        def add(name, data, mode=0o644):
            info = tarfile.TarInfo(f"mytc-1.0/{name}")
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
        add("bin/tool", f"#!/bin/sh\n{tool_body}\n".encode(), 0o755)
        add("share/data.txt", b"data v1\n")
        if big:
            add("share/padding.bin", os.urandom(big))
    import hashlib
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    (mirror / "sha256").mkdir(exist_ok=True)
    (mirror / "sha256" / sha).write_bytes(buf.getvalue())
    return mirror, sha


def archive_workspace(ws, tmp_path, monkeypatch, **kw):
    mirror, sha = make_archive(tmp_path, **kw)
    monkeypatch.setenv("BUILDGRAPH_MIRROR", str(mirror))
    ws.write("toolchains/mytc.yaml", f"""\
        name: mytc
        version: "1.0"
        provider: archive
        url: https://example.invalid/mytc-1.0.tar.gz
        sha256: {sha}
        strip_components: 1
        tools: {{tool: bin/tool}}
        """)
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, toolchain: mytc, outs: [o], cmds: ["tool > $OUT/o"]}
        """)
    return mirror, sha


def _key(ws, node):
    from buildgraph.state import StateDir
    return StateDir(ws.root).load().nodes[node].key


def test_archive_toolchain_from_a_mirror_builds_and_lists(ws, capsys, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch)
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "o").read_text() == "tool-v1\n"
    rc, out, _ = ws.run("toolchain", "list", "mytc", capsys=capsys)
    fields = out.splitlines()[1].split()
    assert fields[:3] == ["mytc", "1.0", "archive"] and fields[-2:] == ["yes", "yes"]


def test_plan_and_why_fetch_nothing_unless_asked(ws, capsys, tmp_path, monkeypatch):
    """Dry runs download and install nothing: a missing toolchain is named (and what it
    would take), its nodes must run with their keys unknown; `--fetch` fetches."""
    mirror, sha = archive_workspace(ws, tmp_path, monkeypatch, big=3_000_000)
    store = ws.cache / "toolchains"
    entries = lambda: [p.name for p in store.iterdir() if not p.name.endswith(".lock")] if store.is_dir() else []
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc == 0, err
    size = (mirror / "sha256" / sha).stat().st_size / 1e6   # where a fetch would take it from
    assert f"toolchain mytc 1.0 is not fetched (archive), {size:.1f} MB to download; `--fetch` fetches it" in out
    assert out.splitlines()[0].split()[1] == "?" and entries() == []
    rc, out, _ = ws.run("why", "t", capsys=capsys)
    assert rc == 0 and "is not fetched" in out and entries() == []
    rc, out, err = ws.run("plan", "--fetch", capsys=capsys)
    assert rc == 0 and "never built in this workspace" in out and entries(), out + err


def test_rc_lines_of_a_two_word_command_apply_to_its_subcommands(ws, capsys, tmp_path, monkeypatch):
    # `toolchain --toolchain-dir D` in .buildgraphrc: `toolchain fetch` and `toolchain list` use D.
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.write(".buildgraphrc", f"toolchain --toolchain-dir '{tmp_path / 'rc-store'}'\n")
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 0 and any((tmp_path / "rc-store").iterdir()), err
    assert not (ws.cache / "toolchains").exists()
    rc, out, _ = ws.run("toolchain", "list", capsys=capsys)
    assert rc == 0 and any(l.startswith("mytc ") and l.split()[-1] == "yes" for l in out.splitlines()), out


def test_archive_with_wrong_checksum_or_unreachable_url_is_refused(ws, capsys, tmp_path, monkeypatch):
    mirror, sha = archive_workspace(ws, tmp_path, monkeypatch)
    (mirror / "sha256" / sha).write_bytes(b"not the archive")
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 1 and f"expected {sha}" in err and "toolchain mytc" in err
    (mirror / "sha256" / sha).unlink()
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 1 and "cannot fetch url https://example.invalid/mytc-1.0.tar.gz" in err
    assert f"Put it in a mirror as sha256/{sha}" in err


def test_fetch_is_idempotent_and_safe_from_two_processes(ws, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch, big=30_000_000)
    procs = [ws.spawn("toolchain", "fetch", "mytc") for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sum("fetching toolchain mytc" in err for _, err in results) == 1   # the work was done once
    digests = {out.split(":")[1].split()[0] for out, _ in results}
    assert len(digests) == 1
    store = ws.cache / "toolchains"
    assert [p.name for p in store.iterdir() if p.is_dir()] == [next(p.name for p in store.iterdir() if p.is_dir())]
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp-")]
    again = ws.spawn("toolchain", "fetch", "mytc")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "fetching" not in err and out.split(":")[1].split()[0] in digests


def test_tampered_toolchain_is_caught_by_verify_and_changes_keys(ws, capsys, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.build(capsys=capsys)
    key1 = _key(ws, "t")
    entry = next(p for p in (ws.cache / "toolchains").iterdir() if p.is_dir())
    assert ws.run("toolchain", "verify", capsys=capsys)[0] == 0

    # A data file: only a full re-hash can see it. verify names it and keys follow.
    (entry / "install/share/data.txt").write_text("data v2\n")
    rc, out, _ = ws.run("toolchain", "verify", "mytc", capsys=capsys)
    assert rc == 1 and "TAMPERED" in out and "install/share/data.txt: content changed" in out
    assert ran(ws.build(capsys=capsys)) == {"t"}
    key2 = _key(ws, "t")
    assert key2 != key1
    rc, out, _ = ws.run("toolchain", "list", capsys=capsys)
    assert "TAMPERED" in out

    # An executable: every build checks those, no verify needed.
    tool = entry / "install/bin/tool"
    time.sleep(0.01)
    tool.write_text("#!/bin/sh\necho tool-v2\n")
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran" and "changed since it was fetched" in st["_err"]
    assert _key(ws, "t") not in (key1, key2)

    # fetch --force restores the fetched toolchain, and with it the first key.
    assert ws.run("toolchain", "fetch", "--force", "mytc", capsys=capsys)[0] == 0
    assert ws.run("toolchain", "verify", "mytc", capsys=capsys)[0] == 0
    st = ws.build(capsys=capsys)
    assert st["t"] in ("cached", "up-to-date") and _key(ws, "t") == key1


def test_version_change_is_a_new_entry_and_a_new_key(ws, capsys, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.build(capsys=capsys)
    key1 = _key(ws, "t")
    text = (ws.root / "toolchains/mytc.yaml").read_text().replace('version: "1.0"', 'version: "1.0-r2"')
    ws.write("toolchains/mytc.yaml", text)
    assert ran(ws.build(capsys=capsys)) == {"t"}
    assert _key(ws, "t") != key1
    assert len([p for p in (ws.cache / "toolchains").iterdir() if p.is_dir()]) == 2


def test_toolchain_digest_is_read_not_recomputed_per_build(ws, capsys, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.build(capsys=capsys)
    entry = next(p for p in (ws.cache / "toolchains").iterdir() if p.is_dir())
    recorded = json.loads((entry / "digest.json").read_text())["digest"]
    from buildgraph.state import StateDir
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("tool >", "tool >>"))
    ws.build(capsys=capsys)
    assert StateDir(ws.root).last_build()["files_hashed"] == 0   # nothing of the toolchain re-hashed
    assert recorded in json.dumps(StateDir(ws.root).read_inputs("t"))


@pytest.mark.slow
def test_apt_gcc_toolchain_digest_covers_its_package_files(shared_ws, capsys):
    ws = shared_ws
    ws.use_toolchains("gcc-12")
    ws.write("BUILD.yaml", "targets: {}\n")
    rc, out, err = ws.run("toolchain", "fetch", "gcc-12", capsys=capsys)
    assert rc == 0, err
    entry = next(p for p in ws.toolchain_dir.iterdir() if p.name.startswith("gcc-12-") and p.is_dir())
    files = json.loads((entry / "manifest.json").read_text())["files"]
    assert "/usr/bin/x86_64-linux-gnu-gcc-12" in files
    assert any(p.endswith("/cc1plus") for p in files)
    assert any(p.startswith("/usr/include/c++/12/") for p in files)
    rc, out, _ = ws.run("toolchain", "verify", "gcc-12", capsys=capsys)
    assert rc == 0 and "gcc-12: ok" in out


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_toolchain_entry_is_reachable_in_every_sandbox_mode(ws, capsys, tmp_path, monkeypatch, mode):
    from buildgraph.sandbox import detect_mode
    if mode == "bwrap" and detect_mode() != "bwrap":
        pytest.skip("bubblewrap not available")
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.write("toolchains/mytc.yaml", (ws.root / "toolchains/mytc.yaml").read_text() +
             'env: {MYTC_DATA: "{entry}/install/share/data.txt"}\n')
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, toolchain: mytc, outs: [o], cmds: ["tool > $OUT/o", "cat $MYTC_DATA >> $OUT/o"]}
        """)
    st = ws.build("--sandbox", mode, capsys=capsys)
    assert st["t"] == "ran", st["_out"]
    assert (ws.out("t") / "o").read_text() == "tool-v1\ndata v1\n"


@pytest.mark.slow
def test_portable_links_what_cmake_passes(ws, capsys):
    """Through CMake: a library versioned with four numbers (libq.so.1.2.3.4, which zig's
    driver calls an unrecognized file), an executable over a library that needs another
    (CMake adds -rpath-link, which zig's driver rejects), a GNU build-id on every link, and a
    shared library with an unresolved symbol refused at link time (-z defs)."""
    from buildgraph.elf import build_id
    ws.use_toolchains("portable")
    ws.write("proj/q.c", "int q(void) { return 41; }\n")
    ws.write("proj/r.c", "int q(void);\nint r(void) { return q() + 1; }\n")
    ws.write("proj/main.c", "int r(void);\nint main(void) { return r() == 42 ? 0 : 1; }\n")
    ws.write("proj/CMakeLists.txt", """\
        cmake_minimum_required(VERSION 3.16)
        project(p C)
        add_library(q SHARED q.c)
        set_target_properties(q PROPERTIES VERSION 1.2.3.4 SOVERSION 1)
        add_library(r SHARED r.c)
        target_link_libraries(r PRIVATE q)
        add_executable(m main.c)
        target_link_libraries(m PRIVATE r)
        install(TARGETS q r m LIBRARY DESTINATION lib RUNTIME DESTINATION bin)
        """)
    ws.write("BUILD.yaml", """\
        targets:
          p: {kind: cmake, toolchain: portable, srcs: ["proj/*"], source_dir: proj, outs: [bin/, lib/]}
        """)
    st = ws.build(capsys=capsys)
    assert st["p"] == "ran", st["_out"]
    assert subprocess.run([str(ws.out("p") / "bin/m")]).returncode == 0     # found via $ORIGIN/../lib
    for f in ("bin/m", "lib/libr.so", "lib/libq.so.1.2.3.4"):
        assert build_id(str(ws.out("p") / f)), f
    assert "libq.so.1" in requirements(str(ws.out("p") / "lib/libr.so")).needed
    ws.write("proj/r.c", "int missing(void);\nint q(void);\nint r(void) { return q() + missing(); }\n")
    st = ws.build(capsys=capsys)
    assert st["p"] == "failed" and "undefined symbol: missing" in st["_out"], st["_out"]


def test_toolchain_patches_apply_at_fetch_and_name_the_entry(ws, capsys, tmp_path, monkeypatch):
    archive_workspace(ws, tmp_path, monkeypatch)
    ws.write("toolchains/patches/v2.patch", """\
        --- a/bin/tool
        +++ b/bin/tool
        @@ -1,2 +1,2 @@
         #!/bin/sh
        -echo tool-v1
        +echo tool-v2
        """)
    text = (ws.root / "toolchains/mytc.yaml").read_text()
    ws.write("toolchains/mytc.yaml", text + "patches: [patches/v2.patch]\n")
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "o").read_text() == "tool-v2\n"
    key = _key(ws, "t")
    # The patch edited in place (its toolchain file untouched): a new entry, and the node reruns.
    ws.write("toolchains/patches/v2.patch", (ws.root / "toolchains/patches/v2.patch").read_text()
             .replace("+echo tool-v2", "+echo tool-v3"))
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran" and (ws.out("t") / "o").read_text() == "tool-v3\n", st["_out"] + st["_err"]
    ws.write("toolchains/patches/v2.patch", (ws.root / "toolchains/patches/v2.patch").read_text()
             .replace("+echo tool-v3", "+echo tool-v2"))
    assert ws.build(capsys=capsys)["t"] == "cached" and _key(ws, "t") == key
    # A patch that does not apply fails the fetch, naming the patch; nothing half-made is kept.
    ws.write("toolchains/patches/v2.patch", (ws.root / "toolchains/patches/v2.patch").read_text()
             .replace("tool-v1", "tool-v0"))
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 1 and "toolchain mytc: patch patches/v2.patch does not apply to 1.0" in err, err
    store = ws.cache / "toolchains"
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp-")]
    # A missing patch file is a configuration error: file, line, field; exit 2.
    ws.write("toolchains/mytc.yaml", text + "patches:\n  - patches/nope.patch\n")
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2 and "toolchains/mytc.yaml" in err and "patches" in err and "nope.patch" in err, err
    assert _key(ws, "t") == key


def test_setup_commands_make_files_in_the_entry_and_a_failing_one_fails_the_fetch(ws, capsys, tmp_path,
                                                                                  monkeypatch):
    """`setup` runs once at fetch, in the new entry, with the toolchain's tools: what it makes is
    part of the entry (and its digest); a failing command leaves no entry behind."""
    archive_workspace(ws, tmp_path, monkeypatch)
    spec = (ws.root / "toolchains" / "mytc.yaml").read_text()
    ws.write("toolchains/mytc.yaml", spec + 'setup: ["mkdir -p {entry}/made && {tool} > {entry}/made/by-setup"]\n')
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, toolchain: mytc, outs: [o], cmds: ["cat /toolchains/*/made/by-setup > $OUT/o"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "o").read_text() == "tool-v1\n"
    entries = [p for p in (ws.cache / "toolchains").iterdir() if p.is_dir()]
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    assert "made/by-setup" in manifest["files"]

    ws.write("toolchains/mytc.yaml", spec + 'setup: ["{tool} > {entry}/x", "exit 3"]\n')
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 1 and "toolchain mytc: setup command failed: exit 3" in err, err
    assert len([p for p in (ws.cache / "toolchains").iterdir() if p.is_dir()]) == 1   # only the first entry
    ws.write("toolchains/mytc.yaml", spec + 'setup: ["{tol} > x"]\n')
    rc, _, err = ws.run("toolchain", "fetch", "mytc", capsys=capsys)
    assert rc == 2 and "setup[0] refers to unknown tool '{tol}'" in err and "did you mean 'tool'" in err, err
