"""The compile cache (ccache in cmake, make and autotools actions): an accelerator, never an input."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import ran
from servers import NGINX, HostileServer, NginxServer, free_port, silent
from test_toolchains import write_cuda_project

from buildgraph import compile_cache

pytestmark = pytest.mark.skipif(not Path("/usr/bin/ccache").exists(), reason="ccache is not installed")

PROJECT = {
    "lib/CMakeLists.txt": """\
        cmake_minimum_required(VERSION 3.16)
        project(calc CXX C)
        add_library(calc SHARED add.cpp mul.cpp tab.c)
        target_include_directories(calc PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
        install(TARGETS calc LIBRARY DESTINATION lib)
        install(FILES calc.h DESTINATION include)
        """,
    "lib/calc.h": "#pragma once\nint calc_add(int, int);\nint calc_mul(int, int);\n#ifdef __cplusplus\nextern \"C\"\n#endif\nint calc_tab(int);\n",
    "lib/add.cpp": "#include \"calc.h\"\n#include <vector>\nint calc_add(int a, int b) { std::vector<int> v{a, b}; return v[0] + v[1]; }\n",
    "lib/mul.cpp": "#include \"calc.h\"\n#include <string>\nint calc_mul(int a, int b) { return a * b + (int)std::string(\"x\").size() - 1; }\n",
    "lib/tab.c": "#include \"calc.h\"\nint calc_tab(int i) { static const int t[] = {1, 2, 3}; return t[i % 3]; }\n",
    "lib/README": "not compiled: editing it reruns the action, and every compile is a hit\n",
    "mk/Makefile": "libmk.a: mk.o\n\t$(AR) rcs $@ mk.o\nmk.o: mk.c\n\t$(CC) -O2 -fPIC -c mk.c -o mk.o\n"
                   "install: libmk.a\n\tmkdir -p $(PREFIX)/lib && cp libmk.a $(PREFIX)/lib/\n",
    "mk/mk.c": "#ifndef FLAVOUR\n#define FLAVOUR 0\n#endif\nint mk(int x) { return x * 3 + FLAVOUR; }\n",
    "mk/README": "not compiled\n",
}

CALC = """\
  calc:
    kind: cmake
    srcs: ["lib/*"]
    source_dir: lib
    outs: [include/, lib/]
"""
BUILD = "toolchain: {toolchain}\ntargets:\n" + CALC + """\
    cmake_args: [{flags}]
  mk:
    kind: make
    srcs: ["mk/*"]
    source_dir: mk
    install_targets: [install]
    outs: [lib/libmk.a]
"""


def write_project(ws, toolchain: str, flags: str = "-DCALC_UNUSED=1") -> None:
    for rel, text in PROJECT.items():
        ws.write(rel, text)
    ws.write("BUILD.yaml", BUILD.format(toolchain=toolchain, flags=flags))


def stats(cache: Path) -> dict[str, int]:
    """ccache's counters summed over every namespace of the cache."""
    return compile_cache.stats(str(cache / "compile-cache"))


def outputs(ws) -> dict[str, str]:
    found = {}
    for node in ("calc", "mk"):
        for path in sorted(ws.out(node).rglob("*")):
            if path.is_file():
                found[f"{node}/{path.relative_to(ws.out(node))}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def touch_readmes(ws, text: str) -> None:
    """Change what is not compiled: both actions run again, no compile input changed."""
    ws.write("lib/README", text)
    ws.write("mk/README", text)


@pytest.mark.parametrize("toolchain", ["portable", "gcc-12"])
def test_a_hit_gives_the_bytes_a_compile_gives(shared_ws, capsys, toolchain):
    ws = shared_ws
    ws.use_toolchains(toolchain)
    write_project(ws, toolchain)
    first = ws.build(capsys=capsys)
    assert first["_rc"] == 0, first["_err"]
    compiled = outputs(ws)
    cold = stats(ws.cache)
    # The four files, and the compiles of CMake's compiler checks (C and C++).
    assert cold["hits"] == 0 and cold["misses"] >= 4 and cold["namespaces"] == 1
    # Not an input: turning it off changes no key (nothing runs).
    assert ran(ws.build("--no-compile-cache", capsys=capsys)) == set()

    touch_readmes(ws, "again\n")
    second = ws.build(capsys=capsys)
    assert ran(second) == {"calc", "mk"}
    warm = stats(ws.cache)
    assert warm["hits"] == cold["misses"] and warm["misses"] == cold["misses"]
    assert outputs(ws) == compiled

    # Without the compile cache the compilers run, and give the same bytes again.
    touch_readmes(ws, "once more\n")
    third = ws.build("--no-compile-cache", capsys=capsys)
    assert ran(third) == {"calc", "mk"} and stats(ws.cache) == warm
    assert outputs(ws) == compiled

    # verify reruns the actions without it (the compilers run) and finds the same outputs.
    assert ws.run("verify", "calc", "mk", capsys=capsys)[0] == 0
    assert stats(ws.cache) == warm


def test_a_changed_flag_or_toolchain_compiles_again(ws, capsys):
    write_project(ws, "host-gcc")
    assert ws.build(capsys=capsys)["_rc"] == 0
    cold = stats(ws.cache)
    assert cold["hits"] == 0 and cold["misses"] >= 4

    # The same compile again is a hit (the control) ...
    ws.write("mk/README", "again\n")
    assert ran(ws.build(capsys=capsys)) == {"mk"}
    assert stats(ws.cache)["hits"] == 1 and stats(ws.cache)["misses"] == cold["misses"]

    # ... and with one more flag it is not (a define the file uses: one that changed nothing
    # in the preprocessed source would be a hit, rightly).
    library = (ws.out("mk") / "lib/libmk.a").read_bytes()
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace(
        "install_targets: [install]", "install_targets: [install]\n    make_args: [CC=cc -DFLAVOUR=1]"))
    assert ran(ws.build(capsys=capsys)) == {"mk"}
    assert stats(ws.cache)["hits"] == 1 and stats(ws.cache)["misses"] == cold["misses"] + 1
    assert (ws.out("mk") / "lib/libmk.a").read_bytes() != library

    # The toolchain's digest: a wrapper that passes one more define is another compiler, whose
    # compiles go to a namespace of their own and all miss there.
    ws.write("toolchains/host-gcc.yaml", (ws.root / "toolchains/host-gcc.yaml").read_text()
             .replace("  cc: gcc\n", "  gcc: gcc\n").replace("tools:\n", "wrappers:\n  cc: \"{gcc} -DFLAVOUR=2\"\ntools:\n"))
    before = stats(ws.cache)
    rebuilt = ws.build(capsys=capsys)
    assert ran(rebuilt) == {"calc", "mk"}, rebuilt["_err"]
    after = stats(ws.cache)
    assert after["namespaces"] == 2 and after["hits"] == before["hits"]
    assert after["misses"] == before["misses"] + cold["misses"]


def test_a_second_developer_gets_the_objects_from_the_remote_cache(ws, tmp_path, capsys):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed")
    server = NginxServer(tmp_path / "nginx")
    try:
        write_project(ws, "host-gcc")
        first = ws.build("--remote-cache", server.url, capsys=capsys)
        assert first["_rc"] == 0 and "compile cache" not in first["_err"]
        compiled = outputs(ws)
        cold = stats(ws.cache)
        uploaded = list((server.data / "compile-cache").rglob("*"))
        assert sum(p.is_file() for p in uploaded) == 2 * cold["misses"]   # a manifest and a result each

        # Another machine: empty local cache, the same remote. Its action cache entries are
        # there too, so a change that is not compiled makes the actions run.
        other = type(ws)(ws.root, tmp_path / "cache2")
        touch_readmes(other, "second developer\n")
        second = other.build("--remote-cache", server.url, capsys=capsys)
        assert ran(second) == {"calc", "mk"}, second["_err"]
        n = cold["misses"]
        assert stats(other.cache) == {"hits": n, "misses": 0, "remote_hits": n, "namespaces": 1}
        last = json.loads((ws.root / ".buildgraph" / "last-build.json").read_text())
        # entries: a manifest and a result per compile
        assert last["compile_remote_hits"] == 2 * n and last["compile_remote_uploads"] == 0
        rc, out, _ = other.run("cache", "stats", capsys=capsys)
        assert rc == 0
        assert f"compile cache: {n} hits ({n} from the remote), 0 misses in 1 toolchain namespaces" in out
        assert f"remote compile cache: {2 * n} entries found, 0 missing, 0 uploaded" in out
        assert outputs(other) == compiled
    finally:
        server.stop()


@pytest.mark.parametrize("remote", ["down", "hanging"])
def test_an_unusable_remote_costs_one_warning_and_a_local_compile(ws, capsys, remote):
    write_project(ws, "host-gcc")
    hanging = HostileServer(silent) if remote == "hanging" else None
    port = hanging.port if hanging else free_port()
    try:
        result = ws.build("--remote-cache", f"http://127.0.0.1:{port}", "--remote-timeout", "1", capsys=capsys)
    finally:
        if hanging:
            hanging.close()
    assert result["_rc"] == 0, result["_err"]
    assert ran(result) == {"calc", "mk"}
    warnings = [line for line in result["_err"].splitlines() if "compile cache" in line]
    assert len(warnings) == 1, result["_err"]
    assert "compiling locally" in warnings[0]
    assert stats(ws.cache)["misses"] >= 4


@pytest.mark.slow
def test_nvcc_and_its_host_compiles_are_cached(shared_ws, capsys):
    ws = shared_ws
    write_cuda_project(ws)
    ws.write("proj/README", "x\n")
    ws.write("BUILD.yaml", """\
        targets:
          p: {kind: cmake, toolchain: cuda-13.0, srcs: ["proj/*"], source_dir: proj, outs: [bin/, lib/]}
        """)
    assert ws.build(capsys=capsys)["_rc"] == 0
    first = {p.name: p.read_bytes() for p in ws.out("p").rglob("*") if p.is_file()}
    before = stats(ws.cache)
    assert before["misses"] >= 2 and before["hits"] == 0   # scale.cu (nvcc) and main.cpp (zig's clang)
    ws.write("proj/README", "y\n")
    assert ran(ws.build(capsys=capsys)) == {"p"}
    after = stats(ws.cache)
    assert after["hits"] == before["misses"] and after["misses"] == before["misses"]
    assert {p.name: p.read_bytes() for p in ws.out("p").rglob("*") if p.is_file()} == first
