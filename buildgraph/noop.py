"""The no-op check: prove from stat signatures alone, before the state or the workspace
is loaded, that a build would do nothing.

A build that ends with every node it selected done writes .buildgraph/noop.marshal
(StateDir.save removes it before any other state is written, so it never outlives the
state it describes):
  request   what was asked: the target patterns, the sandbox, the toolchain directory
  facts     host_facts(): where PATH finds the host tools, what picks the sandbox mode,
            the host properties in keys, dpkg's database, the keyed /etc files; taken
            before the build read any of it (a change while it ran fails the next check)
  config    signatures.files_signature of the workspace's files (buildgraph's code too)
  fixed     (path, stat signature) of the host tools and the toolchains' executables
            and records
  dirs      the same of every directory a glob read
  sources   the same of every source file
  outputs   per node, (path, lstat signature) of every file materialized under out/<node>
The next build with the same request, if all of these are unchanged, is a no-op: every
key would come out the same (each is a function of exactly these; file digests come
from the stat cache, which trusts one exactly as long as its stat signature holds),
and every output is in place. It prints the summary and exits, having read one file
and statted each input once, instead of loading the graph and computing every key.
If only source files and outputs changed, the check returns what changed (Changes): the
build then trusts every node that reads no changed source and whose out/ is untouched,
and checks only the changed nodes and what lies downstream of them (Engine.trust,
Engine.settled), as ninja does from its log. Anything else (another request, a tool, a
toolchain, a directory, the workspace's files, no record) is the normal build.
Builds selecting artifact nodes write no record: their keys read git's state.
"""

from __future__ import annotations

import marshal
import os
import time
from pathlib import Path

from buildgraph import resident, signatures
from buildgraph.digest import is_racy, stat_signature

RECORD = "noop.marshal"   # in .buildgraph/
VERSION = 3


def request(patterns, sandbox: str, toolchain_dir) -> tuple:
    """What a build was asked, as far as its keys can tell."""
    return (tuple(patterns), sandbox, str(toolchain_dir))


def host_facts(tools: tuple[str, ...], sandbox: str, host_key: tuple[str, ...]) -> tuple:
    """What the keys read of this host besides files: computed the same way by the build
    that writes a record and by the check that reads it."""
    from buildgraph import hostpkgs

    values = signatures.host_values()
    return (signatures.host_programs(tools), signatures.sandbox_facts(sandbox), tuple(values[p] for p in host_key),
            hostpkgs.status_signature(), signatures.visible_host_signature())


class Changes:
    """What the record proves of a build that is not a no-op, when all that changed since it
    are source files and materialized outputs: every key and output of a node that reads
    none of `sources` (host paths), is not in `outputs`, and whose dependencies' outputs
    come out as before, is as recorded (Engine.trust). A plain class: the no-op check's
    import stays as light as it can (a dataclass takes ~1 ms to make)."""

    __slots__ = ("sources", "outputs", "source_sigs", "dirs", "record", "node_outputs", "nodes", "facts")

    def __init__(self, sources: frozenset, outputs: frozenset, source_sigs: tuple, dirs: tuple, record: tuple,
                 node_outputs: tuple, nodes: tuple, facts: tuple):
        self.sources, self.outputs = sources, outputs
        self.facts = facts   # host_facts() as the check found them, before the build read the host
        self.source_sigs = source_sigs   # the record's (path, stat signature) of every source file
        self.dirs = dirs                 # and of every directory its globs read
        self.record = record             # the record's own stat signature (still_current)
        # The record's outputs and (name, key) of each node: the next record is them, patched.
        self.node_outputs, self.nodes = node_outputs, nodes


def still_current(root: Path, changes: Changes) -> bool:
    """Whether the record `changes` came from is still the workspace's: a build that got the
    workspace lock in between removed or replaced it (StateDir.save drops it first)."""
    try:
        return stat_signature(os.stat(f"{root}/.buildgraph/{RECORD}")) == changes.record
    except OSError:
        return False


