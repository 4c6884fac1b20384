"""Stat signatures of what configures a build: the workspace's files, buildgraph's own
code, and the host facts an action can observe.

Light on purpose (os and the digest helpers only): the no-op check (noop.py) calls
these before anything else is imported, and the engine calls the same functions, so
both always look at the same things.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from buildgraph.client import code_signature
from buildgraph.digest import is_racy, stat_signature

BUILD_FILE = "BUILD.yaml"

# Host files the sandbox shows its actions, keyed in the host tools' digest (sandbox.py).
KEYED_ETC = ("/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives")


def find_root(start: Path):
    """The nearest directory at or above `start` holding BUILD.yaml, or None."""
    start = Path(start).resolve()
    for d in (start, *start.parents):
        if os.path.isfile(f"{d}/{BUILD_FILE}"):
            return d
    return None


def workspace_files(root: Path) -> list[Path]:
    """Every file that defines the workspace, in load order."""
    files = [root / BUILD_FILE]
    for sub in ("toolchains", "deps"):
        d = root / sub
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml")))
    return files


def files_signature(root: Path, read: tuple[str, ...] = ()) -> tuple | None:
    """The stat signatures of every workspace file and of the directories that list them
    (a file added or removed), and of the code that configured them; or None while one is
    too young to trust (racy)."""
    sig = [code_signature()]
    now = time.time_ns()
    for d in (root / "toolchains", root / "deps"):
        try:
            st = os.stat(d)
        except OSError:
            sig.append(None)
            continue
        if is_racy(st, now):
            return None
        sig.append(stat_signature(st))
    for f in dict.fromkeys([*workspace_files(root), *(root / r for r in read)]):
        try:
            st = os.stat(f)
        except OSError:   # a file the last configuration read is gone
            return None
        if is_racy(st, now):
            return None
        sig.append((str(f), *stat_signature(st)))
    return tuple(sig)


def visible_host_signature():
    """What must not change for sandbox.visible_host_files() to be reused: the stat signature
    of every KEYED_ETC path and of everything under it (a file edited in place moves its own
    signature but not its directory's), or None while one is too young to trust."""
    sig, racy = tree_signature(KEYED_ETC)
    return None if racy else sig


def tree_signature(paths) -> tuple[tuple, bool]:
    """(path, mode, stat signature) of each of `paths` and of every file and directory under
    those that are directories, by lstat (absent: (path, None)); and whether any of it is
    racy. Links inside are not statted: a link cannot change in place, and replacing,
    adding or removing one moves its directory's signature (387 of /etc/alternatives' 390
    entries are links: 0.3 ms instead of 2 ms)."""
    seen: list = []
    now = time.time_ns()
    racy = False
    pending = list(reversed(paths))
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except OSError:
            seen.append((path, None))
            continue
        racy = racy or is_racy(st, now)
        seen.append((path, st.st_mode, *stat_signature(st)))
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    pending.extend(sorted((e.path for e in entries if not e.is_symlink()), reverse=True))
            except OSError:
                seen.append((path, "unreadable"))
    return tuple(seen), racy


def host_programs(names) -> tuple[tuple[str, str | None], ...]:
    """(name, real path or None) of each host tool, as PATH finds it. A name may be an absolute
    path, which picks one program where PATH would find another (a pyenv shim in a home directory,
    which the sandbox does not show)."""
    found = []
    for name in names:
        path = shutil.which(name)
        found.append((os.path.basename(name), os.path.realpath(path) if path is not None else None))
    return tuple(found)


def kernel_release() -> str:
    return os.uname().release


def pin_cpu_affinity() -> None:
    """Let this process (and so every action) use every CPU of the machine: the CPUs an
    action sees (nproc) must not depend on how buildgraph was started (taskset)."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (OSError, AttributeError):   # a cpuset that forbids it: what we have is what actions get
        pass


def host_values() -> dict[str, str]:
    """The host properties a workspace's `host_key` may name, as actions see them."""
    pin_cpu_affinity()
    return {"kernel": kernel_release(), "cpus": str(len(os.sched_getaffinity(0)))}


def sandbox_facts(requested: str) -> tuple:
    """What decides which sandbox `detect_mode(requested)` picks, short of running it: the
    programs it would probe (by path and stat), who we are, and the kernel's switches for
    user namespaces. Equal facts, equal choice: the probe runs once per cache directory."""
    if requested != "auto":
        return (requested,)
    facts: list = [requested, os.getuid(), kernel_release()]
    for program in ("bwrap", "unshare"):
        found = shutil.which(program)
        try:
            facts.append((program, found, stat_signature(os.stat(found)) if found else None))
        except OSError:
            facts.append((program, found, None))
    for switch in ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces"):
        try:
            with open(switch) as f:
                facts.append(f.read().strip())
        except OSError:
            facts.append(None)
    return tuple(facts)
