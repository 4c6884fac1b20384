"""Audit ELF files against manylinux policies: the tightest true platform tag, and why not better.

Policy data lives in data/manylinux-x86_64.json (oldest first). A file satisfies a policy
when every symbol version it needs in GLIBC, GLIBCXX, CXXABI and GCC is at most the
policy's, and every library it needs is a system library or shipped beside it.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph.elf import ElfRequirements, parse_version, requirements

_DATA = Path(__file__).with_name("data") / "manylinux-x86_64.json"


@dataclass(frozen=True)
class Policy:
    name: str
    aliases: tuple[str, ...]
    max: tuple[tuple[str, tuple[int, ...]], ...]


@functools.cache
def _data() -> dict:
    return json.loads(_DATA.read_text())


def policies() -> list[Policy]:
    data = _data()
    return [Policy(p["name"], tuple(p["aliases"]), tuple((k, parse_version(v)) for k, v in p["max"].items()))
            for p in data["policies"]]


def system_libraries() -> frozenset[str]:
    return frozenset(_data()["system_libraries"])


def policy_named(name: str) -> Policy | None:
    return next((p for p in policies() if name in (p.name, *p.aliases)), None)


@dataclass
class FileAudit:
    path: str
    req: ElfRequirements
    tag: str                                  # tightest manylinux tag, or "linux"
    external: list[str] = field(default_factory=list)   # needed, neither system nor shipped

    def violations(self, policy: Policy) -> list[str]:
        """Why this file does not meet `policy` (empty if it does)."""
        name = os.path.basename(self.path)
        out = []
        for namespace, limit in policy.max:
            found = self.req.highest.get(namespace)
            if found and found[0] > limit:
                version, symbol = found
                v, lim = ".".join(map(str, version)), ".".join(map(str, limit))
                sym = f"{symbol}@" if symbol else ""
                out.append(f"{name}: {sym}{namespace}_{v} needs {namespace} {v} > {lim}")
        for lib in self.external:
            out.append(f"{name}: needs {lib}, which is neither a system library nor shipped")
        return out


def audit_file(path: str, shipped: set[str] = frozenset()) -> FileAudit:
    """Audit one ELF file; `shipped` are library names present beside it."""
    req = requirements(path)
    system = system_libraries()
    external = [n for n in req.needed if n not in system and n not in shipped]
    audit = FileAudit(path, req, "linux", external)
    for policy in policies():
        if not audit.violations(policy):
            audit.tag = policy.name
            break
    return audit


def tightest(audits: list[FileAudit]) -> str:
    """The tag every file satisfies: the newest of their tightest tags ("linux" if any has none)."""
    order = [p.name for p in policies()]
    if any(a.tag == "linux" for a in audits):
        return "linux"
    return max((a.tag for a in audits), key=order.index, default=order[0])


def what_sets(audits: list[FileAudit], tag: str) -> list[str]:
    """What keeps these files from the policy just older than `tag`: the symbols (and libraries)
    that set their tag. Empty for the oldest policy."""
    order = policies()
    index = len(order) if tag == "linux" else next(i for i, p in enumerate(order) if p.name == tag)
    return [v for a in audits for v in a.violations(order[index - 1])] if index else []


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
