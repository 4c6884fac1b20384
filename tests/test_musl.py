"""musl and multi-tag wheels: the portable-musl toolchain, a `libc` variant axis, the musllinux
verdicts, and wheels that carry one tag per C library their files meet."""

import os
import subprocess
import sys
import zipfile

import pytest

from buildgraph import audit
from buildgraph.elf import requirements

AUDITWHEEL = os.path.join(os.path.dirname(sys.executable), "auditwheel")
MUSL_LOADER = "/lib/ld-musl-x86_64.so.1"   # Debian's musl package

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(MUSL_LOADER), reason="needs Debian's musl (apt-get install musl)")]

ANSWER_CPP = """\
#include <mutex>
#include <stdexcept>
#include <string>
static std::once_flag flag;
static int base;
static std::string& who() { static std::string w(LIBC); return w; }   // function-local static
extern "C" int answer(int n) {
    std::call_once(flag, [] { base = 40; });
    try {
        if (n < 0) throw std::invalid_argument(who());
        return base + n;
    } catch (const std::exception& e) {
        return -(int)std::string(e.what()).size();
    }
}
"""
MAIN_C = """\
#include <stdio.h>
int answer(int);
int main(void) { printf("%d %d\\n", answer(2), answer(-1)); return 0; }
"""
# A program that loads a library the way a plugin host does, with the C library it was built for.
DLOPEN_C = """\
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\\n", dlerror()); return 1; }
    int (*answer)(int) = (int (*)(int))dlsym(lib, "answer");
    printf("%d %d\\n", answer(2), answer(-1));
    return 0;
}
"""
CMAKE = """\
cmake_minimum_required(VERSION 3.16)
project(answer C CXX)
add_library(answer SHARED answer.cpp)
target_compile_definitions(answer PRIVATE LIBC="$ENV{BG_LIBC}")
add_executable(main main.c)
target_link_libraries(main answer)
install(TARGETS answer main)
install(FILES LICENSE DESTINATION share/licenses/answer)
"""
LIBC_AXIS_BUILD = """\
    variants:
      libc: [gnu, musl]
    toolchain: portable
    targets:
      answer:
        kind: cmake
        srcs: ["src/**"]
        source_dir: src
        features: [libc]
        outs: [bin/, lib/, share/]
        licenses: [share/licenses/answer/LICENSE]
        when:
          - if: {libc: musl}
            toolchain: portable-musl
      pkg:
        kind: artifact
        backend: answer
        library: lib/libanswer.so
        wheel: answer
        version: "1.0"
        deps: [answer]
        features: [libc]
        when:
          - if: {libc: musl}
            toolchain: portable-musl
            policy: musllinux_1_2
      host:
        kind: script
        srcs: [dlopen.c]
        features: [libc]
        outs: [dlopen]
        cmds: ["$CC -O2 $SRC/dlopen.c -o $OUT/dlopen"]
        when:
          - if: {libc: musl}
            toolchain: portable-musl
      # zig's own musl link, without the toolchain's libc: NEEDED libc.so
      zig_stub:
        kind: script
        toolchain: portable-musl
        srcs: [src/answer.cpp]
        outs: [libstub.so]
        cmds: ["zig c++ -target x86_64-linux-musl -O2 -fPIC -shared -DLIBC='\\"musl\\"' $SRC/src/answer.cpp -o $OUT/libstub.so"]
    """


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def test_a_libc_axis_builds_gnu_and_musl_variants_that_run_and_audit_true(shared_ws, capsys):
    ws = shared_ws
    ws.use_toolchains("portable", "portable-musl")
    ws.write("src/answer.cpp", ANSWER_CPP)
    ws.write("src/main.c", MAIN_C)
    ws.write("src/CMakeLists.txt", CMAKE)
    ws.write("src/LICENSE", "MIT\n")
    ws.write("dlopen.c", DLOPEN_C)
    ws.write("BUILD.yaml", LIBC_AXIS_BUILD)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]

    # The musl program and library: musl's loader, musl's C library under its real name.
    main, lib = ws.out("answer@musl") / "bin" / "main", ws.out("answer@musl") / "lib" / "libanswer.so"
    assert requirements(str(main)).interp == MUSL_LOADER
    assert requirements(str(lib)).needed == ["libc.musl-x86_64.so.1"]
    assert requirements(str(main)).needed == ["libanswer.so", "libc.musl-x86_64.so.1"]
    proc = run(main)    # Debian's musl loader runs it; its RUNPATH finds the library
    assert (proc.returncode, proc.stdout) == (0, "42 -4\n"), proc.stderr   # "musl": 4 characters
    gnu = run(ws.out("answer@gnu") / "bin" / "main")
    assert (gnu.returncode, gnu.stdout) == (0, "42 -3\n"), gnu.stderr      # "gnu"

    # The audit: musllinux_1_2 for musl (nothing proves an older musl), manylinux for glibc.
    assert audit.audit_file(str(lib)).tags == ["musllinux_1_2"]
    gnu_lib = ws.out("answer@gnu") / "lib" / "libanswer.so"
    assert audit.audit_file(str(gnu_lib)).tags == ["manylinux_2_17"]
    # Side by side, with nothing to pick one per machine, a glibc and a musl file are true nowhere.
    mixed = audit.audit_together([str(gnu_lib), str(lib)])
    assert audit.true_tags(mixed) == []
    assert any("a glibc binary cannot be musllinux_1_2" in p for p in audit.claim_problems(mixed, "musllinux_1_2"))
    refused = run(sys.executable, "-m", "buildgraph", "audit", "--policy", "musllinux_1_1", lib)
    assert refused.returncode == 1 and "symbols carry no versions" in refused.stdout, refused.stdout
    # zig's own stub names musl's libc "libc.so", which no policy lists: the toolchain renames it.
    stub = audit.audit_file(str(ws.out("zig_stub") / "libstub.so"))
    assert stub.tags == [] and "portable-musl toolchain" in " ".join(stub.violations(audit.policy_named("musllinux_1_2")))

    # The artifacts: each wheel tagged for its C library; auditwheel agrees.
    musl_wheel = next((ws.out("pkg@musl") / "wheel").glob("*.whl"))
    gnu_wheel = next((ws.out("pkg@gnu") / "wheel").glob("*.whl"))
    assert musl_wheel.name == "answer-1.0-py3-none-musllinux_1_2_x86_64.whl"
    assert gnu_wheel.name == "answer-1.0-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    shown = run(AUDITWHEEL, "show", musl_wheel)
    assert 'platform tag: "musllinux_1_2_x86_64"' in " ".join(shown.stdout.split()), shown.stdout + shown.stderr
    meta = (ws.out("pkg@musl") / "dist" / "libanswer.so.meta").read_text()
    assert "platform_tag=musllinux_1_2_x86_64\n" in meta
    assert "licenses/musl/COPYRIGHT" in meta      # musl's crt files are linked into every program
    # ... and the shipped musl library loads into a musl process (and the glibc one into glibc's).
    for variant, expect in (("musl", "42 -4\n"), ("gnu", "42 -3\n")):
        shipped = ws.out(f"pkg@{variant}") / "dist" / "lib" / "libanswer.so"
        proc = run(ws.out(f"host@{variant}") / "dlopen", shipped, env={})
        assert (proc.returncode, proc.stdout) == (0, expect), (variant, proc.stderr)


