"""`buildgraph env` and `buildgraph shell`: a node's build environment for a checkout."""

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import HOST_GCC, REPO, ran
from test_compile_cache import CALC, PROJECT

from buildgraph import compile_cache

APP = {
    "app/CMakeLists.txt": """\
        cmake_minimum_required(VERSION 3.16)
        project(app CXX)
        find_path(CALC_INCLUDE calc.h REQUIRED)
        find_library(CALC_LIB calc REQUIRED)
        add_executable(app main.cpp)
        target_include_directories(app PRIVATE ${CALC_INCLUDE})
        target_compile_definitions(app PRIVATE GREETING="${GREETING}")
        target_link_libraries(app PRIVATE ${CALC_LIB})
        install(TARGETS app RUNTIME DESTINATION bin)
        """,
    "app/main.cpp": "#include \"calc.h\"\n#include <cstdio>\n"
                    "int main() { std::printf(\"%s %d\\n\", GREETING, calc_add(2, calc_mul(3, 4))); }\n",
}

BUILD = "toolchain: {toolchain}\ntargets:\n" + CALC + """\
  app:
    kind: cmake
    srcs: ["app/**"]
    source_dir: app
    deps: [calc]
    outs: [bin/app]
    cmake_args: [-DGREETING=hello, "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath,$DEP_CALC/lib"]
"""


def cli(ws, *args, env=None) -> subprocess.CompletedProcess:
    """buildgraph as a developer runs it from a terminal in the workspace."""
    n = 1
    return subprocess.run([sys.executable, "-m", "buildgraph", *args[:n], "--cache-dir", str(ws.cache),
                           *ws._tc_args(), *args[n:]], cwd=ws.root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.parametrize("toolchain", ["host-gcc", "portable"])
def test_env_and_shell_configure_and_build_a_checkout(shared_ws, capsys, toolchain):
    ws = shared_ws
    if toolchain == "host-gcc":
        ws.write("toolchains/host-gcc.yaml", HOST_GCC)
    else:
        ws.use_toolchains(toolchain)
    for rel, text in {**PROJECT, **APP}.items():
        ws.write(rel, text)
    ws.write("BUILD.yaml", BUILD.format(toolchain=toolchain))
    assert ws.build(capsys=capsys)["_rc"] == 0

    # env: sourced by sh, it is all a plain cmake configure and build in the checkout needs.
    sh = cli(ws, "env", "app")
    assert sh.returncode == 0, sh.stderr
    assert "CMAKE_PREFIX_PATH=" in sh.stdout and "CCACHE_DIR=" in sh.stdout
    script = sh.stdout + ("cmake -S app -B .build-env -DGREETING=plain >/dev/null && cmake --build .build-env >/dev/null"
                          " && ./.build-env/app\n")
    run = subprocess.run(["sh", "-e", "-c", script], cwd=ws.root, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(ws.root)})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "plain 14\n"

    # The dependencies are materialized read-only; the toolchain runs through the compile cache.
    lib = next((ws.out("calc") / "lib").glob("libcalc.so*"))
    assert stat.S_IMODE(lib.stat().st_mode) & 0o222 == 0
    data = json.loads(cli(ws, "env", "app", "--format", "json").stdout)
    assert data["deps"] == {"calc": str(ws.out("calc"))} and data["source_dir"] == str(ws.root / "app")
    ccache_dir = data["env"]["CCACHE_DIR"]

    # shell: the preset it writes configures and builds the same, with compile_commands.json
    # for clangd; a second build tree of the same sources is all compile cache hits.
    for tree in ("first", "second"):
        done = cli(ws, "shell", "app", "--", "sh", "-e", "-c",
                   f"cd app && cmake --preset buildgraph-app -B ../.buildgraph/{tree} >/dev/null && "
                   f"cmake --build ../.buildgraph/{tree} >/dev/null && ../.buildgraph/{tree}/app")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello 14\n"
    presets = json.loads((ws.root / "app/CMakeUserPresets.json").read_text())
    (configure,) = presets["configurePresets"]
    assert configure["cacheVariables"]["GREETING"] == "hello"
    assert configure["cacheVariables"]["CMAKE_EXPORT_COMPILE_COMMANDS"] == "ON"
    commands = json.loads((ws.root / ".buildgraph/second/compile_commands.json").read_text())
    # the toolchain's compiler: through PATH (host-gcc) or its CMake toolchain file (portable)
    assert commands[0]["command"].split()[0].startswith((str(ws.cache / "dev-env"), str(ws.toolchain_dir)))
    assert f"-I{ws.out('calc')}/include" in commands[0]["command"]
    assert compile_cache.stats(os.path.dirname(ccache_dir))["hits"] >= 1

    # Nothing the developer did in the checkout changed a key (the presets file is theirs).
    assert ran(ws.build(capsys=capsys)) == set()


def test_env_names_one_node_and_presets_need_cmake(ws, capsys):
    for rel, text in PROJECT.items():
        ws.write(rel, text)
    ws.write("BUILD.yaml", """\
        toolchain: host-gcc
        variants: {opt: [a, b]}
        targets:
          mk: {kind: make, srcs: ["mk/*"], source_dir: mk, install_targets: [install], outs: [lib/libmk.a],
               features: [opt]}
        """)
    rc, _, err = ws.run("env", "mk", capsys=capsys)
    assert rc == 2 and "names 2 nodes" in err
    rc, _, err = ws.run("env", "mk@a", "--format", "cmake-presets", capsys=capsys)
    assert rc == 2 and "only cmake nodes have CMake presets" in err
    rc, out, _ = ws.run("env", "mk@a", capsys=capsys)
    assert rc == 0 and "export CC=cc" in out
