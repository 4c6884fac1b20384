"""What each CLI command does, as library calls: open a session, act, return values.

`Session` opens a workspace for one command: takes the workspace lock, loads the
state and the configured graph (parsed only if a workspace file changed), opens
the local store, and saves the state on the way out — also after a failure or
Ctrl-C, so every finished node stays recorded.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import explain
from buildgraph.engine import Engine, Status, load_configured
from buildgraph.errors import StoreError, UsageError
from buildgraph.state import StateDir
from buildgraph.sources import SourceStore, mirror_list
from buildgraph.toolchains import NotFetched
from buildgraph.locations import default_cache_dir, toolchain_dir
from buildgraph.toolstore import ToolStore


@dataclass
class Options:
    directory: Path = Path(".")
    cache_dir: Path | None = None
    cache_max_bytes: int | None = None
    toolchain_dir: Path | None = None
    sandbox: str = "auto"
    jobs: int = 0
    keep_going: bool = False
    remote: object = None   # store.remote.RemoteOptions when --remote-cache is given
    mirrors: tuple[str, ...] = ()   # --mirror: searched for sources before $BUILDGRAPH_MIRROR and upstream
    git_sha: str | None = None      # --git-sha: the commit artifacts record
    executor: object = None         # store.remote.RemoteOptions for --remote-executor
    restore_only: bool = False      # publish: results come from the caches; nothing runs
    compile_cache: bool = True      # ccache in cmake/make/autotools actions (--no-compile-cache: off)
    fetch_toolchains: bool = True   # off for dry runs (plan, why) unless --fetch: a missing one is NotFetched
    subcommands: bool = False       # -s: print each action's commands as it starts
    sandbox_debug: bool = False     # --sandbox-debug: a failed sandbox can be entered (enter.sh)


class Session:
    def __init__(self, opts: Options, *, write: bool = True, notify=None):
        from buildgraph.store.local import DEFAULT_MAX_BYTES, LocalStore
        from buildgraph.workspace import find_root

        self.opts = opts
        self.root = find_root(opts.directory)
        self.state_dir = StateDir(self.root)
        self.write = write
        self.dirty = False  # set when the state must be saved
        self.noop_record: bytes | None = None   # written after the state: see noop.py
        self.host_facts: tuple | None = None    # noop.host_facts() as the no-op check took them
        self.outcomes: dict[str, str] = {}      # node -> this build's outcome, when not up to date
        if write:
            self.state_dir.lock(notify)
        try:
            # What is loaded or parsed here (~10 objects a node) lives to the end of the build:
            # the collector is off while it is made and then leaves it out of every collection
            # (gc.freeze). At 10,000 targets, collecting it as it was parsed took 2 s of a 6 s
            # build, and the state loads twice as fast.
            gc.disable()
            try:
                self.state = self.state_dir.load()
                config_before = self.state.config
                self.ws, self.graph = load_configured(self.root, self.state)
                self.dirty = self.state.config is not config_before
                if self.dirty:   # parsing leaves cyclic garbage (loading leaves none): not frozen with the rest
                    gc.collect()
            finally:
                gc.enable()
                gc.freeze()
            cache_dir = opts.cache_dir or default_cache_dir()
            self.store = LocalStore(cache_dir, DEFAULT_MAX_BYTES if opts.cache_max_bytes is None
                                    else opts.cache_max_bytes)
            self.toolstore = ToolStore(toolchain_dir(cache_dir, opts.toolchain_dir))
            self.sources = SourceStore(cache_dir / "sources", mirror_list(opts.mirrors))
            self.engine = Engine(self.ws, self.graph, self.store, self.state, self.state_dir, None,
                                 self.toolstore)
            self.engine.git_sha = opts.git_sha
            self.engine.requested_sandbox = opts.sandbox
            self.engine.resolver.fetch = opts.fetch_toolchains
        except BaseException:
            gc.unfreeze()
            self.state_dir.unlock()
            raise

    def trust(self, changes) -> None:
        """Let the build trust what the no-op check found changed (noop.Changes, or None) if it
        still describes this session's state: the workspace was not parsed again, and the
        record it came from is still on disk (a build that took the lock in between replaced
        or removed it). Not parsed again, the workspace has the host tools and keys the check
        took the host facts for, whether or not the record is still on disk: the build's no-op
        record uses them (noop.record)."""
        from buildgraph import noop

        if changes is not None and not self.dirty:
            self.host_facts = changes.facts
            if noop.still_current(self.root, changes):
                self.engine.trust(changes)

    def close(self) -> None:
        try:
            if self.write and (self.dirty or self.engine.changed()):
                self.state_dir.save(self.state, config=self.dirty)
            if self.write and self.noop_record is not None:
                self.state_dir.save_noop(self.noop_record)
            if self.write and (self.engine.new_inputs or self.outcomes):
                self.state_dir.write_records(self.engine.new_inputs, self.outcomes)
        finally:
            self.store.close()
            self.state_dir.close()
            gc.unfreeze()   # a process that goes on (tests, tools) collects them again

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class BuildSummary:
    outcomes: list
    elapsed: float
    counts: dict = field(default_factory=dict)
    selected: int = 0
    interrupted: bool = False   # Ctrl-C or SIGTERM: the outcomes so far (the caller re-raises)

    @property
    def ok(self) -> bool:
        return len(self.outcomes) == self.selected and \
            all(o.status in (Status.RAN, Status.CACHED, Status.UP_TO_DATE) for o in self.outcomes)

    def line(self) -> str:
        c = self.counts
        parts = [f"{c.get(s.value, 0)} {label}" for s, label in
                 ((Status.RAN, "ran"), (Status.CACHED, "cached"), (Status.UP_TO_DATE, "up to date"))]
        for s in (Status.FAILED, Status.SKIPPED, Status.CANCELLED):
            if c.get(s.value):
                parts.append(f"{c[s.value]} {s.value}")
        if self.selected > len(self.outcomes):
            parts.append(f"{self.selected - len(self.outcomes)} not started")
        return f"{self.selected} nodes: {', '.join(parts)} in {self.elapsed:.2f}s"


def build(session: Session, patterns, reporter) -> BuildSummary:
    """Build the selected nodes; returns every node's outcome."""
    from buildgraph import noop
    from buildgraph.jobserver import Jobserver
    from buildgraph.sandbox import Sandbox
    from buildgraph.scheduler import Interrupted, Scheduler

    t0 = time.monotonic()
    selected = session.graph.select(patterns)
    # What the keys read of the host, taken before they read it (noop.record)
    facts = session.host_facts or noop.host_facts(session.ws.host_tools, session.opts.sandbox, session.ws.host_key)
    jobs = session.opts.jobs or os.cpu_count() or 1
    store = session.store
    store.open_for_build()
    store.begin_batch()
    jobserver = Jobserver(jobs, store.tmp)
    engine = session.engine
    compiles = open_compile_cache(store, session.opts)
    engine.sandbox = Sandbox(store, engine.sandbox_mode, jobserver, session.sources, compile_cache=compiles,
                             debug=session.opts.sandbox_debug)
    engine.remote = open_remote_layer(store, session.opts.remote, session.ws.name)
    if session.opts.executor is not None:
        from buildgraph.remote_exec import RemoteExecutor

        engine.executor = RemoteExecutor(session.opts.executor, store, engine, session.sources,
                                         lambda m: print(f"buildgraph: {m}", file=sys.stderr))
        engine.executor.fallback = engine.sandbox
    if session.opts.restore_only:
        engine.executor = _RestoreOnly()
    primed = None
    if engine.executor is None:   # actions run here: start the sandbox the first is likely to want
        primed = session.state_dir.spare_hint()
        engine.sandbox.prime(primed)
    scheduler = Scheduler(session.graph, engine, jobs, jobserver, reporter, session.opts.keep_going,
                          subcommands=session.opts.subcommands)
    interrupted = False
    try:
        engine.prepare(selected)   # after the prime: the spare starts while sources are hashed
        outcomes = scheduler.run(selected)
        engine.finish_materializing()
    except Interrupted as exc:
        outcomes, interrupted = exc.outcomes, True
    finally:
        engine.end_layout_worker()
        reporter.end()
        engine.sandbox.close()
        if engine.sandbox.first_mount_set not in (None, primed):
            session.state_dir.save_spare_hint(engine.sandbox.first_mount_set)
        if compiles is not None:
            compiles.close()   # waits for the compile cache's uploads
        jobserver.close()
        if engine.remote is not None:
            engine.remote.close()   # waits for background uploads
        if engine.executor is not None:
            engine.executor.close()
        store.commit()
    ordered = [outcomes[n] for n in selected if n in outcomes]
    summary = BuildSummary(ordered, time.monotonic() - t0, selected=len(selected), interrupted=interrupted)
    for o in ordered:
        summary.counts[o.status.value] = summary.counts.get(o.status.value, 0) + 1
        if o.status != Status.UP_TO_DATE:
            session.outcomes[o.name] = o.status.value
    no_op = all(o.status == Status.UP_TO_DATE for o in ordered) and len(ordered) == len(selected) \
        and not interrupted
    if not no_op:   # last-build.json keeps the last build in which a node ran or was restored
        session.state_dir.save_last_build({
            "nodes": len(ordered), **summary.counts, "files_hashed": engine.stat_cache.hashed,
            "local_hits": store.counters.hits, "local_misses": store.counters.misses,
            "rejected": store.counters.rejected, "quarantined": store.counters.quarantined,
            "bytes_stored": store.counters.bytes_in,
            **({f"remote_{k}": v for k, v in vars(engine.remote.counters).items()} if engine.remote else {}),
            **(compiles.counters() if compiles is not None else {}),
            "seconds": round(summary.elapsed, 3), "finished": time.time()})
    if interrupted:
        return summary
    if summary.ok:
        session.noop_record = noop.record(engine, noop.request(patterns, session.opts.sandbox,
                                                               session.toolstore.root), selected, facts)
    if store.counters.bytes_in and store.over_limit():
        store.close()  # release the shared lock so gc can take it exclusively
        try:
            store.gc()
        except StoreError as exc:  # another build holds the cache: the next build will collect
            print(f"buildgraph: warning: cache over its size limit; {exc}", file=sys.stderr)
    return summary