PURE_C = """\
/* Pure code: no C library at all, so it loads under glibc and musl alike. */
long dot(const int *a, const int *b, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += (long)a[i] * b[i];
    return s;
}
"""
STATIC_C = """\
#include <stdio.h>
int main(void) { printf("static\\n"); return 0; }
"""


def test_a_payload_that_needs_no_libc_gets_every_tag_it_proves(shared_ws, capsys, tmp_path):
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    ws = shared_ws
    ws.use_toolchains("portable", "portable-musl")
    ws.write("pure.c", PURE_C)
    ws.write("static.c", STATIC_C)
    ws.write("LICENSE", "MIT\n")
    ws.write("BUILD.yaml", """\
        toolchain: portable
        targets:
          kernel:
            kind: script
            srcs: [pure.c, LICENSE]
            outs: [lib/libkernel.so, LICENSE]
            licenses: [LICENSE]
            cmds: ["mkdir -p $OUT/lib && cp $SRC/LICENSE $OUT/",
                   "$CC -O2 -fPIC -shared -nostdlib -Wl,-soname,libkernel.so $SRC/pure.c -o $OUT/lib/libkernel.so"]
          kernel_pkg: {kind: artifact, backend: kernel, library: lib/libkernel.so, wheel: kernel,
                       version: "2.0", deps: [kernel], policy: manylinux_2_17}
          tool: {kind: script, toolchain: portable-musl, srcs: [static.c], outs: [tool],
                 cmds: ["$CC -O2 -static $SRC/static.c -o $OUT/tool"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]

    # The claim was manylinux_2_17; the wheel carries what the audit proves: both C libraries.
    wheel = next((ws.out("kernel_pkg") / "wheel").glob("*.whl"))
    assert wheel.name == "kernel-2.0-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.musllinux_1_1_x86_64.whl"
    with zipfile.ZipFile(wheel) as z:
        tags_in_wheel = [line.split(": ")[1] for line in z.read("kernel-2.0.dist-info/WHEEL").decode().splitlines()
                         if line.startswith("Tag: ")]
    assert tags_in_wheel == ["py3-none-manylinux1_x86_64", "py3-none-manylinux_2_5_x86_64",
                             "py3-none-musllinux_1_1_x86_64"]
    # pip takes it here (a glibc machine), by one of its tags ...
    assert set(parse_wheel_filename(wheel.name)[3]) & set(sys_tags())
    venv = tmp_path / "venv"
    assert run("/usr/bin/python3", "-m", "venv", venv).returncode == 0
    pip = run(venv / "bin" / "pip", "install", "--quiet", "--no-index", "--no-deps", wheel)
    assert pip.returncode == 0, pip.stderr
    call = ("import ctypes, kernel\nlib = kernel.load()\n"
            "a = (ctypes.c_int * 3)(1, 2, 3)\nlib.dot.restype = ctypes.c_long\nprint(lib.dot(a, a, 3))\n")
    proc = run(venv / "bin" / "python", "-c", call)
    assert (proc.returncode, proc.stdout) == (0, "14\n"), proc.stderr
    # ... auditwheel show agrees on glibc (its default for a file that names no C library), and on
    # a musl 1.1 machine (Alpine 3.12; simulated: its policies, with the host's musl version set).
    shown = run(AUDITWHEEL, "show", wheel)
    assert 'platform tag: "manylinux_2_5_x86_64"' in " ".join(shown.stdout.split()), shown.stdout + shown.stderr
    on_musl = ("import sys\nfrom pathlib import Path\n"
               "from auditwheel.libc import Libc, LibcVersion\n"
               "from auditwheel.architecture import Architecture\n"
               "Libc.get_current_version = lambda self: LibcVersion(1, 1)\n"
               "from auditwheel.wheel_abi import analyze_wheel_abi\n"
               "info = analyze_wheel_abi(Libc.MUSL, Architecture.x86_64, Path(sys.argv[1]), frozenset(),\n"
               "                         disable_isa_ext_check=True, allow_graft=False)\n"
               "print(info.overall_policy.name)\n")
    proc = run(sys.executable, "-c", on_musl, wheel)
    assert (proc.returncode, proc.stdout) == (0, "musllinux_1_1_x86_64\n"), proc.stderr

    # A statically linked musl program: no loader, no NEEDED; it runs here and proves both.
    tool = ws.out("tool") / "tool"
    req = requirements(str(tool))
    assert req.interp is None and req.needed == []
    assert audit.audit_file(str(tool)).tags == ["manylinux_2_5", "musllinux_1_1"]
    proc = run(tool, env={})
    assert (proc.returncode, proc.stdout) == (0, "static\n")

