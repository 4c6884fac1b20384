"""Read what an ELF file needs from the system: symbol versions and libraries.

`requirements(path)` reports, for a shared library or executable, every symbol version it
needs and from which library (GLIBC_2.17 from libc.so.6, ...; the highest per namespace is
derived), its NEEDED entries, RPATH and SONAME, the symbols it must take from others and the
ones it exports. This is the input of a manylinux-style audit: a library built on Debian 12
that needs GLIBC_2.34 will not load on CentOS 7 (glibc 2.17).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERSION = re.compile(r"^([A-Z_]+?)_(\d+(?:\.\d+)*)$")


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


@dataclass
class ElfRequirements:
    path: str
    needed: list[str] = field(default_factory=list)
    rpaths: list[str] = field(default_factory=list)   # DT_RPATH and DT_RUNPATH entries
    soname: str | None = None
    interp: str | None = None                         # PT_INTERP: the program's dynamic loader
    # every version it needs: (library, version name, e.g. GLIBC_2.17) -> the symbols needing it,
    # in symbol-table order (none where the version is required without a symbol we saw)
    versions: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    undefined: set[str] = field(default_factory=set)     # symbols it must take from others (not weak ones)
    exported: list[str] = field(default_factory=list)    # symbols it defines for other objects

    @property
    def highest(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Namespace (GLIBC, GLIBCXX, ...) -> (highest version it needs, one symbol needing it)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for (_, name), symbols in self.versions.items():
            symbol = symbols[0] if symbols else ""
            m = _VERSION.match(name)
            if not m:
                continue
            namespace, version = m.group(1), parse_version(m.group(2))
            best = out.get(namespace)
            if best is None or version > best[0] or (version == best[0] and not best[1] and symbol):
                out[namespace] = (version, symbol)
        return out


def requirements(path: str, symbols: bool = True) -> ElfRequirements:
    """Symbol versions and libraries `path` needs; ValueError if it is not an ELF file.
    With symbols=False only the dynamic section is read (NEEDED, RPATH/RUNPATH, SONAME):
    what bundling asks of every library, without walking its symbol table."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection

    out = ElfRequirements(path)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_INTERP":
                    out.interp = segment.get_interp_name()
            versym = None
            version_names: dict[int, str] = {}
            library_of: dict[str, str] = {}
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    _read_dynamic(section, out)
                elif not symbols:
                    continue
                elif isinstance(section, GNUVerNeedSection):
                    for need, auxes in section.iter_versions():
                        for aux in auxes:
                            version_names[aux.entry.vna_other] = aux.name
                            library_of[aux.name] = need.name
                elif isinstance(section, GNUVerSymSection):
                    versym = section
            dynsym = elf.get_section_by_name(".dynsym") if symbols else None
            for i, sym in enumerate(dynsym.iter_symbols() if dynsym is not None else ()):
                if not sym.name:
                    continue
                if sym["st_shndx"] != "SHN_UNDEF":
                    if sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE") \
                            and sym["st_other"]["visibility"] in ("STV_DEFAULT", "STV_PROTECTED"):
                        out.exported.append(sym.name)
                    continue
                if sym["st_info"]["bind"] != "STB_WEAK":   # a weak reference may stay unresolved
                    out.undefined.add(sym.name)
                index = versym.get_symbol(i)["ndx"] if versym is not None else None
                name = version_names.get(index if isinstance(index, int) else -1)
                if name:
                    out.versions.setdefault((library_of[name], name), []).append(sym.name)
            for name in version_names.values():  # versions required without a symbol we saw
                out.versions.setdefault((library_of[name], name), [])
    except ELFError as exc:
        raise ValueError(f"{path}: not an ELF file ({exc})") from None
    return out


def _read_dynamic(section, out: ElfRequirements) -> None:
    for tag in section.iter_tags():
        kind = tag.entry.d_tag
        if kind == "DT_NEEDED":
            out.needed.append(tag.needed)
        elif kind == "DT_RPATH":
            out.rpaths.append(tag.rpath)
        elif kind == "DT_RUNPATH":
            out.rpaths.append(tag.runpath)
        elif kind == "DT_SONAME":
            out.soname = tag.soname


def build_id(path: str) -> str | None:
    """The GNU build-id (hex) of an ELF file: how debuggers find its separate debug info."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import NoteSection

    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, NoteSection):
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
    return None


def has_debug_info(path: str) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return any(s.name.startswith((".debug_", ".zdebug_")) for s in ELFFile(f).iter_sections())