def open_compile_cache(store, opts: Options):
    """The build's compile cache (compile_cache.py), sharing entries through an HTTP remote
    cache when one is given; None when it is off or ccache is not installed. The sandbox uses
    it under bwrap only."""
    if not opts.compile_cache or opts.restore_only:
        return None
    from buildgraph import compile_cache

    if compile_cache.program_path() is None:
        return None
    remote, read_only = None, False
    if opts.remote is not None and opts.remote.url.startswith(("http://", "https://")):
        from dataclasses import replace

        from buildgraph.store.http import HttpCache

        # A lookup stands between ccache and the compiler: a remote slower than this is dropped.
        remote = HttpCache(replace(opts.remote, timeout=min(opts.remote.timeout, compile_cache.COMPILE_TIMEOUT),
                                   retries=0))
        read_only = opts.remote.read_only
    return compile_cache.CompileCache(str(store.root / "compile-cache"), remote,
                                      lambda m: print(f"buildgraph: {m}", file=sys.stderr), read_only)


class _RestoreOnly:
    """The executor of a build that may only restore (publish): an action that would run fails."""

    def run(self, action, deps, tools):
        from buildgraph.sandbox import RunOutcome

        return RunOutcome(None, "not in any cache (this command restores results, it never builds)", "", 0.0)

    def close(self) -> None:
        pass


