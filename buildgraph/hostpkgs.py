"""The Debian packages host programs come from, for the keys of actions that run them.

Host tools and host/apt toolchains are not copied into the toolchain store: an action
runs the machine's own files, and reads far more than the programs named — gcc reads
libc6-dev's headers and crt files, libgcc, binutils' libbfd. Hashing every such file
on every build is too slow and naming them by hand misses some, so their identity is
the dpkg database's: the packages owning the programs, closed over Depends, Pre-Depends
and Recommends (gcc-12 only recommends libc6-dev), each as (name, version, arch).
An upgrade of any of them changes every key that uses them.

What no package owns cannot be keyed this way: the sandbox hides /usr/local and all of
/etc but the loader's configuration (sandbox.py), and `plan` names host tools that no
package owns as not hermetic. Off Debian (no dpkg database) everything is reported so.

The closure is computed once per (dpkg status file signature, programs) and cached by
the caller (the workspace state), so a no-op build costs one stat; and in the local cache
(Engine.packages), so a new workspace's first build does not ask dpkg again either.
"""

from __future__ import annotations

import os
import re

from buildgraph.digest import value_digest

DPKG_ADMIN = "/var/lib/dpkg"
_FIELDS = ("Depends", "Pre-Depends", "Recommends")
_USRMERGE = (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/"), ("/usr/lib64/", "/lib64/"))


def status_signature(admin: str | None = None):
    """What must not change for a cached closure to stay valid (None: no dpkg database)."""
    admin = admin or DPKG_ADMIN
    try:
        st = os.stat(f"{admin}/status")
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def installed(admin: str | None = None) -> dict[str, dict]:
    """Installed packages: name -> {"version", "arch", "deps": [[alternatives...], ...], "provides"}."""
    admin = admin or DPKG_ADMIN
    packages = {}
    try:
        with open(f"{admin}/status", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    for stanza in text.split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if "Package" not in fields or not fields.get("Status", "").endswith(" installed"):
            continue
        deps = []
        for name in _FIELDS:
            for clause in filter(None, (c.strip() for c in fields.get(name, "").split(","))):
                deps.append([_bare(alt) for alt in clause.split("|")])
        packages[fields["Package"]] = {"version": fields.get("Version", ""), "arch": fields.get("Architecture", ""),
                                       "deps": deps,
                                       "provides": [_bare(p) for p in fields.get("Provides", "").split(",") if p.strip()]}
    return packages


def _bare(relation: str) -> str:
    """`libc6 (>= 2.34)` or `python3:any` -> the package name."""
    return re.split(r"[\s(:\[]", relation.strip(), maxsplit=1)[0]


def owners(paths, admin: str | None = None) -> dict[str, str | None]:
    """path -> the package that installed it (through its /usr-merged alias too), or None."""
    admin = admin or DPKG_ADMIN
    queries = {}
    for p in paths:
        queries[p] = [p] + [alias + p[len(usr):] for usr, alias in _USRMERGE if p.startswith(usr)]
    wanted = sorted({q for qs in queries.values() for q in qs})
    found: dict[str, str] = {}
    if wanted and os.path.isdir(admin):
        import subprocess   # not at the top: the no-op check needs only status_signature

        out = subprocess.run(["dpkg-query", f"--admindir={admin}", "-S", *wanted],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            pkgs, sep, path = line.partition(": ")
            if sep and not line.startswith("diversion "):
                found[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    return {p: next((found[q] for q in qs if q in found), None) for p, qs in queries.items()}


def closure(roots, packages: dict[str, dict]) -> list[list[str]]:
    """[[name, version, arch], ...] of `roots` and every installed package they depend on
    (Depends, Pre-Depends, Recommends; every installed alternative; virtual names through
    Provides), sorted."""
    providers: dict[str, list[str]] = {}
    for name, info in packages.items():
        for virtual in info["provides"]:
            providers.setdefault(virtual, []).append(name)
    seen: set[str] = set()
    todo = [r for r in roots if r in packages]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for alternatives in packages[name]["deps"]:
            for alt in alternatives:
                todo.extend(n for n in ([alt] if alt in packages else providers.get(alt, [])) if n not in seen)
    return sorted([n, packages[n]["version"], packages[n]["arch"]] for n in seen)


def packages_digest(paths=(), package_names=(), admin: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(digest of the package closure of `paths`' owners and `package_names`, the paths no
    package owns)."""
    owned = owners(paths, admin) if paths else {}
    roots = set(package_names) | {p for p in owned.values() if p}
    return value_digest(closure(sorted(roots), installed(admin))), tuple(sorted(p for p, o in owned.items() if o is None))
