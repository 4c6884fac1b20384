"""`buildgraph graph` as a picture: Graphviz dot, and svg/png through Graphviz's `dot`.

What makes the picture readable rather than a hairball:
  - transitive reduction: an edge a -> c is left out when a path a -> b -> c shows it
    already (every dependency is still reachable; `--all-edges` draws them all);
  - shape by kind: cmake a component, make and autotools a box, a script an ellipse,
    an artifact a 3-d box (what ships);
  - variants clustered: nodes of one variant in one box, nested by axis (cpu holds
    cpu-static and cpu-dynamic); nodes that read no axis outside every box;
  - colour by each node's last outcome (green ran, blue restored from a cache, red failed,
    yellow skipped or cancelled; white built earlier; dashed never built).
"""

from __future__ import annotations

import shutil
import subprocess

from buildgraph.errors import UsageError

SHAPES = {"cmake": "component", "make": "box", "autotools": "box", "script": "ellipse", "artifact": "box3d"}
COLOURS = {"ran": "palegreen", "cached": "lightblue", "failed": "salmon", "skipped": "khaki",
           "cancelled": "khaki"}
LEGEND = "green: ran   blue: restored from a cache   red: failed   yellow: skipped   white: built earlier   " \
         "dashed: never built"


def edges(graph, selected: list[str], all_edges: bool = False) -> list[tuple[str, str]]:
    """Dependency -> dependent edges among `selected`, transitively reduced unless `all_edges`."""
    import networkx as nx

    g = graph.to_networkx().subgraph(selected)
    if not all_edges:
        g = nx.transitive_reduction(g)
    return sorted(g.edges)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(graph, ws, selected: list[str], outcomes: dict[str, str], built: set[str],
           all_edges: bool = False) -> str:
    """The dot text of the `selected` nodes; `outcomes`: node -> its last outcome (ran, cached,
    failed, skipped, cancelled); `built`: the nodes whose outputs are in out/."""
    axes = [a for a, _ in ws.axes]
    groups: dict[tuple, list[str]] = {}   # a node's variant values, in axis order -> its nodes
    for name in selected:
        assignment = dict(graph.nodes[name].assignment)
        groups.setdefault(tuple(assignment[a] for a in axes if a in assignment), []).append(name)
    boxes = sorted({path[:k] for path in groups for k in range(1, len(path) + 1)})   # cpu, cpu-static, ...

    def node_line(name: str, indent: str) -> str:
        t = ws.targets[graph.nodes[name].target]
        outcome = outcomes.get(name)
        attrs = {"shape": SHAPES.get(t.kind, "box"), "style": "filled" if outcome or name in built else "dashed",
                 "fillcolor": COLOURS.get(outcome, "white"), "label": name,
                 "tooltip": f"{t.kind}: {t.description or name}" + (f" ({outcome})" if outcome else "")}
        return indent + _quote(name) + " [" + ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items()) + "];"

    lines = ["digraph buildgraph {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
             f"  labelloc=b; fontsize=9; label={_quote(LEGEND)};"]

    def emit(outer: tuple, indent: str) -> None:
        """The boxes directly inside `outer`, each with its nodes and its own boxes."""
        for box in (b for b in boxes if b[:-1] == outer):
            lines.append(f"{indent}subgraph {_quote('cluster_' + '-'.join(box))} {{")
            lines.append(f'{indent}  label={_quote("-".join(box))}; style="rounded"; color="grey60";')
            lines.extend(node_line(n, indent + "  ") for n in sorted(groups.get(box, ())))
            emit(box, indent + "  ")
            lines.append(f"{indent}}}")

    lines.extend(node_line(n, "  ") for n in sorted(groups.get((), ())))
    emit((), "  ")
    lines.extend(f"  {_quote(a)} -> {_quote(b)};" for a, b in edges(graph, selected, all_edges))
    lines.append("}")
    return "\n".join(lines) + "\n"


def image(dot_text: str, fmt: str) -> bytes:
    """`dot_text` laid out by Graphviz as svg or png."""
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(f"--format {fmt} needs Graphviz's dot (apt-get install graphviz); "
                         "--format dot prints the text to lay out elsewhere")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    if proc.returncode != 0:
        raise UsageError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