def open_remote_layer(store, options, scope: str = ""):
    """A RemoteLayer over `store`, or None without a remote (or when it cannot even be opened)."""
    if options is None:
        return None
    from buildgraph.store.layered import RemoteLayer
    from buildgraph.store.remote import open_remote, redact

    def warn(message: str) -> None:
        print(f"buildgraph: {message}", file=sys.stderr)

    try:
        remote = open_remote(options)
    except (ImportError, OSError, ValueError) as exc:
        warn(f"warning: cannot use remote cache {redact(options.url)}: {exc}; building locally")
        return None
    return RemoteLayer(store, remote, options, warn, scope)


@dataclass
class PlanRow:
    name: str
    key: str | None
    status: str          # up-to-date, cached, run
    reasons: list[str]
    action_digest: dict | None = None  # the key as remote caches see it: SHA-256 of the key bytes
    prebuilt: str | None = None        # the binaries it takes from elsewhere (a wheel), not built here


def _plan(session: Session, selected: list[str]) -> tuple[list[PlanRow], dict[str, str]]:
    from buildgraph.store.remote import action_digest

    engine, graph = session.engine, session.graph
    rows, known, must_run = [], {}, set()
    sizes: dict[str, int | None] = {}   # toolchain -> bytes fetching it downloads (asked once)
    for name in selected:
        node = graph.nodes[name]
        source = session.ws.targets[node.target].source
        prebuilt = source.describe() if source is not None and source.prebuilt else None
        blocked = [d for _, d in node.deps if d in must_run]
        if blocked:
            must_run.add(name)
            rows.append(PlanRow(name, None, "run", [f"after {', '.join(blocked)} (key known then)"],
                                prebuilt=prebuilt))
            continue
        try:
            action = engine.action_for(node, {d: known[d] for _, d in node.deps})
        except NotFetched as exc:   # a dry run fetches nothing: its key is known once it is
            must_run.add(name)
            rows.append(PlanRow(name, None, "run", [f"{exc.described(sizes)}; `--fetch` fetches it"],
                                prebuilt=prebuilt))
            continue
        ad = action_digest(action.key_bytes)
        remote_key = {"hash": ad.hash, "size_bytes": ad.size}
        reuse = engine.check(node, action, dry_run=True)
        if reuse is not None:
            known[name] = reuse.output_digest
            rows.append(PlanRow(name, action.key, reuse.status.value, [], remote_key, prebuilt))
            continue
        must_run.add(name)
        reasons = explain.changes(session.state_dir.read_inputs(name), action.inputs()) or \
            ["same inputs as its last build, but the result is in no cache"]
        rows.append(PlanRow(name, action.key, "run", reasons, remote_key, prebuilt))
    return rows, known


