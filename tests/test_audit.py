"""The audit against auditwheel: the same verdict as `auditwheel show` on the same files, from
auditwheel's own policy data (every manylinux policy up to the newest it knows, every symbol
namespace, blacklisted symbols), on real system libraries and on libraries built here."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from buildgraph import audit
from buildgraph.cli import main

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
AUDITWHEEL = Path(sys.executable).with_name("auditwheel")


def wheel_of(files: list[Path], dest: Path, tag: str = "manylinux_2_5_x86_64") -> Path:
    """A wheel shipping `files` side by side under pkg/lib/ (as our artifacts do). auditwheel
    knows the libc of a wheel from its tag, so the default claims the oldest manylinux."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"pkg-1.0-py3-none-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        for f in files:
            z.write(f, f"pkg/lib/{f.name}")
        z.writestr("pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
        z.writestr("pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                   f"Tag: py3-none-{tag}\n")
        # auditwheel reads the files a wheel holds from its RECORD
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in z.namelist()) + "pkg-1.0.dist-info/RECORD,,\n")
    return wheel


def auditwheel_tag(wheel: Path) -> str:
    proc = subprocess.run([str(AUDITWHEEL), "show", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s*"([^"]+)"', proc.stdout)
    assert found, proc.stdout
    return found.group(1)


def our_tag(files: list[Path]) -> str:
    tags = audit.true_tags(audit.audit_together([str(f) for f in files]))
    return f"{tags[0] if tags else 'linux'}_x86_64"