def check(root: Path, request: tuple) -> tuple | Changes | None:
    """The (name, key) of each node the last build of `request` selected, if this build of
    it would do nothing; Changes if only source files and outputs changed; else None."""
    try:
        record, own = resident.read(f"{root}/.buildgraph", RECORD, marshal.loads)
        version, asked, tools, host_key, facts, files, config, fixed, dirs, sources, outputs, nodes = record
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if version != VERSION or asked != request:
        return None
    now = host_facts(tools, request[1], host_key)
    if now != facts:
        return None
    if signatures.files_signature(root, files) != config:
        return None
    try:
        for entries in (fixed, dirs):
            for path, sig in entries:
                if stat_signature(os.stat(path)) != sig:
                    return None
    except OSError:
        return None
    changed = []
    for path, sig in sources:
        try:
            if stat_signature(os.stat(path)) != sig:
                changed.append(path)
        except OSError:   # deleted: a glob's directory changed too, unless it was named alone
            changed.append(path)
    moved = []
    for name, entries in outputs:
        try:
            for path, sig in entries:
                if stat_signature(os.lstat(path)) != sig:
                    moved.append(name)
                    break
        except OSError:
            moved.append(name)
    if not changed and not moved:
        return nodes
    return Changes(frozenset(changed), frozenset(moved), sources, dirs, own, outputs, nodes, now)


def record(engine, request: tuple, selected: list[str], facts: tuple) -> bytes | None:
    """The record of a build that just finished every node in `selected`, or None when one
    cannot be trusted (artifacts, a file too young to vouch for, a toolchain not resolved).
    `facts`: host_facts() taken before the build read the host, so that whatever changed
    while it ran fails the next check. After a build that trusted Changes (engine.proven),
    the sources and directories it did not read again are as the record they came from says."""
    ws, graph, state = engine.ws, engine.graph, engine.state
    config = state.config[0] if state.config is not None else None
    if config is None:
        return None
    now = time.time_ns()
    fixed: dict[str, tuple] = {}
    sources: dict[str, tuple] = {}

    def known(path: str, into: dict) -> bool:
        """Add the signature the stat cache trusts for `path` (absent: it was too young)."""
        hit = engine.stat_cache.entries.get(path)
        if hit is None:
            return False
        into[path] = hit[0]
        return True

    def fresh(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if is_racy(st, now):
            return False
        fixed[path] = stat_signature(st)
        return True
    nodes = [graph.nodes[name] for name in selected]
    artifacts = engine.index().artifacts
    if any(node.target in artifacts for node in nodes):
        return None
    links = engine.host_tools()[0]
    if not all(known(path, fixed) for _, path in links):
        return None
    for tc in dict.fromkeys(n.toolchain for n in nodes if n.toolchain):
        for member in engine.resolver.members(tc):
            entry = engine.resolver.entry_if_resolved(member)
            # Not while a program changed since it was fetched: every build warns of that.
            if entry is None or not fresh(f"{entry.path}/digest.json") or \
                    not all(fresh(path) and fixed[path] == sig for path, sig in entry.watch):
                return None
    files, dirs = engine.sources_read()
    proven = engine.proven
    if proven is not None:   # what this build did not read is as before, but for what changed
        sources.update(proven.source_sigs)
        dirs = {**dict(proven.dirs), **dirs}
        files = [*files, *proven.sources]
    if not all(known(path, sources) for path in files) or None in dirs.values():
        return None
    base = engine.state_dir.out

    def entries(name: str) -> tuple | None:
        """(name, (path, lstat signature) of each file materialized in out/<name>)."""
        done = state.materialized.get(name)
        return None if done is None else (name, tuple((f"{base}/{name}/{rel}", sig) for rel, sig in done[1]))
    if proven is not None and [name for name, _ in proven.nodes] == selected:
        # The state this build loaded is the one the record describes (still_current), and
        # only the nodes it recorded (Engine.record, after materializing them) differ from
        # it: the rest of the record stands.
        outputs, nodes = list(proven.node_outputs), list(proven.nodes)
        at = {name: i for i, (name, _) in enumerate(proven.nodes)}
        for name in engine.new_inputs:
            i = at.get(name)
            if i is not None:
                outputs[i], nodes[i] = entries(name), (name, state.nodes[name].key)
    else:
        outputs = [entries(name) for name in selected]
        nodes = [(name, state.nodes[name].key) for name in selected]
    if None in outputs:
        return None
    return marshal.dumps((VERSION, request, tuple(ws.host_tools), tuple(ws.host_key), facts, tuple(ws.files),
                          config, tuple(fixed.items()), tuple(dirs.items()), tuple(sources.items()),
                          tuple(outputs), tuple(nodes)))