def plan(session: Session, patterns) -> tuple[list[PlanRow], list[str], list[str]]:
    """Dry run: each selected node, its key, whether it is reusable or why it must run,
    the critical path of what must run (by durations recorded in earlier builds), and what
    the actions read from the host that their keys cannot follow."""
    selected = session.graph.select(patterns)
    rows, _ = _plan(session, selected)
    durations = {n: r.duration for n, r in session.state.nodes.items()}
    to_run = [r.name for r in rows if r.status == "run"]
    _, path = session.graph.critical_path(to_run or [r.name for r in rows], durations)
    return rows, path, session.engine.non_hermetic(selected)


def why(session: Session, name: str) -> tuple[str, list[str]]:
    """(node, the inputs of it that changed since its last build); none changed: []."""
    graph = session.graph
    if name not in graph.nodes:
        found = graph.resolve(name)
        if len(found) != 1:
            raise UsageError(f"'{name}' names {len(found)} nodes: {', '.join(found)}; pick one")
        name = found[0]
    rows, known = _plan(session, graph.closure([name]))
    node = graph.nodes[name]
    old = session.state_dir.read_inputs(name)
    lines = [f"dependency {d} must rebuild first" for _, d in node.deps if d not in known]
    # A dependency that must rebuild has no output digest yet: compare the rest.
    last = (old or {}).get("deps", {})
    outputs = {d: known.get(d, last.get(t, "unknown")) for t, d in node.deps}
    try:
        lines.extend(explain.changes(old, session.engine.action_for(node, outputs).inputs()))
    except NotFetched as exc:
        lines.append(f"{exc.described({})}; `--fetch` fetches it and compares")
    return name, lines


def _toolchain_names(session: Session, names) -> list[str]:
    for n in names:
        if n not in session.ws.toolchains:
            from buildgraph.errors import did_you_mean
            hint = did_you_mean(n, session.ws.toolchains)
            raise UsageError(f"no toolchain named '{n}'" + (f"; {hint}" if hint else ""))
    return list(names) or list(session.ws.toolchains)


def toolchain_list(session: Session, names) -> list[dict]:
    """Each toolchain: name, version, provider, digest (if fetched), hermetic, installed."""
    rows = []
    for name in _toolchain_names(session, names):
        tc = session.ws.toolchains[name]
        entry = session.toolstore.entry(tc)
        installed = "no"
        if entry is not None:
            installed = "TAMPERED" if entry.tampered else "yes"
        rows.append({"name": name, "version": tc.version, "provider": tc.provider,
                     "digest": entry.digest if entry else None,
                     "hermetic": tc.provider != "host", "installed": installed})
    return rows


