"""Run one action in a fresh directory that holds only its declared inputs.

Layout, seen by the action at the fixed root /sandbox when bubblewrap is used
(so paths embedded in outputs are the same on every machine and in every run):
  /sandbox/src          the declared sources, read-only
  /sandbox/deps/<name>  each dependency's outputs, read-only
  /sandbox/out          the output root ($OUT); everything in it must be declared
  /sandbox/work         the working directory ($WORK), scratch
  /sandbox/tmp, /sandbox/home   TMPDIR and HOME (in memory under bwrap)
  /sandbox/.tools/bin   PATH: links to the toolchain and the declared host tools,
                        one directory per distinct tool set, shared by the build
  /toolchains/<entry>   each toolchain store entry the action uses, read-only (its
                        declared writable subdirectories, e.g. zig's cache, read-write)
Isolation modes, strongest available first (`auto`):
  bwrap    bubblewrap: new mount/pid/ipc/uts/net namespaces; the host's /usr
           read-only but not /usr/local (no package owns it, so no key could follow
           it), of /etc only the loader's configuration and the alternatives links
           (their contents are in the host tools' digest), a passwd and group of our
           own; nothing else of the host (no workspace, no home);
  unshare  `unshare -n`: no network; sandbox paths are host paths;
  none     a plain child process (still a scrubbed env and a fresh directory).
The real directory lives under the cache's sandbox/, on the cache's filesystem,
so outputs enter the CAS by rename. Under bwrap /sandbox itself is a tmpfs and
only src, deps, out and work come from disk: directory operations are the
largest part of the per-action overhead on slow filesystems, so each action
makes as few as it can. Inputs are hardlinked under bwrap (the mount
is read-only) and copied otherwise (a root process could write through a link).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from buildgraph import mountns, sandbox_etc
from buildgraph.action import (Action, ActionResult, BadResult, OutputFile, OutputSymlink, check_declared,
                               check_symlink, check_tree)
from buildgraph.digest import copy_hashed, file_digest, stat_signature
from buildgraph.fsutil import empty_for_reuse, force_remove, make_dir, make_dirs, remembered, walk_tree
from buildgraph.store.local import LocalStore
from buildgraph.sources import SourceError
from buildgraph.signatures import KEYED_ETC, sandbox_facts
from buildgraph.toolstore import SANDBOX_TOOLCHAINS

SANDBOX_ROOT = "/sandbox"
# Every action runs with this umask, whatever the user's: file modes in outputs (tar
# archives, installed files) must not depend on who started the build.
PINNED_UMASK = 0o022
_BOUND_PREFIXES = ("/usr/", "/bin/", "/lib/", "/lib64/", "/sbin/")


def visible_host_files() -> list:
    """[path, content digest] or [path, "->", link target] of the files under KEYED_ETC."""
    out = []
    for top in KEYED_ETC:
        paths = [top] if not os.path.isdir(top) else sorted(os.path.join(top, n) for n in os.listdir(top))
        for p in paths:
            if os.path.islink(p):
                out.append([p, "->", os.readlink(p)])
            elif os.path.isfile(p):
                out.append([p, file_digest(p)])
    return out


def detect_mode(requested: str = "auto", cache_dir=None) -> str:
    """The isolation mode to use: `requested`, or the strongest that works here. With a
    `cache_dir`, the probe's answer is kept there with the facts it depends on
    (signatures.sandbox_facts) and reused while they hold: a probe costs a process or two."""
    if requested != "auto":
        return requested

    def probe() -> str:
        if shutil.which("bwrap") and _probe(["bwrap", "--ro-bind", "/", "/", "--unshare-net", "true"]):
            return "bwrap"
        if shutil.which("unshare") and _probe(["unshare", "-n", "true"]):
            return "unshare"
        return "none"
    if cache_dir is None:
        return probe()
    return remembered(os.path.join(cache_dir, "sandbox-mode.json"), sandbox_facts(requested), probe,
                      lambda mode: mode in ("bwrap", "unshare", "none"))


def _probe(argv) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# Sandboxes started ahead of the actions that will run in them (Sandbox._take_spare).
SPARES_PER_MOUNT_SET = 2
SPARES_AT_MOST = 4
# An action's stdout and stderr, beside its tree's subdirectories (kept, emptied, for the next).
_LOGS = (".stdout", ".stderr")


@dataclass
class _Spare:
    root: str                 # the sandbox tree its mounts are of
    proc: subprocess.Popen    # bwrap, its shell waiting on `feed`
    feed: int                 # the write end of the pipe the command comes through; -1 once closed
    netns: int | None         # the pooled network namespace it runs in (netns.py), or its own


@dataclass
class RunOutcome:
    result: ActionResult | None   # None when the action failed
    error: str | None             # why it failed, one line
    log: str                      # stdout+stderr tail, for failures
    duration: float
    note: str = ""                # said to the user about a success (how it was obtained)
    missing: tuple | None = None  # the outputs differ from what is declared: those not produced
    phases: tuple = ()            # (name, monotonic start, seconds): stage, run, collect (--profile)


def unmapped(value: str, root: str | None, mounts) -> str:
    """`value` with the symbolic /toolchains/<entry> paths, and /sandbox unless `root` is None,
    made real host paths."""
    if root is not None:
        value = value.replace(SANDBOX_ROOT, root)
    for m in mounts:
        value = value.replace(f"{SANDBOX_TOOLCHAINS}/{m.name}", m.host)
    return value


# The variables buildgraph sets to sandbox paths (with DEP_*, a prefix users may not set):
# outside bwrap their /sandbox paths are mapped to where the sandbox really is. A user's
# value is never rewritten (only toolchain entry paths, which no user value can know).
_PATH_VARS = frozenset(("HOME", "TMPDIR", "PATH", "SRC", "OUT", "WORK", "DEPS", "DEPS_PREFIX_PATH", "SOURCE"))


def sandbox_env(action: Action, mapped_root: str, mounts=()) -> dict[str, str]:
    """The action's environment as it runs: symbolic paths mapped where they really are."""
    if mapped_root == SANDBOX_ROOT:
        return dict(action.env)
    return {k: unmapped(v, mapped_root if k in _PATH_VARS or k.startswith("DEP_") else None, mounts)
            for k, v in action.env}


