"""The rebuilder: turn a node into an action, decide whether a stored result can be
reused, run it in the sandbox when not, and materialize outputs.

"When to run" lives in scheduler.py; "may I reuse?" lives here. The check is a
constructive trace, as in Bazel: the key hashes the node's inputs including its
dependencies' *output* digests, and any store holding a result for that key may
answer. Fast path for no-op builds: if the state says this node's last build had
the same key and out/<node> still holds those outputs, nothing is looked up.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from buildgraph import globs, recipes, signatures
from buildgraph.action import Action, ActionResult
from buildgraph.digest import StatCache, stat_signature, tree_digest, value_digest
from buildgraph.errors import ConfigError, StoreError
from buildgraph.graph import BuildGraph, Node, configure
from buildgraph.layout_worker import LayoutWorker, fill_new_dir, lay_out_new
from buildgraph.packedmap import PackedMap
from buildgraph.sandbox import SANDBOX_ROOT, Sandbox
from buildgraph.state import NodeRecord, State, StateDir
from buildgraph.status import Status
from buildgraph.fsutil import force_remove, remembered
from buildgraph.store.local import LocalStore
from buildgraph.toolchains import Mount, ToolchainResolver, host_tools
from buildgraph.toolstore import ToolStore
from buildgraph.workspace import Workspace, field_path, load_workspace

BASE_ENV = (("LC_ALL", "C"), ("TZ", "UTC"), ("HOME", f"{SANDBOX_ROOT}/home"),
            ("TMPDIR", f"{SANDBOX_ROOT}/tmp"), ("PATH", f"{SANDBOX_ROOT}/.tools/bin"),
            ("SRC", f"{SANDBOX_ROOT}/src"), ("OUT", f"{SANDBOX_ROOT}/out"),
            ("WORK", f"{SANDBOX_ROOT}/work"), ("DEPS", f"{SANDBOX_ROOT}/deps"))


# The kinds whose actions compile many files in one run: the compile cache is on in them.
COMPILE_CACHED_KINDS = ("cmake", "make", "autotools")
LAYOUT_WORKER_AFTER = 64   # nodes a build materializes itself before a layout worker takes the rest


@dataclass(frozen=True)
class Reuse:
    status: Status
    output_digest: str


def load_configured(root: Path, state: State) -> tuple[Workspace, BuildGraph]:
    """The workspace and its graph, parsed again only if a workspace file changed."""
    if state.config is not None:
        # The files the cached workspace read (its YAML, and files it names: toolchain patches).
        sig = signatures.files_signature(root, state.config[1].files)
        if sig is not None and state.config[0] == sig:
            return state.config[1], state.config[2]
    ws = load_workspace(root)
    ws = replace(ws, targets=PackedMap(ws.targets))   # kept between builds, read target by target
    graph = configure(ws)
    state.config = (signatures.files_signature(root, ws.files), ws, graph, TargetIndex(ws))
    return ws, graph


class TargetIndex:
    """What a build past a change asks of every target at once, kept with the parsed
    workspace so that such a build reads only the targets it walks: which targets read
    each glob (Engine.trust), and which are artifacts (whose keys read git's state)."""

    __slots__ = ("readers", "artifacts")

    def __init__(self, ws: Workspace):
        self.readers: dict[tuple, list[str]] = {}
        for name, t in ws.targets.items():
            for patterns in dict.fromkeys((t.srcs, _path_source_patterns(t))):
                if patterns is not None:
                    self.readers.setdefault(patterns, []).append(name)
        self.artifacts = frozenset(name for name, t in ws.targets.items() if t.kind == "artifact")


def _path_source_patterns(t) -> tuple[str, ...] | None:
    """The glob that expands a target's `path` source (None: it has none)."""
    if t.source is None or t.source.kind != "path":
        return None
    return (f"{t.source.location.rstrip('/')}/**",)


def env_name(target: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in target).upper()


class Engine:
    def __init__(self, ws: Workspace, graph: BuildGraph, store: LocalStore, state: State,
                 state_dir: StateDir, sandbox: Sandbox | None, toolstore: ToolStore):
        self.ws, self.graph, self.store, self.state = ws, graph, store, state
        self.state_dir = state_dir
        self.sandbox = sandbox
        self._trashed = 0   # names given in .buildgraph/trash (_trash_path)
        self.stat_cache = StatCache(state.stat_cache)
        self.resolver = ToolchainResolver(toolstore, ws.toolchains, self.stat_cache, packages=self.packages)
        self._srcs: dict[str, tuple] = {}
        self._dir_memo: dict[str, int | None] = {}
        self._globs_used: set[tuple[str, ...]] = set()   # the glob expansions this build read
        self._host_tools = None
        self._host = None
        self._tokens: dict[str | None, str | None] = {}   # toolchain -> global token (see unchanged)
        self.proven = None         # noop.Changes: what the no-op record proves of this build (trust)
        self._stale_targets: set[str] | None = None
        self.requested_sandbox = "auto"   # --sandbox
        self._sandbox_mode: str | None = None
        self.remote = None  # a RemoteLayer when --remote-cache is given
        self.executor = None  # a RemoteExecutor when --remote-executor is given (it falls back to sandbox)
        self.git_sha = None       # --git-sha: the commit artifacts record (else $MXNET_SHA, ..., git HEAD)
        self._release_identity = None
        self._changed = False
        self._materializing = 0          # materialize calls this build (LAYOUT_WORKER_AFTER)
        self._layout: LayoutWorker | None = None
        self._layout_tried = False
        self._laying_out: dict[str, ActionResult] = {}   # node -> result the worker lays out
        self._layout_retry: list[tuple[str, ActionResult]] = []
        self.results: dict[str, ActionResult] = {}   # node -> result known this build
        self.outputs: dict[str, str] = {}            # node -> output digest known this build
        # node -> its input digests, for the nodes recorded this build (None: those of its last
        # record, which its key is: _restore_recorded)
        self.new_inputs: dict[str, dict | None] = {}
        self._missed: set[str] = set()               # keys the local cache had no result for
        self.warn = lambda message: print(f"buildgraph: {message}", file=sys.stderr)

    # ------------------------------------------------------------ actions

    def prepare(self, nodes) -> None:
        """Before anything runs: expand and digest the srcs of every target in `nodes`
        (ConfigError on a bad pattern) but those the no-op record vouches for (`trusted`),
        and fetch the toolchains they use (FetchError)."""
        targets = list(dict.fromkeys(self.graph.nodes[n].target for n in nodes if not self.trusted(n)))
        for target in targets:
            self._sources(target)
        self.resolver.ensure(dict.fromkeys(self.graph.nodes[n].toolchain for n in nodes
                                           if self.graph.nodes[n].toolchain))

    def _sources(self, target_name: str):
        """(relpath, digest, exec) triples and host paths of a target's srcs."""
        if target_name not in self._srcs:
            t = self.ws.targets[target_name]
            def error(message: str, hint: str | None = None) -> ConfigError:
                return ConfigError(message, file=t.loc.file, line=t.line_of("srcs"), field=field_path(t, "srcs"),
                                   hint=hint)

            def no_match(pattern: str) -> ConfigError:
                near = globs.nearest(str(self.ws.root), pattern)
                return error(f"pattern {pattern!r} matches no file", near and f"did you mean '{near}'?")
            files = self._stat_files(t.srcs, no_match, error)
            self._srcs[target_name] = (
                tuple((rel, self._digest(host, st, error), bool(st.st_mode & 0o111)) for rel, host, st in files),
                tuple(host for _, host, _ in files))
        return self._srcs[target_name]

    def _digest(self, host: str, st: os.stat_result, error) -> str:
        try:
            return self.stat_cache.digest(host, st)
        except OSError as exc:
            raise error(f"cannot read {host}: {exc.strerror or exc}") from None

    def _stat_files(self, patterns: tuple[str, ...], empty_error, error) -> list[tuple[str, str, os.stat_result]]:
        """(relpath, host path, stat) of the files `patterns` match under the workspace root.

        The expansion is cached in the state and reused while no directory it visited changed,
        so a no-op build walks nothing; a file deleted since is caught by its stat and the
        patterns are expanded afresh. `empty_error(pattern)` is raised for a pattern that
        matches nothing, `error(message)` for a path that cannot be used.
        """
        root = str(self.ws.root)

        def stat_all(paths):
            return [(rel, f"{root}/{rel}", os.stat(f"{root}/{rel}")) for rel in paths]
        try:
            try:
                return stat_all(self._expand(patterns, empty_error, fresh=False))
            except FileNotFoundError:
                return stat_all(self._expand(patterns, empty_error, fresh=True))
        except globs.GlobError as exc:
            raise error(str(exc)) from None
        except OSError as exc:
            raise error(f"cannot read {exc.filename}: {exc.strerror or exc}") from None

    def _expand(self, patterns: tuple[str, ...], empty_error, fresh: bool) -> list[str]:
        self._globs_used.add(patterns)
        cached = self.state.resolutions.get(("glob", patterns))
        if cached is not None and not fresh and globs.still_valid(cached[1], self._dir_memo):
            return cached[0]
        paths, visited, empty = globs.expand(str(self.ws.root), patterns)
        if empty:
            raise empty_error(empty[0])
        self.state.resolutions[("glob", patterns)] = (paths, visited)
        self._changed = True
        return paths

    def sources_read(self) -> tuple[list[str], dict[str, tuple | None]]:
        """The host paths of every source file this build staged or keyed (srcs and path
        sources), and the directories its glob expansions read with their stat signatures."""
        files = []
        for key, held in self._srcs.items():
            files.extend(held[1] if isinstance(key, str) else (host for _, host, _, _ in held[1]))
        dirs = {}
        for patterns in self._globs_used:
            dirs.update(self.state.resolutions[("glob", patterns)][1])
        return files, dirs

    def host_tools(self):
        if self._host_tools is None:
            from buildgraph.sandbox import visible_host_files

            def host_files():
                return self._resolved(("visible_host_files",), signatures.visible_host_signature(), visible_host_files)
            self._host_tools = host_tools(self.ws.host_tools, self.stat_cache, self.packages, host_files)
        return self._host_tools

    def packages(self, paths: tuple[str, ...], names: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
        """hostpkgs.packages_digest, cached in the state until the dpkg database changes; without
        one, (None, every path): nothing is owned."""
        from buildgraph import hostpkgs

        sig = hostpkgs.status_signature()
        if sig is None:
            return None, paths

        def compute():
            # Kept in the cache too, for a new workspace's first build (dpkg-query and the
            # closure: ~90 ms here): one file per set of programs, rewritten on an upgrade.
            digest, unowned = remembered(str(self.store.root / "hostpkgs" / value_digest([paths, names])), sig,
                                         lambda: hostpkgs.packages_digest(paths, names))
            return digest, tuple(unowned)
        return self._resolved(("dpkg", paths, names), sig, compute)

    def _resolved(self, key: tuple, sig, compute):
        """compute(), cached in the state's resolutions while `sig` (not None) is unchanged."""
        hit = self.state.resolutions.get(key)
        if sig is not None and hit is not None and hit[0] == sig:
            return hit[1]
        value = compute()
        if sig is not None:
            self.state.resolutions[key] = (sig, value)
            self._changed = True
        return value

    def non_hermetic(self, nodes) -> list[str]:
        """What the actions of `nodes` read from the host that their keys cannot follow."""
        found = []
        unowned = self.host_tools()[2]
        if unowned:
            found.append(f"host tools no Debian package owns (keyed by their own file only): {', '.join(unowned)}")
        for name in sorted({self.graph.nodes[n].toolchain for n in nodes} - {None}):
            for member in self.resolver.members(name):
                tc = self.ws.toolchains[member]
                if tc.provider == "host":
                    found.append(f"toolchain {member} (host): its programs and their Debian packages are keyed, "
                                 "files of other origin it reads are not")
        return list(dict.fromkeys(found))

    def tools_for(self, node: Node) -> tuple[tuple[tuple[str, str], ...], tuple[Mount, ...]]:
        """What the node's action finds on PATH (name -> target) and the store entries it needs."""
        links = dict(self.host_tools()[0])
        if not node.toolchain:
            return tuple(sorted(links.items())), ()
        resolved = self.resolver.resolve(node.toolchain)
        links.update(resolved.links)
        return tuple(sorted(links.items())), resolved.mounts

    @property
    def sandbox_mode(self) -> str:
        """The isolation mode actions run in (it is in their keys): detected once."""
        if self._sandbox_mode is None:
            from buildgraph.sandbox import detect_mode
            self._sandbox_mode = detect_mode(self.requested_sandbox, str(self.store.root))
        return self._sandbox_mode

    def action_for(self, node: Node, dep_outputs: dict[str, str]) -> Action:
        """The action of `node`, given the output digest of each dependency node."""
        t = self.ws.targets[node.target]
        srcs, hosts = self._sources(node.target)
        env = dict(node.env)
        toolchain, compilers = None, ()
        if node.toolchain:
            tc = self.resolver.resolve(node.toolchain)
            toolchain = (tc.name, tc.digest)
            env.update(tc.env)
            if t.kind in COMPILE_CACHED_KINDS:
                compilers = tc.compilers
        env.update(BASE_ENV)
        env["SOURCE_DATE_EPOCH"] = str(self.ws.source_date_epoch)
        prefix = []
        for dep_target, _ in node.deps:
            path = f"{SANDBOX_ROOT}/deps/{dep_target}"
            env[f"DEP_{env_name(dep_target)}"] = path
            prefix.append(path)
        env["DEPS_PREFIX_PATH"] = ";".join(prefix)
        source, source_fetch = self._source_of(t)
        if source is not None:
            env["SOURCE"] = f"{SANDBOX_ROOT}/source"
        builtin = t.kind == "artifact"
        commands = self._artifact_commands(node, t, dep_outputs) if builtin else node.commands
        return Action(node=node.name, commands=commands, env=tuple(sorted(env.items())),
                      toolchain=toolchain, tools_digest=self.host_tools()[1], srcs=srcs, src_paths=hosts,
                      deps=tuple(sorted((d, dep_outputs[n]) for d, n in node.deps)),
                      features=node.features, outs=tuple(dict.fromkeys(t.outs + t.licenses)),
                      weight=t.weight, jobserver=t.jobserver,
                      source=source, source_fetch=source_fetch,
                      sandbox=None if builtin else self.sandbox_mode,
                      host=() if builtin else self.host_properties(), compilers=compilers)

    def host_properties(self) -> tuple[tuple[str, str], ...]:
        """What an action can observe of this host that the sandbox cannot pin, as far as the
        workspace's `host_key` asks: the kernel release, the CPUs an action may use."""
        if self._host is None:
            values = signatures.host_values()
            self._host = tuple((p, values[p]) for p in self.ws.host_key)
        return self._host

    def _artifact_commands(self, node: Node, t, dep_outputs: dict[str, str]) -> tuple[str, ...]:
        """A built-in artifact action: its spec is its command (so all of it is in the key)."""
        from buildgraph.artifact import ARTIFACT_VERSION, spec_json
        from buildgraph.audit import policy_data_digest

        if self._release_identity is None:   # asked once, and only by builds with artifacts
            from buildgraph.repository import os_id, resolve_commit, working_tree
            self._release_identity = (resolve_commit(self.git_sha, self.ws.root) or "unknown", os_id(),
                                      working_tree(self.ws.root))
        commit, os_name, tree = self._release_identity
        assignment = dict(node.assignment)
        deps = {d: {"version": self.ws.targets[d].version, "licenses": list(self.ws.targets[d].licenses),
                    "output": dep_outputs[dn]} for d, dn in node.deps}
        toolchains = {}
        for _, dn in node.deps:
            tc = self.graph.nodes[dn].toolchain
            if tc:
                toolchains[tc] = self.resolver.resolve(tc).digest
        spec = {"backend": t.backend, "library": t.library, "policy": t.for_variant("policy", assignment),
                "wheel": t.wheel, **({"project": t.project_for(assignment)} if t.wheel else {}),
                "version": t.version or "0", "linking": assignment.get("linking", "dynamic"),
                "variant": "-".join(v for k, v in assignment.items() if k != "linking") or "default",
                "commit": commit, "working_tree": tree, "os": os_name,
                "dependencies": deps, "toolchains": toolchains, "runtime_licenses": self._runtime_licenses(node),
                "policy_data": policy_data_digest()}   # the verdict depends on auditwheel's policies
        return (f"builtin:artifact v{ARTIFACT_VERSION}", spec_json(spec))

    def _runtime_licenses(self, node: Node) -> dict[str, str]:
        """Runtime -> its licence file as the artifact's action sees it (/toolchains/<entry>/…),
        over the artifact's toolchain and the toolchains it brings along."""
        found = {}
        for member in self.resolver.members(node.toolchain) if node.toolchain else ():
            for runtime, rel in self.ws.toolchains[member].runtime_licenses:
                found.setdefault(runtime, rel if rel.startswith("/") else
                                 f"{self.resolver.sandbox_dir(member)}/install/{rel}")
        return found

    def _source_of(self, t) -> tuple[tuple | None, object]:
        """(identity for the key, what the sandbox stages) of a target's upstream source."""
        if t.source is None:
            return None, None
        if t.source.kind != "path":
            return tuple(t.source.identity()), t.source
        cached = self._srcs.get(("source", t.name))
        if cached is None:
            base = t.source.location.rstrip("/")
            def error(message: str) -> ConfigError:
                return ConfigError(message, file=t.loc.file, line=t.line_of("source"), field=field_path(t, "source"))
            found = self._stat_files(_path_source_patterns(t), lambda _: error(f"source path {base!r} holds no files"),
                                     error)
            entries = [(rel[len(base) + 1:], self._digest(host, st, error), bool(st.st_mode & 0o111))
                       for rel, host, st in found]
            files = tuple((rel, host, digest, exe) for (rel, digest, exe), (_, host, _) in zip(entries, found))
            identity = tuple(t.source.identity()) + (tree_digest(entries),)
            cached = self._srcs[("source", t.name)] = (identity, files)
        return cached

    # ------------------------------------------------------------ reuse

    def trust(self, proven) -> None:
        """Take what the no-op record proves of this build (noop.Changes, or None): unless a
        changed source cannot be traced to the targets that read it, `trusted` vouches for
        every node that reads no changed source and whose out/ is untouched."""
        self.proven, self._stale_targets = proven, None
        if proven is None:
            return
        root = f"{self.ws.root}/"
        changed = {p[len(root):] for p in proven.sources if p.startswith(root)}
        stale, found = set(), set()
        for key, value in self.state.resolutions.items():
            if key[0] == "glob" and not changed.isdisjoint(value[0]):
                stale.add(key[1])
                found.update(changed.intersection(value[0]))
        if found != changed or len(changed) != len(proven.sources):
            self.proven = None   # read by something the record does not say: check every node
            return
        readers = self.index().readers
        self._stale_targets = {name for patterns in stale for name in readers.get(patterns, ())}

    def index(self) -> TargetIndex:
        """The TargetIndex of this engine's workspace: load_configured made or loaded the two
        together, into the state this engine was given."""
        return self.state.config[3]

    def trusted(self, name: str) -> bool:
        """Whether the no-op record proves that `name`'s sources, out/ and every input of its
        key other than its dependencies' outputs are as its last build left them."""
        return self.proven is not None and name not in self.proven.outputs and \
            self.graph.nodes[name].target not in self._stale_targets

    def settled(self, selected: list[str]) -> dict[str, tuple[str, str]]:
        """Node -> (key, output digest) of the nodes in `selected` that the no-op record proves
        up to date: all but those not `trusted` and everything downstream of them (whose
        dependencies' outputs may come out otherwise), which the build checks node by node."""
        if self.proven is None:
            return {}
        nodes = self.state.nodes
        stack = [n for n in selected if not self.trusted(n) or nodes.get(n) is None or nodes[n].inputs is None]
        downstream: set[str] = set()
        while stack:
            name = stack.pop()
            if name not in downstream:
                downstream.add(name)
                stack.extend(self.graph.rdeps[name])
        return {n: (nodes[n].key, nodes[n].output_digest) for n in selected if n not in downstream}

    def unchanged(self, node: Node) -> Reuse | None:
        """UP_TO_DATE without computing the key, when everything the last key was computed
        from is equal now (as ninja compares inputs, not keys): the workspace's configuration
        (by the stat signature of its files and buildgraph's code), the host tools, toolchain,
        sandbox mode and host properties (one token per build and toolchain), the sources,
        and the dependencies' outputs; and out/<node> is intact. If it is not, CACHED from the
        recorded key (_restore_recorded). Else None: compute the key.
        For a `trusted` node only its dependencies' outputs are compared: the rest the no-op
        record proved without statting or digesting anything again."""
        rec = self.state.nodes.get(node.name)
        if rec is None or rec.inputs is None:
            return None
        if self.trusted(node.name) and rec.inputs[3] == self._dep_outputs(node):   # (…, deps) as _inputs_of
            return Reuse(Status.UP_TO_DATE, rec.output_digest)
        if rec.inputs != self._inputs_of(node):
            return None
        if self._materialized_ok(node.name, rec.output_digest):
            return Reuse(Status.UP_TO_DATE, rec.output_digest)
        return self._restore_recorded(node, rec.key)

    def _restore_recorded(self, node: Node, key: str) -> Reuse | None:
        """CACHED: out/<node> is gone or edited (`clean` keeps the node records) but its inputs
        are as recorded, so its key is the recorded one, and its result in the local cache is
        restored without computing the key. None if the cache has none it can restore: the
        node's action is computed (it may be found remotely, or run), and the local cache
        is not asked again (check)."""
        result = self.store.get_result(key)
        if result is None or not self.adopt(node, key, result):
            self._missed.add(key)
            return None
        return Reuse(Status.CACHED, result.output_digest)

    def _inputs_of(self, node: Node) -> tuple | None:
        t = self.ws.targets[node.target]
        if t.kind == "artifact":   # its key reads git's state too: always computed
            return None
        token = self._token(node.toolchain)
        deps = self._dep_outputs(node)
        if token is None or None in deps:
            return None
        path_source = self._source_of(t)[0] if t.source is not None and t.source.kind == "path" else None
        return (token, self._sources(node.target)[0], path_source, deps)

    def _dep_outputs(self, node: Node) -> tuple:
        return tuple(self.outputs.get(dn) for _, dn in node.deps)

    def _token(self, toolchain: str | None) -> str | None:
        """Everything in this build's keys that is not per node; None while the workspace's
        files are too young to vouch for (their signature is None)."""
        if toolchain not in self._tokens:
            config = self.state.config[0] if self.state.config is not None else None
            self._tokens[toolchain] = None if config is None else value_digest([
                config, self.host_tools()[1], self.sandbox_mode, self.host_properties(),
                self.resolver.resolve(toolchain).digest if toolchain else None])
        return self._tokens[toolchain]

    def check(self, node: Node, action: Action, dry_run: bool = False) -> Reuse | None:
        """How `node` can be satisfied without running, or None if it must run.

        Unless `dry_run`, a result restored from a store is materialized and recorded; one
        that cannot be materialized is dropped from the store and is a miss.
        """
        rec = self.state.nodes.get(node.name)
        if rec is not None and rec.key == action.key and self._materialized_ok(node.name, rec.output_digest):
            if not dry_run:   # the same key from other inputs' signatures: `unchanged` next time
                inputs = self._inputs_of(node)
                if rec.inputs != inputs:
                    rec.inputs = inputs
                    self._changed = True
            return Reuse(Status.UP_TO_DATE, rec.output_digest)
        if action.key in self._missed:
            return None
        result = self.store.get_result(action.key)
        if result is None:
            return None
        if not dry_run and not self.adopt(node, action.key, result, action):
            return None
        return Reuse(Status.CACHED, result.output_digest)

    def fetch_remote(self, action: Action) -> ActionResult | None:
        """The action's result from the remote cache (now also local), or None. Thread-safe."""
        return self.remote.fetch(action) if self.remote is not None else None

    def adopt(self, node: Node, key: str, result: ActionResult, action: Action | None = None) -> bool:
        """Use a result restored from a store for `key`: materialize and record it (record).
        False (the entry dropped, a warning given) if it cannot be materialized: the node must run."""
        try:
            self.materialize(node.name, result)
        except OSError as exc:
            self.store.drop_result(key)
            self.warn(f"warning: the cached result of {node.name} could not be restored ({exc}); "
                      "dropped from the cache, building it")
            return False
        self.record(node.name, key, result, action)
        return True

    def keep_first(self, node: Node, action: Action, result: ActionResult) -> ActionResult:
        """Store a result that just ran; the action cache is write-once, so if another build
        recorded a different result for the same key first, that one is used (and the node
        reported as not reproducible): every dependent, here and elsewhere, sees one output."""
        kept = self.store.put_result(action.key, result)
        if kept.output_digest != result.output_digest:
            self.warn(f"warning: {node.name} is not reproducible: its output differs from the result "
                      "another build cached for the same key; using the cached one "
                      f"(`buildgraph verify {node.name}` shows what differs)")
        return kept

    def result_of(self, name: str, key: str, output_digest: str) -> ActionResult:
        """The full result of a node satisfied this build whose outputs have `output_digest`
        (the digest its dependents' keys name; loaded lazily on the fast path).

        A dependency is staged only with exactly those outputs: from this build, the action
        cache, or out/<name> when it still hashes to them (the entry lost to gc, or replaced
        by another build's different result). StoreError if none has them.
        """
        result = self.results.get(name)
        if result is None or result.output_digest != output_digest:
            result = self.store.get_result(key, count=False)
            if result is None or result.output_digest != output_digest:
                result = self._result_from_outputs(name, output_digest)
                if result is None:
                    raise StoreError(f"the outputs of {name} are neither in the cache nor intact in "
                                     f"{self.out_dir(name)}; run `buildgraph clean` and build again")
                self.store.put_result(key, result)
        self.results[name] = result
        return result

    def _result_from_outputs(self, name: str, output_digest: str) -> ActionResult | None:
        if name in self._laying_out:
            self.finish_materializing()
        rec = self.state.nodes.get(name)
        base = str(self.out_dir(name))
        if rec is None or not os.path.isdir(base):
            return None
        result = self.store.put_tree_copy(base, rec.duration)
        return result if result.output_digest == output_digest else None

    def record(self, name: str, key: str, result: ActionResult, action: Action | None) -> None:
        """`name` has `result` this build, for `key`; `action`: the action the key was computed
        from, None when it was not (_restore_recorded: its inputs are the recorded ones)."""
        self.results[name] = result
        self.outputs[name] = result.output_digest
        self.state.nodes[name] = NodeRecord(key, result.output_digest, result.duration,
                                            self._inputs_of(self.graph.nodes[name]))
        self.new_inputs[name] = action.inputs() if action is not None else None
        self._changed = True

    # ------------------------------------------------------------ outputs

    def out_dir(self, name: str) -> Path:
        return self.state_dir.out / name

    def _trash_path(self) -> str:
        """A new name in .buildgraph/trash, where replaced outputs wait for the sandbox's
        janitor and their replacements are made; what a killed build left there is removed
        first (under the workspace's lock)."""
        if self._trashed == 0:
            force_remove(self.state_dir.trash)
            os.mkdir(self.state_dir.trash)
        self._trashed += 1
        return f"{self.state_dir.trash}/{self._trashed}"

    def _materialized_ok(self, name: str, output_digest: str) -> bool:
        """Whether out/<name> still holds exactly what was materialized there: every entry
        with the inode, size, mtime and ctime it had (an edit in place, a replaced file, a
        touched one all count as changed, and the outputs are restored)."""
        entry = self.state.materialized.get(name)
        if entry is None or entry[0] != output_digest:
            return False
        base = f"{self.state_dir.out}/{name}/"
        try:
            for rel, sig in entry[1]:
                if stat_signature(os.lstat(base + rel)) != sig:
                    return False
        except OSError:
            return False
        return True

    def materialize(self, name: str, result: ActionResult) -> None:
        """Make out/<name> hold exactly `result`'s outputs, replacing it atomically. Files are
        the workspace's own copies (reflinks where possible), never the store's inodes, and
        read-only, as Bazel's are: outputs are edited through their sources. Past the first
        LAYOUT_WORKER_AFTER of a build (a restore), worker processes lay them out
        (layout_worker.py) and they count as materialized once they have answered."""
        if self._materialized_ok(name, result.output_digest):
            return
        self._materializing += 1
        if self._materializing > LAYOUT_WORKER_AFTER and not self._layout_tried:
            self._layout_tried = True   # one worker per build at most
            try:
                self._layout = LayoutWorker()
            except OSError:   # no second process: laid out here
                pass
        if self._layout is None:
            self._materialize_here(name, result)
            return
        self.state.materialized.pop(name, None)   # not laid out until the worker says so
        self._laying_out[name] = result
        out = str(self.state_dir.out)
        try:
            self._take_answers(self._layout.submit(out, name, self.store.entries(result, read_only=True)))
        except OSError:   # the worker is gone: what it had not answered is laid out here at the end
            self._end_worker(answered=())

    def finish_materializing(self) -> None:
        """Wait for the layout worker's last answers, and lay out here what it could not (a
        directory that was there: replaced; an error: met again here, and raised)."""
        if self._layout is not None:
            try:
                answers = self._layout.finish()
            except OSError:
                answers = ()
            self._end_worker(answers)
        retry, self._layout_retry = self._layout_retry, []
        for name, result in retry:
            self._materialize_here(name, result)

    def _end_worker(self, answered) -> None:
        """The worker stopped; its answers taken, the nodes it did not answer for are retried."""
        self.end_layout_worker()
        self._take_answers(answered)
        self._take_answers([(n, "not laid out by the worker") for n in self._laying_out])

    def end_layout_worker(self) -> None:
        """Stop the layout worker (at the end, or an interrupted build's): what it has not
        answered for is not recorded as materialized, so the next build lays it out again."""
        if self._layout is not None:
            self._layout.close()
            self._layout = None

    def _take_answers(self, answers) -> None:
        for name, answer in answers:
            result = self._laying_out.pop(name)
            if isinstance(answer, tuple):
                self.state.materialized[name] = (result.output_digest, answer)
                self._changed = True
            else:   # its directory was there, or an error: finish_materializing sees to it
                self._layout_retry.append((name, result))

    def _materialize_here(self, name: str, result: ActionResult) -> None:
        out = str(self.state_dir.out)
        entries = self.store.entries(result, read_only=True)
        listing = lay_out_new(out, name, entries)
        if listing is None:   # out/<name> is there: replaced whole, readers see the old outputs or the new
            # The new one is made in the trash directory and moved in: a directory made in
            # out/ pays for out/'s hint (make_top_dir), a scan of every block group (0.37 ms
            # here, against 0.03 ms elsewhere), on the path from one action of a chain to the next.
            new = self._trash_path()
            os.mkdir(new)
            listing = fill_new_dir(new, entries)
            trash = self._trash_path()
            os.replace(f"{out}/{name}", trash)
            os.replace(new, f"{out}/{name}")
            if self.sandbox is not None:   # in a build: the next action of a chain need not wait
                self.sandbox.remove_later(trash)
            else:
                force_remove(trash)
        self.state.materialized[name] = (result.output_digest, listing)
        self._changed = True

    def changed(self) -> bool:
        """Whether this build changed the state (a no-op build does not)."""
        return self._changed or self.stat_cache.dirty

    def describe_failure(self, node: Node, action: Action, outcome) -> tuple[str, str, str | None]:
        """(error, log, failed command) of a failed action as its user reads them: the error
        names the BUILD.yaml line of the failing command or of the declared outputs, the log
        names workspace files and materialized outputs instead of the sandbox's copies."""
        from buildgraph import failures

        t = self.ws.targets[node.target]
        outs = {d: self.out_dir(dn) for d, dn in node.deps}
        log = failures.readable_log(outcome.log, str(self.store.sandboxes), self.ws.root,
                                    {d: p for d, p in outs.items() if p.is_dir()})
        step = failures.failed_step(outcome.log, action.commands)
        field = None
        if step is not None:
            field = recipes.steps(t, t.matching(dict(node.assignment)))[step][0]
        elif outcome.missing is not None:
            field = failures.output_field(t, outcome.missing)
        error = f"{failures.declared_at(self.ws.root, t, field)}: {outcome.error}" if field else outcome.error
        return error, log, action.commands[step] if step is not None else None

    def write_log(self, name: str, log: str) -> None:
        """Keep a failed node's log; an empty one is not kept (no path to an empty file is shown),
        and a log from an earlier failure goes, so no stale one is read as this one."""
        path = self.state_dir.logs / f"{name}.log"
        if not log.strip():
            path.unlink(missing_ok=True)
            return
        self.state_dir.logs.mkdir(parents=True, exist_ok=True)
        path.write_text(log)