def toolchain_fetch(session: Session, names, force: bool = False):
    """Fetch toolchains (with their host compiler and linker); yields (name, Entry or error)."""
    from buildgraph.toolstore import FetchError

    wanted = list(names) or sorted({n.toolchain for n in session.graph.nodes.values() if n.toolchain})
    for name in _toolchain_names(session, wanted) if wanted else []:
        for member in session.engine.resolver.members(name):
            try:
                yield member, session.toolstore.fetch(session.ws.toolchains[member], force=force,
                                                      log=lambda m: print(f"buildgraph: {m}", file=sys.stderr))
            except FetchError as exc:
                yield member, exc


def toolchain_verify(session: Session, names):
    """Re-hash fetched toolchains; yields (name, problems or None if not fetched)."""
    for name in _toolchain_names(session, names):
        tc = session.ws.toolchains[name]
        if session.toolstore.entry(tc) is None:
            yield name, None
        else:
            yield name, session.toolstore.verify(tc)


def fetch_sources(session: Session, patterns, mirror: Path | None):
    """Fetch the upstream sources the selected nodes need; with `mirror`, also store each
    archive there by digest. Yields (target, Source, path or SourceError)."""
    from buildgraph.sources import SourceError

    targets = dict.fromkeys(session.graph.nodes[n].target for n in session.graph.select(patterns))
    log = lambda m: print(f"buildgraph: {m}", file=sys.stderr)  # noqa: E731
    for name in targets:
        src = session.ws.targets[name].source
        if src is None or src.kind == "path":
            continue
        try:
            if mirror is not None:
                yield name, src, session.sources.to_mirror(src, mirror, log)
            else:
                yield name, src, session.sources.get(src, log)
        except SourceError as exc:
            yield name, src, exc


def explain_audit(session: Session, pattern: str, policy_name: str | None, reporter):
    """For `buildgraph audit --explain`: per node named by `pattern`, (node, lines, claim holds).
    An artifact node is assembled again from its built dependencies (built first if they are
    not), as its action would, without stripping, so a refused artifact can be explained; any
    other node's ELF outputs are audited as shipped together."""
    import shutil
    import tempfile

    from buildgraph import artifact, audit

    for name in session.graph.resolve(pattern):
        node = session.graph.nodes[name]
        target = session.ws.targets[node.target]
        needed = [dn for _, dn in node.deps] if target.kind == "artifact" else [name]
        summary = build(session, needed, reporter)
        if not summary.ok:
            raise UsageError(f"{name}: cannot audit it: {', '.join(o.name for o in summary.outcomes if o.error)} "
                             "did not build")
        claim = policy_name or (target.for_variant("policy", dict(node.assignment)) if target.kind == "artifact"
                                else "manylinux_2_17")
        policy = audit.policy_named(claim)
        if policy is None:
            raise UsageError(f"unknown policy {claim!r} ({audit.known_policy_names()})")
        with tempfile.TemporaryDirectory(prefix="bg-explain-") as tmp:
            if target.kind == "artifact":
                deps_root = Path(tmp) / "deps"
                deps_root.mkdir()
                for dep, dn in node.deps:
                    (deps_root / dep).symlink_to(session.engine.out_dir(dn))
                spec = {"backend": target.backend, "library": target.library, "policy": claim}
                try:
                    assembly = artifact.assemble(spec, deps_root, Path(tmp) / "lib", shutil.copyfile)
                except artifact.ArtifactError as exc:
                    raise UsageError(f"{name}: {exc}") from None
                node_of = dict(node.deps)       # name the dependency nodes, not their targets
                assembly.origin = {f: node_of[dep] for f, dep in assembly.origin.items()}
            else:
                out = session.engine.out_dir(name)
                files = sorted(str(p) for p in out.rglob("*") if p.is_file() and not p.is_symlink()
                               and audit.is_elf(str(p)))
                assembly = artifact.Assembly(out, {}, {os.path.basename(f): name for f in files},
                                             audit.audit_together(files), policy)
            lines, holds = assembly.explanation(policy)
            yield name, lines, holds