class Sandbox:
    def __init__(self, store: LocalStore, mode: str, jobserver=None, sources=None,
                 inner_root: str = SANDBOX_ROOT, umask: int | None = None, reverse_env: bool = False,
                 compile_cache=None, debug: bool = False):
        """`inner_root`, `umask` and `reverse_env` exist to perturb a second run (repro.verify):
        the path the action sees, the file mode mask, and the order of its environment.
        `compile_cache`: a compile_cache.CompileCache for the actions that compile (bwrap only).
        `debug` (--sandbox-debug): a failed action's kept sandbox gets an enter.sh."""
        self.debug = debug
        self.store = store
        self.compile_cache = compile_cache if mode == "bwrap" else None
        self.inner_root, self.umask, self.reverse_env = inner_root, umask, reverse_env
        self.sources = sources   # a SourceStore: upstream trees, fetched when an action needs one
        self.mode = mode
        self.jobserver = jobserver
        self._running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._tool_dirs: dict[tuple, str] = {}
        # Under bwrap, /sandbox/tmp and /sandbox/home are on the sandbox's own tmpfs.
        self._subdirs = ("src", "deps", "out", "work") if mode == "bwrap" else \
            ("src", "deps", "out", "work", "tmp", "home")
        self._free_roots: list[str] = []        # emptied trees of finished actions (_give_back)
        self._etc: tuple[str, bool] | None = None   # (its /etc, whether this build's own): _etc_dir
        self._to_clear: queue.Queue = queue.Queue()   # (path, whether a tree) for the janitor
        self._janitor: threading.Thread | None = None
        self._closed = False
        self._kept_failed: bool | None = None   # whether failed/ held anything when first looked at
        self._bwrap = (shutil.which("bwrap") or "bwrap") if mode == "bwrap" else None
        self._maker: str | None = None   # what runs bwrap's command lines: _sandbox_maker
        if mode == "bwrap":   # before this thread starts the sandbox's threads (they inherit it)
            mountns.trim()    # a served build's namespace: less for each bwrap to read
        self._spares: dict[tuple, list[_Spare]] = {}   # sandboxes started ahead, per mount set
        self._to_spawn: queue.Queue = queue.Queue()   # mount sets wanting a spare, for the spawner
        self._spawner: threading.Thread | None = None
        self.first_mount_set = None   # the mount set of the first action that could use a spare
        self._spawning = None   # the mount set the spawner is starting a spare for now
        self._spawned = threading.Condition(self._lock)   # notified when that start is over
        self._netns = None   # a netns.NetnsPool, made on the first bwrap started (_take_netns)
        self._netns_tried = False
        self.cancelled = False

    # ------------------------------------------------------------ public

    def run(self, action: Action, dep_results: dict[str, ActionResult], tools) -> RunOutcome:
        """Stage, run and collect one action. Never raises for a failing action."""
        start = time.monotonic()
        phases: list[tuple[str, float, float]] = []

        def phase(name: str, began: float) -> float:
            now = time.monotonic()
            phases.append((name, began, now - began))
            return now

        def outcome(result, error, log, **extra) -> RunOutcome:
            return RunOutcome(result, error, log, time.monotonic() - start, phases=tuple(phases), **extra)
        recollected = self._recollect(action)
        if recollected is not None:
            return recollected
        spare = self._take_spare(action, tools)
        root = spare.root if spare is not None else self._take_root()
        try:
            try:
                self._stage(root, action, dep_results, tools)
                source_tree = self._stage_source(root, action)
            except (OutputError, SourceError) as exc:
                return outcome(None, str(exc), "")
            began = phase("stage", start)
            if action.commands[:1] and action.commands[0].startswith("builtin:artifact"):
                ran = self._run_artifact(root, action, tools, start)
                phase("run", began)
                return replace(ran, phases=tuple(phases))
            binding = None
            if self._compiles(action):
                binding = self.compile_cache.bind(action.toolchain[1], f"{self.inner_root}/.tools/bin")
            code = self._execute(root, action, tools, source_tree, binding, spare)
            began = phase("run", began)
            log = _tail(f"{root}/.stdout") + _tail(f"{root}/.stderr")
            if self.cancelled:
                return outcome(None, "interrupted", log)
            enter = (tools, source_tree, binding)
            if code != 0:
                what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                kept = self._keep_failed(root, action, enter=enter)
                return outcome(None, f"command failed ({what}){kept}", log)
            try:
                result = self._collect(root, action, time.monotonic() - start)
            except OutputError as exc:
                phase("collect", began)
                kept = self._keep_failed(root, action, collectable=True, duration=time.monotonic() - start,
                                         enter=enter)
                return outcome(None, f"{exc}{kept}", log, missing=exc.missing)
            phase("collect", began)
            return outcome(result, None, log)
        finally:
            if spare is not None:
                self._end_spare(spare)
            if os.path.exists(root):   # not kept as a failed action's
                self._give_back(root)

    def _keep_failed(self, root: str, action: Action, collectable: bool = False, duration: float = 0.0,
                     enter=None) -> str:
        """Keep a failed action's sandbox (its work/ and out/: what an hour of compiling produced)
        as CACHE_DIR/failed/<node>, replacing the node's previous one; the words that say where.
        `cache gc` removes them. `collectable`: every command succeeded and only the output
        check failed, so a fix to the declared outputs alone can collect out/ from here
        (`_recollect`) instead of running the commands again."""
        kept = f"{self.store.root}/failed/{action.node}"
        try:
            if collectable:
                record = {"run_key": action.run_key, "out": _tree_listing(f"{root}/out"), "duration": duration}
                with open(f"{root}/{RECOLLECT}", "w") as f:
                    json.dump(record, f)
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            force_remove(kept)
            os.rename(root, kept)
            if self.debug and enter is not None:
                return f"; its sandbox is kept; enter it with: sh {self._write_enter(kept, action, *enter)}"
        except OSError:
            return ""
        return f"; its sandbox is kept in {kept}"

    def _write_enter(self, kept: str, action: Action, tools, source_tree, binding) -> str:
        """KEPT/enter.sh: a shell in a kept sandbox as its commands saw it (the same mounts under
        bwrap, environment, tools and working directory); arguments go to that shell
        (`sh enter.sh -c 'make -C src'`). The build's own tools and /etc directories go when it
        ends, so copies of them stay in KEPT/.enter/."""
        import shlex

        argv, mapped = self._argv(kept, action, tools, source_tree, binding, shell=True)
        per_build = [(self.tools_dir(tools, action.compilers if binding else ()), "tools")]
        if self.mode == "bwrap":
            per_build.append((self._etc_dir(), "etc"))
        else:   # outside bwrap the sandbox's .tools is a link to the build's directory
            os.remove(f"{kept}/.tools")
            os.symlink(".enter/tools", f"{kept}/.tools")
        for path, name in per_build:
            shutil.copytree(path, f"{kept}/.enter/{name}", symlinks=True)
            argv = [f"{kept}/.enter/{name}" if a == path else a for a in argv]
        env = self._env(action, mapped, tools, binding)
        script = (f"#!/bin/sh\n# A shell in {action.node}'s failed sandbox (buildgraph --sandbox-debug).\n"
                  f"cd {shlex.quote(kept)}/work || exit 1\n"
                  f"exec env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in sorted(env.items()))} \\\n"
                  f"  {' '.join(map(shlex.quote, argv))} \"$@\"\n")
        path = f"{kept}/enter.sh"
        with open(path, "w") as f:
            f.write(script)
        os.chmod(path, 0o755)
        return path

    def _recollect(self, action: Action) -> RunOutcome | None:
        """The outputs of this node's kept failed sandbox, when its commands succeeded there,
        the action differs from that one only in its declared outputs, and out/ is as the
        commands left it (nothing touched while it was inspected); else None: run."""
        failed = f"{self.store.root}/failed"
        if self._kept_failed is None:   # what this build keeps, it does not collect again
            self._kept_failed = os.path.isdir(failed) and bool(os.listdir(failed))
        if not self._kept_failed:
            return None
        kept = f"{failed}/{action.node}"
        try:
            with open(f"{kept}/{RECOLLECT}") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        if record.get("run_key") != action.run_key or record.get("out") != _tree_listing(f"{kept}/out"):
            return None
        try:
            result = self._collect(kept, action, float(record.get("duration", 0.0)))
        except OutputError:
            return None   # still not what it declares: run it, and keep the new sandbox
        force_remove(kept)
        return RunOutcome(result, None, "", result.duration,
                          note=f"collected from {kept}, its failed run's sandbox (only the declared outputs changed)")

    def cancel_all(self) -> None:
        """Stop every running action (SIGTERM, then SIGKILL after 2 s)."""
        self.cancelled = True
        with self._lock:
            procs = list(self._running.values())
        for p in procs:
            _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(p, signal.SIGKILL)

    # ------------------------------------------------------------ stages

    def tools_dir(self, tools, compilers=()) -> str:
        """A directory of links named as the action sees its tools; one per tool set and build.

        `tools` is (links, mounts) from Engine.tools_for. Under bwrap the links keep their
        /toolchains/<entry> targets (the entries are mounted there); otherwise they point
        at the entries' host paths. With `compilers` (the compile cache on), those names
        are ccache shims instead, and the CMake launcher is there too (compile_cache.py).
        """
        links, mounts = tools
        with self._lock:
            path = self._tool_dirs.get((tools, compilers))
            if path is None:
                path = f"{self.store.sandboxes}/tools-{os.getpid()}-{len(self._tool_dirs)}"
                make_dirs(f"{path}/bin")
                if self.mode != "bwrap":   # toolchains at their real paths
                    links = tuple((name, unmapped(target, SANDBOX_ROOT, mounts)) for name, target in links)
                fill_tools_dir(f"{path}/bin", links, compilers, f"{self.inner_root}/.tools/bin")
                self._tool_dirs[(tools, compilers)] = path
            return path

    def _etc_dir(self) -> str:
        """The sandbox's /etc (sandbox_etc.py): one look at the host's files per build."""
        with self._lock:
            if self._etc is None:
                self._etc = sandbox_etc.etc_dir(str(self.store.etc), self.store.temp_path())
            return self._etc[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        if self._spawner is not None:
            self._to_spawn.put(None)
            self._spawner.join()
            self._spawner = None
        with self._lock:
            spares = [sp for group in self._spares.values() for sp in group]
            self._spares.clear()
        for spare in spares:   # all killed first: their namespaces are torn down together
            _killpg(spare.proc, signal.SIGKILL)
        for spare in spares:
            self._end_spare(spare)
            force_remove(spare.root)
        if self._janitor is not None:   # the trees it still holds are emptied or gone first
            self._to_clear.put(None)
            self._janitor.join()
            self._janitor = None
        if self._etc is not None and self._etc[1]:   # this build's own copy
            force_remove(self._etc[0])
        self._etc = None
        for path in [*self._tool_dirs.values(), *self._free_roots]:
            force_remove(path)
        self._tool_dirs.clear()
        self._free_roots.clear()
        if self._netns is not None:   # every sandbox has ended: none is in one
            self._netns.close()
            self._netns = None

    def _take_root(self) -> str:
        """An action's sandbox tree, its subdirectories empty: one a finished action left, or new."""
        with self._lock:
            if self._free_roots:
                return self._free_roots.pop()
        return self._new_root()

    def _new_root(self) -> str:
        root = f"{self.store.sandboxes}/{os.getpid()}-{time.monotonic_ns()}-{os.urandom(3).hex()}"
        make_dir(root)
        for sub in self._subdirs:
            make_dir(f"{root}/{sub}")
        return root

    def _root_ahead(self) -> None:
        """On the janitor thread: a new tree for the next action, in place of one that could
        not be reused, made while the actions run. Directories are most of what it costs to
        start an action without bwrap (on this disk, py-spy: ~3 ms of an action's ~6 ms)."""
        try:
            root = self._new_root()
        except OSError:
            return   # the next action makes its own, and says why if it cannot
        with self._lock:
            if not self._closed:   # one for each taken: as many as actions run at once
                self._free_roots.append(root)
                return
        force_remove(root)

    def _give_back(self, root: str) -> None:
        """A finished action's tree, handed to the janitor thread (_clear_trees): the action's
        outcome, and the next action's start, do not wait for it to be emptied."""
        self._to_janitor((root, True))

    def remove_later(self, path: str) -> None:
        """Remove `path` on the janitor thread, before close() returns: a replaced out/<node>,
        off the path from one action of a chain to the next."""
        self._to_janitor((path, False))

    def _to_janitor(self, item: tuple[str, bool]) -> None:
        with self._lock:
            if self._closed:   # nobody would wait for the thread
                force_remove(item[0])
                return
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._clear_trees, name="bg-sandbox-janitor", daemon=True)
                self._janitor.start()
        self._to_clear.put(item)

    def _clear_trees(self) -> None:
        """The janitor: each finished action's tree emptied for the next action under bwrap,
        else removed and a new one made for the next (_root_ahead); and each path given to
        remove_later removed; until close() sends None.

        Emptying it in place takes a fifth of the time of removing it and making another
        (1.1 ms here, as long as a short action runs). Only under bwrap: there the action's
        pid namespace ended every process it started, so nothing can still write into the
        tree; without one, a process that left its session could, into the next action's."""
        while (item := self._to_clear.get()) is not None:
            root, tree = item
            try:
                if tree and self.mode == "bwrap" and empty_for_reuse(root, self._subdirs, _LOGS):
                    with self._lock:
                        self._free_roots.append(root)
                else:
                    force_remove(root)
                    if tree:
                        self._root_ahead()
            finally:
                self._to_clear.task_done()

    # ------------------------------------------------------------ spares

    def _take_spare(self, action: Action, tools) -> _Spare | None:
        """A bwrap sandbox started ahead for this action's mounts, or None; and another asked
        of the spawner thread for the next action like it. Starting bwrap (namespaces, /proc,
        /dev, the mounts: ~5 ms here) is most of an action's overhead; a spare pays it while
        the action before runs. Each spare runs one action, as the sandbox started for an
        action without one does (_execute_in_bwrap): the same namespaces, mounts, pids and
        shell, nothing left by another action. Not for
        actions that mount more than their tools (an upstream source, the compile cache) nor
        for built-in ones."""
        if self.mode != "bwrap" or action.source_fetch is not None or self._compiles(action) \
                or action.commands[:1] and action.commands[0].startswith("builtin:"):
            return None
        key = (tools, action.jobserver == "fifo")
        with self._lock:
            if self._closed or self.cancelled:
                return None
            # One being started is as good: it is further along than one started now would be.
            while self._spawning == key and not self._spares.get(key):
                self._spawned.wait()
            spares = self._spares.get(key)
            spare = spares.pop(0) if spares else None
            if self.first_mount_set is None:
                self.first_mount_set = key
        self._ask_spare(key)
        return spare

    def prime(self, mount_set) -> None:
        """Start a spare for `mount_set` (a first_mount_set of an earlier build) now, before
        any action asks for one. A build's first action otherwise starts its own sandbox
        (~10 ms here, a tenth of a one-leaf change); one started while the build computes
        what to run is ready when it comes. Started here, not by the spawner thread: that
        thread would wait for the interpreter lock while this one computes. A guess: if no
        action takes it, close() ends it."""
        if self.mode != "bwrap" or mount_set is None:
            return
        try:
            spare = self._new_spare(mount_set)
        except Exception:   # noqa: BLE001 — a hint of another shape (an older version's, damaged): no guess
            return
        if spare is not None:
            with self._lock:
                self._spares.setdefault(mount_set, []).append(spare)

    def _new_spare(self, key) -> _Spare | None:
        """A spare for mount set `key` on a tree of its own; None if bwrap cannot be started.
        Whatever it raises, its tree is gone."""
        root = self._take_root()
        try:
            return self._spawn(root, *key)
        except BaseException as exc:
            force_remove(root)
            if isinstance(exc, OSError):
                return None
            raise

    def _ask_spare(self, key) -> None:
        """Have the spawner thread start a spare for `key` (if it has fewer than it keeps)."""
        with self._lock:
            if self._closed or self.cancelled:
                return
            if self._spawner is None:
                self._spawner = threading.Thread(target=self._spawn_spares, name="bg-sandbox-spawner", daemon=True)
                self._spawner.start()
        self._to_spawn.put(key)

    def _compiles(self, action: Action) -> bool:
        """Whether the action runs with the compile cache bound (its compilers come with a toolchain)."""
        return self.compile_cache is not None and bool(action.compilers)

    def _spawn_spares(self) -> None:
        """The spawner: one spare at a time for each mount set asked for, until close() sends None."""
        while (key := self._to_spawn.get()) is not None:
            with self._lock:
                if len(self._spares.get(key, ())) >= SPARES_PER_MOUNT_SET \
                        or sum(map(len, self._spares.values())) >= SPARES_AT_MOST:
                    continue
                self._spawning = key
            spare = None
            try:
                spare = self._new_spare(key)
            finally:   # in one step with the end of _spawning: an action waiting on it finds the spare
                with self._lock:
                    self._spawning = None
                    self._spawned.notify_all()
                    kept = spare is not None and not (self._closed or self.cancelled)
                    if kept:
                        self._spares.setdefault(key, []).append(spare)
            if spare is not None and not kept:   # the build ended, or was cancelled, while it started
                self._end_spare(spare)
                force_remove(spare.root)

    def _spawn(self, root: str, tools, jobserver_fifo: bool, compilers=(), source_tree: str | None = None,
               binding=None) -> _Spare:
        """bwrap with the mounts of an action on `root`, its shell waiting to read from its
        stdin, a pipe, the program it then runs (_start_in)."""
        netns = self._take_netns()
        argv = self._bwrap_argv(root, tools, compilers, source_tree, binding, jobserver_fifo, own_net=netns is None)
        argv[0] = self._sandbox_maker()
        fds = self.jobserver.child_fds if self.jobserver is not None else ()
        feed_r, feed_w = os.pipe()
        try:
            with open(f"{root}/.stdout", "wb") as out, open(f"{root}/.stderr", "wb") as err, \
                    self._entered(netns):
                proc = subprocess.Popen(argv + ["/bin/sh", "-c", ". /dev/stdin"], env={}, cwd=f"{root}/work",
                                        stdin=feed_r, stdout=out, stderr=err, start_new_session=True,
                                        pass_fds=fds, umask=self.umask if self.umask is not None else PINNED_UMASK)
        except OSError:
            os.close(feed_w)
            self._give_netns(netns)
            raise
        finally:
            os.close(feed_r)
        with self._lock:
            self._running[proc.pid] = proc
            cancelled = self.cancelled   # cancel_all may have looked at _running before it was there
        if cancelled:
            _killpg(proc, signal.SIGKILL)
        return _Spare(root, proc, feed_w, netns)

    def _start_in(self, spare: _Spare, commands: tuple[str, ...], env: dict[str, str]) -> bool:
        """Have the spare's shell run the action's `commands` with exactly `env` and stdin
        /dev/null opened as a started one has it (_program). False if the spare is gone
        (killed while it waited)."""
        if spare.proc.poll() is not None:
            # Gone already (killed while it waited): fed anyway, its shell could live on a
            # moment (bwrap's --die-with-parent is a signal) and run the commands in a
            # sandbox whose end reads as the action's.
            self._end_spare(spare)
            return False
        data = os.fsencode(_program(commands, env))
        try:
            while data:
                data = data[os.write(spare.feed, data):]
        except OSError:
            self._end_spare(spare)
            return False
        finally:
            self._close_feed(spare)
        return True

    def _close_feed(self, spare: _Spare) -> None:
        if spare.feed >= 0:
            os.close(spare.feed)
            spare.feed = -1

    def _end_spare(self, spare: _Spare) -> None:
        """Stop a spare that has not run its action (nothing if it has) and wait for it."""
        if spare.feed >= 0:
            self._close_feed(spare)
            _killpg(spare.proc, signal.SIGKILL)
        spare.proc.wait()
        with self._lock:
            self._running.pop(spare.proc.pid, None)
        self._give_netns(spare.netns)
        spare.netns = None

    def _sandbox_maker(self) -> str:
        """bwrap, or where it can run, our sandboxer for the same command line (sandboxer.py)."""
        with self._lock:
            if self._maker is None:   # imported here: only a build that starts bwrap needs it
                from buildgraph import sandboxer
                from buildgraph.locations import programs_dir

                self._maker = sandboxer.program(str(programs_dir())) or self._bwrap
            return self._maker

    def _take_netns(self) -> int | None:
        """A pooled network namespace for a bwrap about to start (netns.py), or None: where
        none can be had, bwrap makes its own (--unshare-net)."""
        if self.mode != "bwrap":
            return None
        with self._lock:
            if not self._netns_tried:   # imported here: only a build that starts bwrap needs it
                from buildgraph.netns import NetnsPool

                self._netns_tried = True
                self._netns = NetnsPool.make()
            pool = self._netns
        if pool is None:
            return None
        try:
            return pool.take()
        except OSError:
            return None

    def _give_netns(self, netns: int | None) -> None:
        if netns is not None and self._netns is not None:
            self._netns.give(netns)

    def _entered(self, netns: int | None):
        return self._netns.entered(netns) if netns is not None else contextlib.nullcontext()

    def _stage(self, root: str, action: Action, dep_results, tools) -> None:
        linking = self.mode == "bwrap"
        if not linking:
            os.symlink(self.tools_dir(tools), f"{root}/.tools")
        _copy_in(f"{root}/src", ((rel, host, digest, exe) for (rel, digest, exe), host
                                 in zip(action.srcs, action.src_paths)))
        for dep_target, _ in action.deps:
            base = f"{root}/deps/{dep_target}"
            make_dir(base)
            # Under bwrap deps/ is bound read-only, so nothing can write through a hardlink.
            self.store.lay_out(dep_results[dep_target], base, link=linking)

    def _run_artifact(self, root: str, action: Action, tools, start: float) -> RunOutcome:
        """The built-in artifact action: in-process, on the staged dependency outputs, with its
        toolchain's objcopy and runtime licences found through the toolchain mounts."""
        from pathlib import Path

        from buildgraph import artifact

        links, mounts = tools
        spec = json.loads(action.commands[1])
        objcopy = dict(links).get("objcopy")
        toolbox = artifact.Toolbox(objcopy=objcopy and unmapped(objcopy, None, mounts),
                                   licenses={r: unmapped(p, None, mounts)
                                             for r, p in spec.get("runtime_licenses", {}).items()},
                                   env={k: unmapped(v, root, mounts) for k, v in action.env})
        for name in _LOGS:
            open(f"{root}/{name}", "w").close()
        try:
            artifact.build(spec, Path(f"{root}/deps"), Path(f"{root}/out"), toolbox)
            result = self._collect(root, action, time.monotonic() - start)
        except (artifact.ArtifactError, OutputError) as exc:
            return RunOutcome(None, str(exc), "", time.monotonic() - start)
        return RunOutcome(result, None, "", time.monotonic() - start)

    def _stage_source(self, root: str, action: Action) -> str | None:
        """Make the upstream tree available: returns a tree for bwrap to mount read-only at
        /sandbox/source, or None when it was copied into the sandbox (or there is none)."""
        fetch = action.source_fetch
        if fetch is None:
            return None
        if isinstance(fetch, tuple):   # a workspace `path` source: copied, and checked against its key
            _copy_in(f"{root}/source", fetch)
            return None
        tree = str(self.sources.get(fetch))
        if self.mode == "bwrap":
            return tree
        shutil.copytree(tree, f"{root}/source", symlinks=True)
        return None

    def _argv(self, root: str, action: Action, tools, source_tree: str | None = None,
              binding=None, shell: bool = False) -> tuple[list[str], str]:
        """The command line of the action in the sandbox at `root`, and the path the sandbox is
        seen at. `shell`: an interactive /bin/sh there instead (--sandbox-debug's enter.sh):
        with the terminal (no new session) and without this build's jobserver."""
        script = ["/bin/sh"] if shell else _command(action.commands)
        if self.mode == "bwrap":
            compilers = action.compilers if binding else ()
            jobserver_fifo = action.jobserver == "fifo" and not shell
            return self._bwrap_argv(root, tools, compilers, source_tree, binding, jobserver_fifo,
                                    shell) + script, self._seen_at(root)
        if self.mode == "unshare":
            return [shutil.which("unshare") or "unshare", "-n", "--"] + script, self._seen_at(root)
        return script, self._seen_at(root)

    def _seen_at(self, root: str) -> str:
        """Where an action sees its sandbox tree `root`: under bwrap, mounted at the inner root."""
        return self.inner_root if self.mode == "bwrap" else root

    def _bwrap_argv(self, root: str, tools, compilers=(), source_tree: str | None = None, binding=None,
                    jobserver_fifo: bool = False, shell: bool = False, own_net: bool = True) -> list[str]:
        """bwrap and its arguments up to the command: the namespaces and mounts of an action's
        sandbox at `root` with `tools` (and a source tree, the compile cache, the jobserver's fifo).
        `own_net`: a network namespace of its own; else it starts in a pooled one (_entered)."""
        # No capabilities: run by root, bwrap would leave the action root's, and with them it
        # could remount its read-only inputs writable and write through their CAS hardlinks.
        # --as-pid-1: the shell is the pid namespace's first process (its end still ends every
        # other), not a child of a second bwrap process that would wait on it: 15% of bwrap's
        # CPU an action (perf, cold 1,000 nodes, samples per `cat` run).
        argv = [self._bwrap, "--die-with-parent", *(() if shell else ("--new-session",)), "--cap-drop", "ALL",
                *(("--unshare-net",) if own_net else ()), "--unshare-pid",
                "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox",
                "--ro-bind", "/usr", "/usr", "--tmpfs", "/usr/local",
                "--ro-bind", self._etc_dir(), "/etc",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                "--tmpfs", self.inner_root, "--dir", f"{self.inner_root}/tmp", "--dir", f"{self.inner_root}/home",
                "--ro-bind", f"{root}/src", f"{self.inner_root}/src",
                "--ro-bind", f"{root}/deps", f"{self.inner_root}/deps",
                "--bind", f"{root}/out", f"{self.inner_root}/out",
                "--bind", f"{root}/work", f"{self.inner_root}/work",
                "--ro-bind", self.tools_dir(tools, compilers), f"{self.inner_root}/.tools"]
        links, mounts = tools
        if binding is not None:
            from buildgraph.compile_cache import SANDBOX_DIR, SANDBOX_REMOTE_DIR

            argv += ["--bind", binding.host_dir, SANDBOX_DIR]
            if binding.remote_dir is not None:
                argv += ["--bind", binding.remote_dir, SANDBOX_REMOTE_DIR]
        for m in mounts:
            argv += ["--ro-bind", m.host, f"{SANDBOX_TOOLCHAINS}/{m.name}"]
            for w in m.writable:
                argv += ["--bind", f"{m.host}/{w}", f"{SANDBOX_TOOLCHAINS}/{m.name}/{w}"]
        for d in _outside_dirs(links, mounts):
            argv += ["--ro-bind", d, d]
        if source_tree is not None:
            argv += ["--ro-bind", source_tree, f"{self.inner_root}/source"]
        elif os.path.isdir(f"{root}/source"):
            argv += ["--ro-bind", f"{root}/source", f"{self.inner_root}/source"]
        if self.jobserver is not None and jobserver_fifo:
            argv += ["--bind", self.jobserver.fifo, f"{self.inner_root}/.jobserver"]
        return argv + ["--chdir", f"{self.inner_root}/work", "--"]

    def _env(self, action: Action, mapped: str, tools, binding) -> dict[str, str]:
        """The action's environment as it runs with its sandbox seen at `mapped`."""
        # Under bwrap the toolchain entries are mounted at /toolchains, whatever the inner root.
        env = sandbox_env(action, mapped, tools[1] if self.mode != "bwrap" else ())
        if binding is not None:
            env.update(binding.env)   # the compile cache: an accelerator, not in the key
        env["BUILDGRAPH_SANDBOX"] = mapped  # for -ffile-prefix-map in toolchain wrappers; not in the key
        return env

    def _execute(self, root: str, action: Action, tools, source_tree: str | None = None, binding=None,
                 spare: _Spare | None = None) -> int:
        env = self._env(action, self._seen_at(root), tools, binding)
        fds: tuple[int, ...] = ()
        if self.jobserver is not None:
            fifo = f"{self.inner_root}/.jobserver" if self.mode == "bwrap" else None
            env["MAKEFLAGS"] = self.jobserver.makeflags(action.jobserver, fifo)
            fds = self.jobserver.child_fds
        if self.reverse_env:
            env = dict(reversed(list(env.items())))
        if self.mode == "bwrap":
            return self._execute_in_bwrap(root, action, tools, source_tree, binding, spare, env)
        with open(f"{root}/.stdout", "wb") as out, open(f"{root}/.stderr", "wb") as err:
            argv, _ = self._argv(root, action, tools, source_tree, binding)
            with self._lock:
                if self.cancelled:
                    return -signal.SIGTERM
                try:
                    proc = subprocess.Popen(argv, env=env, cwd=f"{root}/work", stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, start_new_session=True, pass_fds=fds,
                                            umask=self.umask if self.umask is not None else PINNED_UMASK)
                except OSError as exc:
                    err.write(f"buildgraph: cannot start {argv[0]}: {exc}\n".encode())
                    return 127
                self._running[proc.pid] = proc
            try:
                return proc.wait()
            finally:
                # Whatever the action left running in its session ends now, before its
                # outputs are collected.
                _killpg(proc, signal.SIGKILL)
                with self._lock:
                    self._running.pop(proc.pid, None)

    def _execute_in_bwrap(self, root: str, action: Action, tools, source_tree, binding, spare: _Spare | None,
                          env: dict[str, str]) -> int:
        """Run the action's commands in `spare`, else (none, or it ended before it was given
        them) in a sandbox started for it now. Either way the same shell reads them from its
        pipe (_start_in), so the action sees the same whichever ran it."""
        if spare is not None and self._start_in(spare, action.commands, env):
            return _ended(spare)
        try:
            own = self._spawn(root, tools, action.jobserver == "fifo", action.compilers if binding else (),
                              source_tree, binding)
        except OSError as exc:
            with open(f"{root}/.stderr", "ab") as err:
                err.write(f"buildgraph: cannot start {self._maker or self._bwrap}: {exc}\n".encode())
            return 127
        try:
            self._start_in(own, action.commands, env)
            return _ended(own)   # if bwrap ended before it read them, its status and stderr say why
        finally:
            self._end_spare(own)

    def _collect(self, root: str, action: Action, duration: float) -> ActionResult:
        """The outputs as a result in the CAS. Every process of the action has ended (the pid
        namespace under bwrap; its process group otherwise). Under bwrap the files move in
        by rename; in the other modes a process that left its group (setsid) could still
        hold them, so they enter by copy, and the copy is what is hashed."""
        files, links, others = walk_tree(f"{root}/out")
        if others:
            raise OutputError(f"output {others[0]!r} is not a regular file or symlink")
        try:
            symlinks = [OutputSymlink(rel, check_symlink(rel, target)) for rel, target in links]
            check_tree([rel for rel, _, _ in files], dict(links))
            check_declared(action.outs, [rel for rel, _, _ in files], [s.path for s in symlinks])
        except BadResult as exc:
            raise OutputError(str(exc), getattr(exc, "paths", ())) from None
        outputs = []
        for rel, path, exe in files:
            if self.mode == "bwrap":
                digest = self.store.ingest(path, file_digest(path), exe)
            else:
                digest = self.store.put_file_copy(path, exe)
            size = os.path.getsize(self.store.blob_path(digest, exe))
            outputs.append(OutputFile(rel, digest, size, exe))
        logs = []
        for name in _LOGS:
            path = f"{root}/{name}"
            logs.append(self.store.put_file_copy(path) if os.path.getsize(path) else None)
        return ActionResult(files=tuple(outputs), symlinks=tuple(symlinks), stdout=logs[0], stderr=logs[1],
                            exit_code=0, duration=duration)


