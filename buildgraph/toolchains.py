"""Resolve a target's toolchain into what its action sees and what its key hashes.

An action sees a toolchain as names on PATH (links into the store entry's bin/),
environment variables (CC, CXX, AR, RANLIB, CMAKE_TOOLCHAIN_FILE, the toolchain's
own), and the entry itself mounted at /toolchains/<entry> — the same path on
every machine, so nothing host-specific reaches the key or the outputs. Its
identity in the key is the entry's digest (see toolstore.py), never a version
string.

A CUDA toolchain is composite: nvcc from its own entry, its `host_compiler` (the
gcc nvcc runs through -ccbin) exposed as host-cc / host-c++ and CUDAHOSTCXX, and
its `link_with` toolchain's cc / c++ / ar / ranlib as the default CC / CXX, so the
final link of a CUDA library can target glibc 2.17.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from buildgraph.compile_cache import COMPILER_NAMES, compiler_type
from buildgraph.digest import StatCache, value_digest
from buildgraph.signatures import host_programs
from buildgraph.toolstore import ROLE_NAMES, SANDBOX_TOOLCHAINS, Entry, ToolStore
from buildgraph.workspace import Toolchain

ROLE_ENV = {"cc": "CC", "cxx": "CXX", "ar": "AR", "ranlib": "RANLIB", "nm": "NM", "strip": "STRIP",
            "objcopy": "OBJCOPY", "ld": "LD", "nvcc": "CUDACXX"}


@dataclass(frozen=True)
class Mount:
    """A store entry an action needs: bound read-only at /toolchains/<name> (writable subdirs rw)."""

    name: str
    host: str
    writable: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedToolchain:
    name: str
    digest: str
    links: tuple[tuple[str, str], ...]   # name on PATH -> /toolchains/<entry>/bin/<name>
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    hermetic: bool
    # (name on PATH, program, ccache compiler type) of each compiler: what the compile cache wraps
    compilers: tuple[tuple[str, str, str], ...] = ()


def _entry_view(tc: Toolchain, entry: Entry, rename: dict[str, str] | None = None):
    """Links and env for one entry; `rename` maps roles to other names (host-cc)."""
    base = f"{SANDBOX_TOOLCHAINS}/{entry.name}"
    links, env = {}, {}
    roles = dict.fromkeys([r for r, _ in tc.tools] + [r for r, _ in tc.wrappers])
    for role in roles:
        name = ROLE_NAMES.get(role, role)
        exposed = (rename or {}).get(role, name)
        links[exposed] = f"{base}/bin/{name}"
        if rename is None and role in ROLE_ENV:
            env[ROLE_ENV[role]] = name
    if rename is None:
        if tc.cmake_toolchain:
            env["CMAKE_TOOLCHAIN_FILE"] = f"{base}/cmake/toolchain.cmake"
        for key, value in tc.env:
            env[key] = value.replace("{entry}", base)
    return links, env


class NotFetched(Exception):
    """A dry run needs a toolchain the store does not have (and may not fetch it)."""

    def __init__(self, tc: Toolchain):
        what = {"pypi": "from PyPI: " + " ".join(tc.requirements), "apt": "Debian packages: "
                + " ".join(p for p, _ in tc.packages)}.get(tc.provider, tc.provider)
        super().__init__(f"toolchain {tc.name} {tc.version} is not fetched ({what})")
        self.toolchain = tc

    def described(self, sizes: dict) -> str:
        """The message with what fetching it would download (asked once per toolchain: `sizes`)."""
        from buildgraph.toolstore import download_size

        tc = self.toolchain
        if tc.name not in sizes:
            sizes[tc.name] = download_size(tc)
        size = sizes[tc.name]
        return f"{self}, {size / 1e6:.1f} MB to download" if size is not None else f"{self}, size unknown"


class ToolchainResolver:
    """Resolves toolchains for one build against the store; fetches what is missing, unless
    `fetch` is off (dry runs: `plan`, `why`), when a missing one raises NotFetched."""

    def __init__(self, store: ToolStore, toolchains: dict[str, Toolchain], stat_cache: StatCache,
                 log=None, packages=None):
        """`packages(paths, names)`: hostpkgs.packages_digest, or a cached form of it."""
        from buildgraph import hostpkgs

        self.store, self.toolchains, self.stat_cache = store, toolchains, stat_cache
        self.packages = packages or hostpkgs.packages_digest
        self.log = log or (lambda message: print(f"buildgraph: {message}", file=sys.stderr))
        self._resolved: dict[str, ResolvedToolchain] = {}
        self._entries: dict[str, tuple[Entry, str]] = {}
        self.fetch = True

    def members(self, name: str) -> list[str]:
        """`name` and the toolchains it brings along (host compiler, linker)."""
        tc = self.toolchains[name]
        return [name] + [m for m in (tc.host_compiler, tc.link_with) if m]

    def sandbox_dir(self, name: str) -> str:
        """Where actions see toolchain `name`'s store entry."""
        return f"{SANDBOX_TOOLCHAINS}/{self._entry(name)[0].name}"

    def ensure(self, names) -> None:
        """Fetch every toolchain in `names` (and their members) that is not in the store yet."""
        for name in dict.fromkeys(m for n in names for m in self.members(n)):
            self._entry(name)

    def entry_if_resolved(self, name: str) -> Entry | None:
        """The store entry of toolchain `name` if this build has used it already."""
        found = self._entries.get(name)
        return found[0] if found is not None else None

    def _entry(self, name: str) -> tuple[Entry, str]:
        if name not in self._entries:
            tc = self.toolchains[name]
            entry = self.store.entry(tc)
            if entry is None:
                if not self.fetch:
                    raise NotFetched(tc)
                entry = self.store.fetch(tc, log=self.log)
            digest, changed = self.store.current_digest(entry, self.stat_cache)
            if changed:
                self.log(f"warning: toolchain {name}: {', '.join(changed[:3])} changed since it was "
                         f"fetched; keys follow the change (run `buildgraph toolchain verify {name}`)")
            self._entries[name] = (entry, digest)
        return self._entries[name]

    def resolve(self, name: str) -> ResolvedToolchain:
        if name in self._resolved:
            return self._resolved[name]
        tc = self.toolchains[name]
        entry, digest = self._entry(name)
        links, env, mounts, digests = {}, {}, [], []
        owners: dict[str, Toolchain] = {}   # entry name -> the toolchain it holds
        hermetic = True

        def member(m: str):
            """Toolchain `m` mounted and in the digest, once however many roles it plays."""
            nonlocal hermetic
            mtc = self.toolchains[m]
            m_entry, m_digest = self._entry(m)
            if all(mount.name != m_entry.name for mount in mounts):
                owners[m_entry.name] = mtc
                mounts.append(Mount(m_entry.name, str(m_entry.path), mtc.writable))
                digests.append([m, m_digest])
                digests.extend(self._packages(mtc, m_entry))
                hermetic = hermetic and mtc.provider != "host"
            return mtc, m_entry

        member(name)
        if tc.link_with:
            l_links, l_env = _entry_view(*member(tc.link_with))
            links.update(l_links)
            env.update(l_env)
        if tc.host_compiler:   # may be the linker too (CUDA on the portable clang)
            h_links, _ = _entry_view(*member(tc.host_compiler), rename={"cc": "host-cc", "cxx": "host-c++"})
            links.update({k: v for k, v in h_links.items() if k not in links})
            env["CUDAHOSTCXX"] = "host-c++"
        # The toolchain's own names fill what its members left: with a linker, the linker's
        # cc, c++, ar, ranlib (and its CMake file) are the defaults.
        own_links, own_env = _entry_view(tc, entry)
        for k, v in own_links.items():
            links.setdefault(k, v)
        linker_owned = ("CC", "CXX", "AR", "RANLIB", "CMAKE_TOOLCHAIN_FILE") if tc.link_with else ()
        env.update((k, v) for k, v in own_env.items() if k not in linker_owned)
        if tc.cuda:
            env["CUDA_HOME"] = f"{SANDBOX_TOOLCHAINS}/{entry.name}/install/{_cuda_home(tc)}"
        compilers = tuple((n, target, compiler_type(owners[target.split("/")[2]], COMPILER_NAMES[n]))
                          for n, target in sorted(links.items()) if n in COMPILER_NAMES)
        resolved = ResolvedToolchain(name=name, digest=value_digest(digests) if len(digests) > 1 else digest,
                                     links=tuple(sorted(links.items())), env=tuple(sorted(env.items())),
                                     mounts=tuple(mounts), hermetic=hermetic, compilers=compilers)
        self._resolved[name] = resolved
        return resolved


    def _packages(self, tc: Toolchain, entry: Entry) -> list:
        """For host and apt toolchains, which run the machine's files: the Debian packages those
        come from, closed over their dependencies (libc6-dev, libbinutils …), for the digest."""
        if tc.provider not in ("host", "apt"):
            return []
        paths = tuple(sorted(p for p, _ in entry.watch if p.startswith("/"))) if tc.provider == "host" else ()
        return [[f"{tc.name} packages", self.packages(paths, tuple(p for p, _ in tc.packages))[0]]]


def _cuda_home(tc: Toolchain) -> str:
    """The toolkit root: the directory above nvcc's bin/."""
    nvcc = dict(tc.tools).get("nvcc", "bin/nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) or "."


def host_tools(names: tuple[str, ...], stat_cache: StatCache, packages=None, host_files=None
               ) -> tuple[tuple[tuple[str, str], ...], str, tuple[str, ...]]:
    """The host programs actions may run, as (name, path) links; the digest of what they are
    (their contents, the Debian packages they come from with all those depend on, and the
    host files the sandbox shows); and the programs no package owns (not hermetic).
    `packages(paths, names)` is hostpkgs.packages_digest and `host_files()`
    sandbox.visible_host_files, or cached forms of them."""
    from buildgraph import hostpkgs
    from buildgraph.sandbox import visible_host_files

    links = [(name, path) for name, path in host_programs(names) if path is not None]
    pk_digest, unowned = (packages or hostpkgs.packages_digest)(tuple(sorted({p for _, p in links})), ())
    files = (host_files or visible_host_files)()
    digest = value_digest({"tools": sorted([n, stat_cache.digest(p)] for n, p in links), "packages": pk_digest,
                           "host_files": files})
    return tuple(links), digest, tuple(n for n, p in links if p in unowned)
