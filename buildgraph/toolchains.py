"""Resolve toolchains and host tools into what an action sees and what its key hashes.

A toolchain's identity in the key is the digest of its files' contents, never its
version string: changing one byte of a compiler changes every dependent key.
Provider `host` (this issue) uses programs already installed, checks the version
they report, and is shown as non-hermetic. Resolutions are cached in the
workspace state and trusted while the tools' stat signatures are unchanged, so
a no-op build runs no compiler to ask for its version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from buildgraph.digest import StatCache, stat_signature, value_digest
from buildgraph.errors import ConfigError
from buildgraph.workspace import Toolchain

# Role in toolchains/*.yaml -> name on the action's PATH, and the variable naming it.
ROLE_LINKS = {"cc": "cc", "cxx": "c++", "ar": "ar", "ranlib": "ranlib", "as": "as", "ld": "ld",
              "nm": "nm", "strip": "strip", "objcopy": "objcopy", "objdump": "objdump",
              "readelf": "readelf", "cpp": "cpp"}
ROLE_ENV = {"cc": "CC", "cxx": "CXX", "ar": "AR", "ranlib": "RANLIB", "nm": "NM", "strip": "STRIP",
            "objcopy": "OBJCOPY", "ld": "LD"}
# gcc runs these helpers; their contents are part of the compiler.
_GCC_HELPERS = {"cc": ("cc1", "collect2", "lto-wrapper"), "cxx": ("cc1plus",)}


@dataclass(frozen=True)
class ResolvedToolchain:
    name: str
    version: str
    digest: str
    links: tuple[tuple[str, str], ...]   # (name on PATH, host path)
    env: tuple[tuple[str, str], ...]     # CC=cc, CXX=c++, ...
    hermetic: bool
    files: tuple[str, ...]               # every host file in the digest


def _which(name: str) -> str | None:
    found = shutil.which(name) if "/" not in name else (name if os.access(name, os.X_OK) else None)
    return os.path.realpath(found) if found else None


def _signature(paths) -> tuple:
    sig = []
    for p in paths:
        try:
            sig.append((p, stat_signature(os.stat(p))))
        except OSError:
            sig.append((p, None))
    return tuple(sig)


class ToolchainResolver:
    """Resolves toolchains for one build; `cache` is the persisted resolution cache."""

    def __init__(self, stat_cache: StatCache, cache: dict):
        self.stat_cache = stat_cache
        self.cache = cache
        self._resolved: dict[str, ResolvedToolchain] = {}
        self.changed = False

    def resolve(self, tc: Toolchain) -> ResolvedToolchain:
        if tc.name in self._resolved:
            return self._resolved[tc.name]
        entry = self.cache.get(("toolchain", tc))
        if entry is not None and _signature(entry[0].files) == entry[1]:
            resolved = entry[0]
        else:
            resolved = self._resolve_host(tc)
            self.cache[("toolchain", tc)] = (resolved, _signature(resolved.files))
            self.changed = True
        self._resolved[tc.name] = resolved
        return resolved

    def _resolve_host(self, tc: Toolchain) -> ResolvedToolchain:
        links, env, files = [], [], []
        for role, command in tc.tools:
            path = _which(command)
            if path is None:
                raise ConfigError(f"toolchain '{tc.name}': tool {role}={command!r} not found on this machine",
                                  file=tc.loc.file, line=tc.loc.line, field=f"tools.{role}",
                                  hint="install it or point the tool at an existing path")
            links.append((ROLE_LINKS.get(role, role), path))
            if role in ROLE_ENV:
                env.append((ROLE_ENV[role], ROLE_LINKS[role]))
            files.append(path)
            for helper in _GCC_HELPERS.get(role, ()):
                out = subprocess.run([path, f"-print-prog-name={helper}"], capture_output=True, text=True)
                helper_path = out.stdout.strip()
                if out.returncode == 0 and os.path.isabs(helper_path) and os.path.exists(helper_path):
                    files.append(os.path.realpath(helper_path))
        reported = ""
        cc = dict(tc.tools).get("cc") or dict(tc.tools).get("cxx")
        if cc:
            out = subprocess.run([_which(cc), "--version"], capture_output=True, text=True)
            reported = (out.stdout.splitlines() or [""])[0]
        if tc.expect_version and tc.expect_version not in reported:
            raise ConfigError(f"toolchain '{tc.name}' expects version {tc.expect_version!r}, "
                              f"but {cc} reports {reported!r}", file=tc.loc.file, line=tc.loc.line,
                              field="expect_version")
        files = sorted(set(files))
        digest = value_digest({"provider": tc.provider, "tools": sorted([n, self.stat_cache.digest(p)] for n, p in links),
                               "files": [self.stat_cache.digest(p) for p in files]})
        return ResolvedToolchain(name=tc.name, version=tc.version, digest=digest, links=tuple(links),
                                 env=tuple(sorted(env)), hermetic=tc.provider != "host", files=tuple(files))

    def host_tools(self, names: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], str]:
        """The host tools that exist here as (name, path) links, and the digest of their contents."""
        links = []
        for name in names:
            path = _which(name)
            if path is not None:
                links.append((name, path))
        digest = value_digest(sorted([n, self.stat_cache.digest(p)] for n, p in links))
        return tuple(links), digest