class OutputError(Exception):
    """The action ran but its outputs do not match what it declared (`missing`: those not
    produced), or its inputs could not be staged."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()):
        super().__init__(message)
        self.missing = missing


RECOLLECT = ".buildgraph-recollect.json"   # in a kept sandbox whose commands all succeeded


def fill_tools_dir(bin_dir: str, links, compilers=(), seen_as: str = "") -> None:
    """The names an action (or a developer's shell) finds on PATH: links to the tools, and for
    `compilers` the compile cache's shims instead (compile_cache.py); `seen_as` is where
    `bin_dir` is seen from inside."""
    for name, target in links:
        os.symlink(target, f"{bin_dir}/{name}")
    if compilers:
        from buildgraph import compile_cache

        compile_cache.write_tools(bin_dir, compilers, seen_as)


def _tree_listing(base: str) -> list:
    """[relpath, stat signature...] of everything under `base`: whether a kept out/ is still
    exactly what the commands left (an edit, chmod or replacement changes a signature)."""
    files, links, others = walk_tree(base)
    rels = sorted([rel for rel, _, _ in files] + [rel for rel, _ in links] + others)
    return [[rel, *stat_signature(os.lstat(os.path.join(base, rel)))] for rel in rels]


def _copy_in(base: str, files) -> None:
    """Copy (relpath, host path, digest in the key, executable) files under `base`, hashing
    the copies: what the action reads is what its key names. A file whose content changed
    since it was hashed (even within one timestamp tick, where its stat signature cannot
    tell) would make the key lie: the action is not run."""
    made = set()
    for rel, host, digest, exe in files:
        dest = f"{base}/{rel}"
        parent = os.path.dirname(dest)
        if parent not in made:
            make_dirs(parent)
            made.add(parent)
        try:
            copied = copy_hashed(host, dest, 0o755 if exe else 0o644)
        except OSError as exc:
            raise OutputError(f"source {host} cannot be read ({exc.strerror}); not run") from None
        if copied != digest:
            raise OutputError(f"source {host} changed during the build; not run — build again")


def _outside_dirs(links, mounts) -> list[str]:
    """Host directories the tools live in that the sandbox does not show yet (host toolchains
    outside /usr): the directories of absolute link targets, followed one level through the
    entries' bin/ links."""
    targets = [t for _, t in links if not t.startswith(SANDBOX_TOOLCHAINS)]
    for m in mounts:
        bin_dir = f"{m.host}/bin"
        if os.path.isdir(bin_dir):
            targets.extend(os.readlink(f"{bin_dir}/{n}") for n in os.listdir(bin_dir)
                           if os.path.islink(f"{bin_dir}/{n}"))
    dirs = set()
    for t in targets:
        if t.startswith("/") and (not t.startswith(_BOUND_PREFIXES) or t.startswith("/usr/local/")):
            d = os.path.dirname(t)
            # A tool in <prefix>/bin (/usr/local/cuda-10.1/bin/nvcc) needs its prefix (include/, lib64/).
            dirs.add(os.path.dirname(d) if d.endswith("/bin") and d.count("/") > 2 else d)
    return sorted(d for d in dirs if not any(d.startswith(o + "/") for o in dirs))


_TRAP = ("trap 'bg_rc=$?; [ $bg_rc -eq 0 ] || echo \"buildgraph: command $bg_step of {n} failed "
         "(exit code $bg_rc)\" >&2' EXIT\n")


def _ended(spare: _Spare) -> int:
    """The exit status of a sandbox given its action, once it has ended; under bwrap the pid
    namespace has ended every process of the action with it."""
    try:
        return spare.proc.wait()
    finally:
        _killpg(spare.proc, signal.SIGKILL)


def _command(commands: tuple[str, ...]) -> list[str]:
    """`sh -e -c SCRIPT`: how an action's commands run outside bwrap, and what a bwrap
    sandbox's waiting shell reproduces (_program)."""
    return ["/bin/sh", "-e", "-c", _script(commands)]


# Variables the shell sets itself at start or gives a meaning of its own: exported by the
# program below they would not be what `sh` started with them in its environment has.
_SHELL_OWN = frozenset(("ATTY", "ENV", "HISTSIZE", "IFS", "LINENO", "MAIL", "MAILPATH", "OLDPWD", "OPTARG",
                        "OPTIND", "PPID", "PS1", "PS2", "PS4", "PWD", "TERM"))


def _program(commands: tuple[str, ...], env: dict[str, str]) -> str:
    """What a bwrap sandbox's waiting shell (`sh -c '. /dev/stdin'`) reads to run an action:
    the same shell state, environment (its order too) and stdin as `sh -e -c SCRIPT` started
    with `env` would have, without exec'ing `env -i` and a second shell (~1.4 ms an action).
    The shell set PWD at its start, before the exports: it is set again after them, where
    `sh` started with `env` sets it. An environment with a name the shell treats as its own,
    or one that is not a shell name, is handed over by `env -i` instead."""
    if env and all(k.isascii() and k.isidentifier() and k not in _SHELL_OWN for k in env):
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # On the script's first line: its line numbers stay those of `sh -c`.
        return (f"bg_pwd=$PWD; unset PWD; export {exports}; export PWD=\"$bg_pwd\"; unset bg_pwd; "
                f"exec 0<>/dev/null; set -e; {_script(commands)}")
    return _program_by_env(commands, env)


def _program_by_env(commands: tuple[str, ...], env: dict[str, str]) -> str:
    """The waiting shell's program that exec's `sh -e -c SCRIPT` with exactly `env` (env -i)."""
    return (f"exec /usr/bin/env -i -- {' '.join(shlex.quote(f'{k}={v}') for k, v in env.items())} "
            f"{' '.join(map(shlex.quote, _command(commands)))} <>/dev/null\n")


def _script(commands: tuple[str, ...]) -> str:
    """The shell program of an action. `sh -e` stops at the first failing command, and the
    exit trap names it, so a successful quiet action writes nothing to stderr."""
    steps = "".join(f"bg_step={i}\n{cmd}\n" for i, cmd in enumerate(commands, 1))
    return _TRAP.format(n=len(commands)) + steps


def _tail(path: str, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
