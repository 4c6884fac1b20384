"""Audit ELF files against the manylinux and musllinux policies: the tags that are true, and
why not better.

The policies are auditwheel's own data (policy/manylinux-policy.json and musllinux-policy.json
in the auditwheel package, PEP 600 and PEP 656), read where it is installed, so a verdict here
is the one `auditwheel show` gives, and a newer auditwheel brings newer policies. A file meets
a policy when
  - it is linked against the policy's C library, or against none;
  - every symbol version it needs in a namespace the policy lists (GLIBC, GLIBCXX, CXXABI,
    GCC, ZLIB, LIBATOMIC) is one the policy allows: a newer one, or GLIBC_PRIVATE, is not;
  - every library it needs is on the policy's list or shipped beside it (the dynamic
    loader always counts as the system's);
  - it takes no blacklisted symbol from a library on that list (zlib's internals, glibc's
    __cxa_thread_atexit_impl, ...).
The C library is read from the file: musl when it needs libc.musl-<arch>.so.1 or musl's
loader, none when it needs no library at all (statically linked, or pure code), glibc
otherwise. musl versions none of its symbols, so nothing in a file shows that it loads on an
older musl than the newest policy; a musl file proves that one (as `auditwheel show` says on
a machine without musl). A file that needs no C library is true on every policy of both, and
files shipped together carry one tag per C library they all meet (the compressed tag set
manylinux_2_5_x86_64.musllinux_1_1_x86_64). `linux` is the tag of files that meet none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

from buildgraph.elf import ElfRequirements, parse_version, requirements

ARCH = "x86_64"
MUSL_LIBC = "libc.musl-x86_64.so.1"
_POLICY_FILES = {"glibc": "manylinux-policy.json", "musl": "musllinux-policy.json"}
LIBC_FAMILIES = tuple(_POLICY_FILES)


@dataclass(frozen=True)
class Policy:
    name: str
    aliases: tuple[str, ...]
    libc: str                                   # glibc | musl
    versions: dict[str, frozenset[str]]         # namespace -> the version names it allows
    whitelist: frozenset[str]                   # libraries it lets a file take from the system
    blacklist: dict[str, frozenset[str]]        # library -> symbols a file may not take from it

    def newest(self, namespace: str) -> str:
        """The newest version the policy allows in `namespace`, for messages."""
        found = [v.partition("_")[2] for v in self.versions.get(namespace, ())]
        return max(found, key=_version_key, default="none")


def _version_key(text: str) -> tuple:
    """Numbered versions above named ones (CXXABI_TM_1 is not newer than CXXABI_1.3.7)."""
    try:
        return (1, parse_version(text))
    except ValueError:
        return (0, text)


@functools.cache
def _policy_text(libc: str) -> str:
    # Found, not imported: importing auditwheel costs ~80 ms, on every build with an artifact.
    from importlib.util import find_spec
    spec = find_spec("auditwheel")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the audit reads auditwheel's policies: pip install auditwheel "
                           "(bash .ci/setup installs it)")
    package = next(iter(spec.submodule_search_locations))
    with open(os.path.join(package, "policy", _POLICY_FILES[libc]), encoding="utf-8") as f:
        return f.read()


@functools.cache
def policies(libc: str = "glibc") -> tuple[Policy, ...]:
    """The policies of one libc, oldest (the strictest claim that loads most widely) first."""
    out = []
    for p in sorted(json.loads(_policy_text(libc)), key=lambda p: -p["priority"]):
        if p["name"] == "linux":
            continue
        versions = p["symbol_versions"].get(ARCH, {})
        out.append(Policy(
            p["name"], tuple(p["aliases"]), libc,
            {ns: frozenset(f"{ns}_{v}" for v in allowed) for ns, allowed in versions.items()},
            # musllinux names musl's libc "libc.so"; a binary needs it as libc.musl-<arch>.so.1
            frozenset(MUSL_LIBC if libc == "musl" and lib == "libc.so" else lib for lib in p["lib_whitelist"]),
            {lib: frozenset(symbols) for lib, symbols in p["blacklist"].items()}))
    return tuple(out)


@functools.cache
def policy_data_digest() -> str:
    """What the verdicts depend on: in every artifact key, so new policy data re-audits."""
    h = hashlib.sha256()
    for libc in sorted(_POLICY_FILES):
        h.update(_policy_text(libc).encode())
    return h.hexdigest()[:32]


def policy_named(name: str) -> Policy | None:
    return next((p for libc in _POLICY_FILES for p in policies(libc) if name in (p.name, *p.aliases)), None)


def known_policy_names() -> str:
    return ", ".join(f"{ps[0].name} … {ps[-1].name}" for ps in (policies("glibc"), policies("musl")))


def is_loader(lib: str) -> bool:
    return lib.startswith("ld-linux") or lib.startswith("ld-musl") or lib in ("ld64.so.1", "ld64.so.2")


@dataclass
class FileAudit:
    path: str
    req: ElfRequirements
    shipped: frozenset[str]
    libc: str | None = None                               # glibc | musl | none; None: it does not say
    tags: list[str] = field(default_factory=list)         # per C library, the oldest policy it meets
    runtime_leaks: list[str] = field(default_factory=list)  # a static C++ runtime's symbols it exports

    @property
    def tag(self) -> str:
        """Its tightest tag, or "linux"."""
        return self.tags[0] if self.tags else "linux"

    def violations(self, policy: Policy, symbols: int | None = 3) -> list[str]:
        """Why this file does not meet `policy` (empty if it does), naming up to `symbols` of the
        symbols that need each version (None: every one)."""
        name = os.path.basename(self.path)
        if self.libc not in (policy.libc, "none", None):
            return [f"{name}: a {self.libc} binary cannot be {policy.name}"]
        newest_musl = policies("musl")[-1]
        if self.libc == "musl" and policy.name != newest_musl.name:
            return [f"{name}: needs musl's libc, whose symbols carry no versions, so nothing shows it "
                    f"loads on a musl older than {newest_musl.name}'s"]
        out = []
        for (lib, version), needing in sorted(self.req.versions.items()):
            namespace = version.partition("_")[0]
            if is_loader(lib) or namespace not in policy.versions or version in policy.versions[namespace]:
                continue
            sym = f"{needing[0]}@" if needing else ""
            shown = needing[1:] if symbols is None else needing[1:symbols]
            more = len(needing) - 1 - len(shown)
            also = f" (also {', '.join(shown)}{f' and {more} more' if more else ''})" if shown else ""
            out.append(f"{name}: {sym}{version} needs {namespace} {version.partition('_')[2]} "
                       f"> {policy.newest(namespace)}{also}")
        for lib in self.req.needed:
            if not is_loader(lib) and lib not in policy.whitelist and lib not in self.shipped:
                out.append(f"{name}: needs {lib}, which is neither a system library nor shipped"
                           + (f" (zig's name for musl's C library; the musllinux policies know it as {MUSL_LIBC}, "
                              "which the portable-musl toolchain links)" if lib == "libc.so" else ""))
            for symbol in sorted(policy.blacklist.get(lib, frozenset()) & (self.req.undefined | {"*"})):
                out.append(f"{name}: takes {symbol} from {lib}, which {policy.name} does not allow")
        return out


def audit_file(path: str, shipped=frozenset(), req: ElfRequirements | None = None,
               libc: str | None = None) -> FileAudit:
    """Audit one ELF file (`req`: its requirements, if already read; `libc`: the C library it
    is linked against, if known better than the file says); `shipped` are the library names
    (SONAMEs) present beside it."""
    req = req or requirements(path)
    audit = FileAudit(path, req, frozenset(shipped), libc or libc_of(req))
    audit.tags = true_tags([audit])
    audit.runtime_leaks = runtime_exports(req)
    return audit


def libc_of(req: ElfRequirements) -> str | None:
    """musl, glibc, or none (needs no library at all) where the file says; None where it needs
    libraries but names no C library (they might)."""
    names = [*req.needed, *([os.path.basename(req.interp)] if req.interp else [])]
    if not names:
        return "none"
    if any(n.startswith(("libc.musl-", "ld-musl-")) for n in names):
        return "musl"
    if any(n == "libc.so.6" or n.startswith(("ld-linux", "ld64.so.")) for n in names):
        return "glibc"
    return None


def true_tags(audits: list[FileAudit]) -> list[str]:
    """Per C library, the oldest policy every file meets: the tags the files prove together,
    tightest first (none where glibc and musl files are mixed, or a file meets no policy)."""
    found = []
    for libc in LIBC_FAMILIES:
        found += [next((p.name for p in policies(libc) if not any(a.violations(p) for a in audits)), None)]
    return [tag for tag in found if tag]


def what_sets(audits: list[FileAudit], tag: str) -> list[tuple[FileAudit, str]]:
    """What keeps these files from the policy just older than `tag`: the symbols (and libraries)
    that set their tag, each with its file. Empty for the oldest policy."""
    if not audits:
        return []
    family = policy_named(tag).libc if tag != "linux" else next(
        (a.libc for a in audits if a.libc in LIBC_FAMILIES), "glibc")
    order = policies(family)
    index = len(order) if tag == "linux" else next(i for i, p in enumerate(order) if p.name == tag)
    return [(a, v) for a in audits for v in a.violations(order[index - 1])] if index else []


def audit_together(paths: list[str]) -> list[FileAudit]:
    """Audit files shipped side by side: each may need the others (by SONAME or file name). A
    file that needs libraries but names no C library takes the one the others name, if they
    name one."""
    reqs = [requirements(path) for path in paths]
    shipped = {name for path, req in zip(paths, reqs) for name in (os.path.basename(path), req.soname) if name}
    named = {libc_of(req) for req in reqs} - {None, "none"}
    implied = named.pop() if len(named) == 1 else None
    return [audit_file(path, shipped, req, libc_of(req) or implied) for path, req in zip(paths, reqs)]


def claim_problems(audits: list[FileAudit], claim: str) -> list[str]:
    """Why files shipped together do not keep a platform tag's claim (e.g.
    manylinux2014_x86_64); empty if they do."""
    name = claim[:-len("_" + ARCH)] if claim.endswith("_" + ARCH) else claim
    if name == "linux" or (name == "any" and not audits):
        return []
    if name == "any":
        return [f"{os.path.basename(a.path)}: a compiled file in a wheel that claims every platform"
                for a in audits]
    policy = policy_named(name)
    if policy is None:
        return [f"{claim} is not a policy auditwheel knows ({known_policy_names()})"]
    return [v for a in audits for v in a.violations(policy)]


@contextlib.contextmanager
def wheel_files(path: str):
    """(its ELF files, unpacked into a temporary directory; the platform tags its name claims)."""
    import tempfile
    import zipfile

    from buildgraph.sources import WheelName

    wheel = WheelName.parse(os.path.basename(path))
    if wheel is None:
        raise ValueError(f"{path}: not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)")
    with tempfile.TemporaryDirectory(prefix="bg-audit-") as tmp, zipfile.ZipFile(path) as z:
        files = []
        for info in z.infolist():
            if info.is_dir() or ".." in info.filename.split("/"):
                continue
            with z.open(info) as f:
                if f.read(4) != b"\x7fELF":
                    continue
            files.append(z.extract(info, tmp))
        yield sorted(files), wheel.platforms


# A C++ runtime linked statically must stay private to the library: exported, its symbols
# (std::call_once's __once_callable, the guard variables' __cxa_guard_*, the unwinder) bind
# across libraries, and two runtimes in one process mix their state and crash.
CXX_RUNTIME_LIBRARIES = ("libstdc++.so.6", "libc++.so.1", "libc++abi.so.1")
# the runtime's C-level names (raw or demangled)
_RUNTIME_PREFIXES = ("__cxa_", "__gxx_personality", "_Unwind_", "unw_", "_txnal_", "__once_proxy", "__gcclibcxx_")
# The global operator new/delete are replaceable by design and exported so (libc++ does even
# when all else is hidden); every runtime's go to malloc and free, so binding to another's is
# harmless: not counted.
_REPLACEABLE = ("operator new", "operator delete")
# libc++'s inline functions carry its version in an ABI tag ([abi:ne190100]): instantiated from
# the headers into the library, they never meet another libc++'s under the same name.
_LIBCXX_VERSIONED = re.compile(r"\[abi:(ne|v)\d+\]")
_RUNTIME_NAMESPACES = frozenset(("std", "__gnu_cxx", "__cxxabiv1", "__gnu_debug"))
# Words a demangled runtime symbol may hold besides std:: names: builtin types and the
# demangler's own phrases ("guard variable for", "typeinfo for", "[abi:cxx11]", ...).
_NEUTRAL_WORDS = frozenset("""std __gnu_cxx __cxxabiv1 __gnu_debug __1 void bool char wchar_t char8_t
    char16_t char32_t short int long signed unsigned float double __int128 __float128 const volatile
    operator true false decltype nullptr auto abi anonymous namespace lambda guard variable for
    typeinfo name vtable construction VTT non virtual thunk to covariant return TLS init function
    wrapper transaction clone reference temporary in __va_list_tag""".split())


def runtime_exports(req: ElfRequirements) -> list[str]:
    """Symbols of a statically linked C++ runtime (libstdc++ or libc++, their ABI library and
    unwinder) that this file exports. A file that needs the runtime as a shared library
    links none in. std templates instantiated over the library's own types (a
    std::vector<cv::Mat>) are the library's, not the runtime's, and do not count."""
    if any(lib in CXX_RUNTIME_LIBRARIES for lib in req.needed):
        return []
    found = [s for s in req.exported if s.startswith(_RUNTIME_PREFIXES)]
    mangled = [s for s in req.exported if s.startswith("_Z")]
    for symbol, text in zip(mangled, _demangle(mangled)):
        if text.startswith(_REPLACEABLE) or _LIBCXX_VERSIONED.search(text):
            continue
        # the roots of its names (not after "::" or "~"): the runtime's namespaces and builtin words only
        roots = set(re.findall(r"(?<![\w:~])([A-Za-z_]\w*)", text))
        if text.startswith(_RUNTIME_PREFIXES) or (roots & _RUNTIME_NAMESPACES and roots <= _NEUTRAL_WORDS):
            found.append(symbol)
    return sorted(found)


def _demangle(symbols: list[str]) -> list[str]:
    import shutil
    import subprocess

    if not symbols:
        return []
    tool = shutil.which("c++filt")
    if tool is None:
        raise RuntimeError("c++filt (binutils) is needed to tell a C++ runtime's symbols from a library's")
    proc = subprocess.run([tool], input="\n".join(symbols) + "\n", capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    if len(lines) != len(symbols):    # one line per symbol, or nothing can be matched up
        raise RuntimeError(f"c++filt gave {len(lines)} lines for {len(symbols)} symbols")
    return lines


def runtime_export_problem(path: str, leaked: list[str]) -> str:
    telling = sorted(leaked, key=lambda s: (not s.startswith(("__cxa_", "__once_proxy", "_Unwind_", "_ZSt")), len(s)))
    shown = ", ".join(telling[:6]) + (f" and {len(leaked) - 6} more" if len(leaked) > 6 else "")
    return (f"{os.path.basename(path)} exports {len(leaked)} symbols of the C++ runtime it links statically "
            f"({shown}): in a process with another C++ runtime (another wheel's), calls bind across "
            f"them and crash. Export only the library's API: a version script "
            f"(-Wl,--version-script), or -fvisibility=hidden with -Wl,--exclude-libs,ALL; "
            f"-static-libstdc++ only together with a version script")


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