def shared_library(tmp_path: Path, name: str, code: str, *libs: str, cxx: bool = False) -> Path:
    src = tmp_path / f"{name}.{'cpp' if cxx else 'c'}"
    src.write_text(code)
    out = tmp_path / f"{name}.so"
    subprocess.run(["g++" if cxx else "gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(src), *libs], check=True)
    return out


CASES = {
    # ZLIB_1.2.9 (crc32_z): manylinux_2_27 by auditwheel; the old table ignored the ZLIB namespace
    "crc32_z": ("unsigned long crc32_z(unsigned long, const unsigned char *, unsigned long);\n"
                "unsigned long f(const unsigned char *p) { return crc32_z(0, p, 3); }\n", [str(LIBDIR / "libz.so.1")]),
    # GLIBC_2.25
    "getrandom": ("#include <sys/random.h>\nlong f(void *b) { return getrandom(b, 8, 0); }\n", []),
    # C++ with std::thread and a string stream: GLIBCXX and CXXABI of Debian 12's libstdc++
    "cxx": ("#include <sstream>\n#include <thread>\n#include <string>\n"
            "std::string f() { std::ostringstream s; std::thread t([]{}); t.join(); s << 1; return s.str(); }\n", []),
    # a blacklisted symbol (glibc's __cxa_thread_atexit_impl, strongly referenced)
    "blacklisted": ("extern int __cxa_thread_atexit_impl(void (*)(void *), void *, void *);\n"
                    "int f(void) { return __cxa_thread_atexit_impl(0, 0, 0); }\n", []),
    # nothing versioned beyond what every policy allows
    "plain": ("#include <stdio.h>\nint f(void) { return puts(\"hi\"); }\n", []),
}


@pytest.mark.skipif(not AUDITWHEEL.exists(), reason="auditwheel is installed by bash .ci/setup")
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tag_as_auditwheel_on_libraries_built_here(tmp_path, case):
    code, libs = CASES[case]
    lib = shared_library(tmp_path, f"lib{case}", code, *libs, cxx=case == "cxx")
    assert our_tag([lib]) == auditwheel_tag(wheel_of([lib], tmp_path / "w"))


@pytest.mark.skipif(not AUDITWHEEL.exists(), reason="auditwheel is installed by bash .ci/setup")
@pytest.mark.parametrize("name", ["libz.so.1", "libstdc++.so.6", "libgcc_s.so.1", "libexpat.so.1"])
def test_same_tag_as_auditwheel_on_system_libraries(tmp_path, name):
    lib = tmp_path / name
    shutil.copyfile((LIBDIR / name).resolve(), lib)
    assert our_tag([lib]) == auditwheel_tag(wheel_of([lib], tmp_path / "w"))


def test_zlib_namespace_sets_the_tag_the_old_table_missed(tmp_path):
    code, libs = CASES["crc32_z"]
    a = audit.audit_file(str(shared_library(tmp_path, "libcrc", code, *libs)))
    assert a.tag == "manylinux_2_27", a.tag
    assert any("crc32_z@ZLIB_1.2.9" in v for v in a.violations(audit.policy_named("manylinux_2_26")))


def test_policies_come_from_auditwheel_and_reach_past_2_35():
    names = [p.name for p in audit.policies("glibc")]
    assert names[0] == "manylinux_2_5" and "manylinux_2_26" in names and "manylinux_2_36" in names
    assert names == sorted(names, key=lambda n: tuple(map(int, n.split("_")[1:])))
    assert "GLIBCXX_3.4.24" in audit.policy_named("manylinux_2_28").versions["GLIBCXX"]
    assert "GLIBCXX_3.4.25" not in audit.policy_named("manylinux_2_28").versions["GLIBCXX"]
    assert audit.policy_named("manylinux2014").name == "manylinux_2_17"
    assert [p.name for p in audit.policies("musl")][:2] == ["musllinux_1_1", "musllinux_1_2"]


def test_debian_libstdcxx_is_manylinux_2_36_not_unlabelled():
    assert audit.audit_file(str((LIBDIR / "libstdc++.so.6").resolve())).tag == "manylinux_2_36"


def test_audit_a_wheel_checks_the_tags_its_name_claims(tmp_path, capsys):
    code, libs = CASES["getrandom"]
    lib = shared_library(tmp_path, "librand", code, *libs)
    honest = wheel_of([lib], tmp_path / "honest", "manylinux_2_28_x86_64")
    assert main(["audit", str(honest)]) == 0
    assert "claims manylinux_2_28_x86_64; its files prove manylinux_2_26" in capsys.readouterr().out
    lying = wheel_of([lib], tmp_path / "lying", "manylinux2014_x86_64.manylinux_2_17_x86_64")
    assert main(["audit", str(lying)]) == 1
    out = capsys.readouterr().out
    assert "not manylinux2014_x86_64: librand.so: getrandom@GLIBC_2.25 needs GLIBC 2.25 > 2.17" in out, out


def test_audit_of_files_shipped_together_finds_each_other_by_soname(tmp_path, capsys):
    dep = tmp_path / "libdep.so.1"
    (tmp_path / "dep.c").write_text("int dep(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libdep.so.1", "-o", str(dep), str(tmp_path / "dep.c")],
                   check=True)
    user = shared_library(tmp_path, "libuser", "int dep(void);\nint f(void) { return dep(); }\n", str(dep))
    assert main(["audit", "--policy", "manylinux_2_17", str(user)]) == 1
    assert "needs libdep.so.1, which is neither a system library nor shipped" in capsys.readouterr().out
    assert main(["audit", "--policy", "manylinux_2_17", str(user), str(dep)]) == 0


def test_audit_refuses_what_is_neither_elf_nor_wheel(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["audit", str(text)]) == 1
    assert "neither an ELF file nor a wheel" in capsys.readouterr().err
    assert main(["audit", "--policy", "manylinux_9_99", str(text)]) == 2
    assert "manylinux_2_5 … manylinux_2_" in capsys.readouterr().err


@pytest.mark.skipif(not AUDITWHEEL.exists(), reason="auditwheel is installed by bash .ci/setup")
def test_intels_onednn_wheel_claims_manylinux1_and_keeps_nothing(tmp_path, capsys):
    """A real mislabelled wheel: tagged manylinux1, libdnnl needs GLIBC_2.27 (expf) and an
    unshipped libgomp. auditwheel and we agree it is `linux`; we name why."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "--dest", str(tmp_path), "onednn-cpu-gomp==2023.2.0"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"PyPI is not reachable: {proc.stderr.strip()[-300:]}")
    wheel = next(tmp_path.glob("*.whl"))
    assert main(["audit", str(wheel)]) == 1
    out = capsys.readouterr().out
    assert "claims manylinux1_x86_64; its files prove linux" in out
    assert "libdnnl.so.3.2: expf@GLIBC_2.27 needs GLIBC 2.27 > 2.5" in out
    assert "libdnnl.so.3.2: needs libgomp.so.1, which is neither a system library nor shipped" in out
    assert auditwheel_tag(wheel) == "linux_x86_64"
    with zipfile.ZipFile(wheel) as z:
        lib = Path(z.extract("onednn_cpu_gomp-2023.2.0.data/data/lib/libdnnl.so.3.2", tmp_path / "x"))
    symbols_only = audit.audit_file(str(lib), shipped={"libgomp.so.1"})
    assert symbols_only.tag == "manylinux_2_27"


LEAKY_CPP = """\
#include <mutex>
#include <stdexcept>
#include <string>
static std::once_flag flag;
static int value;
static std::string& name() { static std::string n("gcc"); return n; }   // function-local static
extern "C" int leak_value() {
    std::call_once(flag, [] { value = 7; });
    try { throw std::runtime_error(name()); } catch (const std::exception& e) { return value + (int)std::string(e.what()).size(); }
}
"""


def test_a_statically_linked_cxx_runtime_must_not_be_exported(tmp_path, capsys):
    """-static-libstdc++ without a version script exports libstdc++ (std::call_once's
    __once_proxy, __cxa_*): refused, naming them and the fix. With a version script that
    exports only the API, the same library passes."""
    (tmp_path / "leak.cpp").write_text(LEAKY_CPP)
    leaky = tmp_path / "libleaky.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-static-libstdc++", "-static-libgcc", "-o", str(leaky),
                    str(tmp_path / "leak.cpp")], check=True)
    assert main(["audit", str(leaky)]) == 1
    out = capsys.readouterr().out
    assert "libleaky.so exports" in out and "__once_proxy" in out and "__cxa_throw" in out, out
    assert "version script" in out
    (tmp_path / "api.map").write_text("{ global: leak_value; local: *; };\n")
    private = tmp_path / "libprivate.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-static-libstdc++", "-static-libgcc",
                    f"-Wl,--version-script={tmp_path / 'api.map'}", "-o", str(private), str(tmp_path / "leak.cpp")],
                   check=True)
    assert audit.audit_file(str(private)).runtime_leaks == []
    # A library that needs libstdc++.so.6 links no runtime in: its std:: instantiations are fine.
    shared = shared_library(tmp_path, "libshared", LEAKY_CPP, cxx=True)
    assert audit.audit_file(str(shared)).runtime_leaks == []


def test_std_templates_over_a_librarys_own_types_are_not_the_runtimes(tmp_path):
    code = ("#include <vector>\nnamespace mine { struct Point { int x; }; }\n"
            "template class std::vector<mine::Point>;\n"
            "extern \"C\" int size() { return (int)std::vector<mine::Point>(3).size(); }\n")
    (tmp_path / "own.cpp").write_text(code)
    (tmp_path / "api.map").write_text("{ global: size; _ZNSt6vector*; local: *; };\n")
    lib = tmp_path / "libown.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-static-libstdc++", "-static-libgcc",
                    f"-Wl,--version-script={tmp_path / 'api.map'}", "-o", str(lib), str(tmp_path / "own.cpp")], check=True)
    a = audit.audit_file(str(lib))
    assert any(s.startswith("_ZNSt6vectorIN4mine5PointE") for s in a.req.exported)
    assert a.runtime_leaks == []


def test_a_pure_wheel_claims_any_and_keeps_it_until_it_ships_a_binary(tmp_path, capsys):
    code, libs = CASES["plain"]
    lib = shared_library(tmp_path, "libplain", code, *libs)
    assert main(["audit", str(wheel_of([], tmp_path / "pure", "any"))]) == 0
    assert main(["audit", str(wheel_of([lib], tmp_path / "binary", "any"))]) == 1
    assert "not any: libplain.so: a compiled file in a wheel that claims every platform" in capsys.readouterr().out
