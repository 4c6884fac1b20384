"""Configure targets x variants into a DAG of nodes; select, order and render it.

A node is a target together with the values of the variant axes it depends on:
the axes it reads itself plus those its dependencies depend on. A target that
reads nothing and depends on nothing that reads anything is one node shared by
every variant. Node names are stable: `target` or `target@v1-v2` with values in
the order BUILD.yaml declares the axes (e.g. `backend@cu130-static`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from buildgraph import recipes
from buildgraph.errors import ConfigError, UsageError, did_you_mean
from buildgraph.workspace import Target, Workspace, field_path


@dataclass(frozen=True)
class Node:
    name: str
    target: str
    assignment: tuple[tuple[str, str], ...]   # every axis this node depends on (naming)
    features: tuple[tuple[str, str], ...]     # axes the target itself reads (in the key)
    deps: tuple[tuple[str, str], ...]         # (dep target, dep node name)
    commands: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    toolchain: str | None = None              # the target's, or a matching `when`'s
    estimate: float | None = None             # the target's declared duration, for scheduling


def node_name(target: str, values: list[str]) -> str:
    return f"{target}@{'-'.join(values)}" if values else target


def _find_cycle_path(ws: Workspace) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        color[name] = 1
        stack.append(name)
        for dep in ws.targets[name].all_deps():
            if color.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in color and (found := visit(dep)):
                return found
        stack.pop()
        color[name] = 2
        return None

    for name in ws.targets:
        if name not in color and (found := visit(name)):
            return found
    return None


def _target_order(ws: Workspace) -> list[str]:
    """Targets with dependencies first; ConfigError naming the cycle if there is one."""
    cycle = _find_cycle_path(ws)
    if cycle:
        first = ws.targets[cycle[0]]
        raise ConfigError("dependency cycle: " + " → ".join(cycle), file=first.loc.file,
                          line=first.line_of("deps"), field=field_path(first, "deps"),
                          hint="remove one of these dependencies")
    order, done = [], set()

    def visit(name):
        if name in done:
            return
        done.add(name)
        for dep in ws.targets[name].all_deps():
            visit(dep)
        order.append(name)

    for name in ws.targets:
        visit(name)
    return order


class BuildGraph:
    """The configured DAG. `nodes` is in topological order (dependencies first)."""

    def __init__(self, nodes: dict[str, Node]):
        self.nodes = nodes
        self.rdeps: dict[str, list[str]] = {n: [] for n in nodes}
        for node in nodes.values():
            for _, dep in node.deps:
                self.rdeps[dep].append(node.name)
        self.by_target: dict[str, list[str]] = {}
        for node in nodes.values():
            self.by_target.setdefault(node.target, []).append(node.name)

    # ---------------------------------------------------------- selection

    def resolve(self, pattern: str) -> list[str]:
        """Nodes named by `pattern`: a node name, a target name, or target@some-values."""
        if pattern in self.nodes:
            return [pattern]
        if pattern in self.by_target:
            return list(self.by_target[pattern])
        target, _, values = pattern.partition("@")
        if target in self.by_target and values:
            wanted = set(values.split("-"))
            found = [n for n in self.by_target[target]
                     if wanted <= {v for _, v in self.nodes[n].assignment}]
            if found:
                return found
        hint = did_you_mean(pattern, list(self.nodes) + list(self.by_target))
        raise UsageError(f"no node or target named '{pattern}'" + (f"; {hint}" if hint else ""))

    def closure(self, roots) -> list[str]:
        """`roots` and everything they depend on, in topological order."""
        wanted: set[str] = set()
        todo = list(roots)
        while todo:
            n = todo.pop()
            if n not in wanted:
                wanted.add(n)
                todo.extend(d for _, d in self.nodes[n].deps)
        return [n for n in self.nodes if n in wanted]

    def select(self, patterns) -> list[str]:
        if not patterns:
            return list(self.nodes)
        return self.closure(n for p in patterns for n in self.resolve(p))

    # ---------------------------------------------------------- analysis

    def critical_path(self, selected: list[str], durations: dict[str, float],
                      default: float = 1.0) -> tuple[dict[str, float], list[str]]:
        """Per node, the longest duration from its start to the end of the build; and the path.
        A node's duration is the recorded one, else its target's `estimate`, else `default`."""
        chosen = set(selected)
        remaining: dict[str, float] = {}
        nxt: dict[str, str | None] = {}
        for name in reversed(selected):
            best, best_next = 0.0, None
            for r in self.rdeps[name]:
                if r in chosen and remaining[r] > best:
                    best, best_next = remaining[r], r
            own = durations.get(name)
            if own is None:
                own = self.nodes[name].estimate if self.nodes[name].estimate is not None else default
            remaining[name] = own + best
            nxt[name] = best_next
        path: list[str] = []
        if remaining:
            cur = max((n for n in selected if not any(d in chosen for _, d in self.nodes[n].deps)),
                      key=lambda n: remaining[n], default=None)
            while cur is not None:
                path.append(cur)
                cur = nxt[cur]
        return remaining, path

    def to_networkx(self):
        import networkx as nx

        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.name, target=node.target, features=dict(node.assignment))
            for _, dep in node.deps:
                g.add_edge(node.name, dep)
        return g

    def deps_of(self, name: str, transitive: bool = True) -> list[str]:
        if not transitive:
            return [d for _, d in self.nodes[name].deps]
        import networkx as nx
        return sorted(nx.descendants(self.to_networkx(), name))

    def rdeps_of(self, name: str, transitive: bool = True) -> list[str]:
        if not transitive:
            return sorted(self.rdeps[name])
        import networkx as nx
        return sorted(nx.ancestors(self.to_networkx(), name))

    def to_json(self, selected: list[str]) -> dict:
        return {"nodes": [{"name": n, "target": self.nodes[n].target,
                           "features": dict(self.nodes[n].assignment),
                           "deps": [d for _, d in self.nodes[n].deps]} for n in selected]}


def configure(ws: Workspace) -> BuildGraph:
    """Expand every target over the variant axes it depends on; ConfigError on a cycle."""
    order = _target_order(ws)
    axes = dict(ws.axes)
    axis_rank = {a: i for i, a in enumerate(axes)}
    effective: dict[str, tuple[str, ...]] = {}
    for name in order:
        t = ws.targets[name]
        axes_used = set(t.features)
        for dep in t.all_deps():
            axes_used.update(effective[dep])
        effective[name] = tuple(sorted(axes_used, key=axis_rank.__getitem__))

    nodes: dict[str, Node] = {}
    for name in order:
        t = ws.targets[name]
        eff = effective[name]
        for values in itertools.product(*(axes[a] for a in eff)):
            assignment = dict(zip(eff, values))
            nodes[node_name(name, list(values))] = _make_node(t, assignment, eff, effective)
    _check_static_licences(ws, nodes)
    return BuildGraph(nodes)


def _check_static_licences(ws: Workspace, nodes: dict[str, Node]) -> None:
    """Refuse, before anything builds, to link a copyleft dependency statically into a shipped artifact."""
    from buildgraph.workspace import STATIC_DENY

    for node in nodes.values():
        t = ws.targets[node.target]
        if t.kind != "artifact" or dict(node.assignment).get("linking") != "static":
            continue
        todo, seen = [d for _, d in node.deps], set()
        while todo:
            dep = nodes[todo.pop()]
            if dep.name in seen:
                continue
            seen.add(dep.name)
            todo.extend(d for _, d in dep.deps)
            lic = ws.targets[dep.target].license
            if lic.startswith(STATIC_DENY):
                dt = ws.targets[dep.target]
                raise ConfigError(f"{node.name} would link {dep.target} ({lic}) statically into a shipped artifact",
                                  file=dt.loc.file, line=dt.line_of("license"), field=field_path(dt, "license"),
                                  hint="ship it as a shared library (the dynamic variant) or drop it from this variant")


def _make_node(t: Target, assignment: dict[str, str], eff, effective) -> Node:
    matched = t.matching(assignment)
    dep_targets = list(dict.fromkeys(list(t.deps) + [d for w in matched for d in w.deps]))
    deps = tuple((d, node_name(d, [assignment[a] for a in effective[d]])) for d in dep_targets)
    env = dict(t.env)
    for w in matched:
        env.update(w.env)
    features = tuple((a, assignment[a]) for a in t.features)
    for axis, value in features:
        env[f"BG_{axis.upper()}"] = value
    return Node(name=node_name(t.name, [assignment[a] for a in eff]), target=t.name,
                assignment=tuple(assignment.items()), features=tuple(sorted(features)), deps=deps,
                commands=recipes.commands(t, matched), env=tuple(sorted(env.items())),
                toolchain=t.for_variant("toolchain", assignment),
                estimate=t.estimate)
