"""Generate an N-node workspace plus equivalent build.ninja and Makefile.

Node i reads its own source file and the first bytes of up to two earlier
nodes' outputs (i-1 within a chain of 10, and i//3), so the graph is wide and
layered like a real dependency stack. The ninja and make files run the same
command on the same inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def deps_of(i: int) -> list[int]:
    out = []
    if i % 10:
        out.append(i - 1)
    if i >= 3 and (i // 3) not in out and i // 3 != i:
        out.append(i // 3)
    return out


def generate(root: Path, n: int) -> None:
    (root / "src").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "src" / f"n{i}.txt").write_text(f"node {i}\n")
    lines = ["workspace: bench", "host_tools: [sh, cat, head]", "targets:"]
    ninja = ["rule step", "  command = sh -c 'cat $in > $out.tmp; for d in $reads; do head -c 16 $$d >> $out.tmp; done; mv $out.tmp $out'", ""]
    make = [".PHONY: all", f"all: {' '.join(f'out/n{i}' for i in range(n))}", ""]
    for i in range(n):
        deps = deps_of(i)
        dep_reads = "".join(f"; head -c 16 $DEP_N{d}/o >> $OUT/o" for d in deps)
        lines.append(f"  n{i}:")
        lines.append("    kind: script")
        lines.append(f"    srcs: [src/n{i}.txt]")
        if deps:
            lines.append(f"    deps: [{', '.join(f'n{d}' for d in deps)}]")
        lines.append("    outs: [o]")
        lines.append(f"    cmds: [\"cat $SRC/src/n{i}.txt > $OUT/o{dep_reads}\"]")
        dep_outs = " ".join(f"out/n{d}" for d in deps)
        ninja.append(f"build out/n{i}: step src/n{i}.txt | {dep_outs}".rstrip(" |"))
        ninja.append(f"  reads = {dep_outs}")
        make.append(f"out/n{i}: src/n{i}.txt {dep_outs}")
        make.append(f"\t@mkdir -p out; cat src/n{i}.txt > $@.tmp; for d in {dep_outs}; do head -c 16 $$d >> $@.tmp; done; mv $@.tmp $@")
    (root / "BUILD.yaml").write_text("\n".join(lines) + "\n")
    (root / "build.ninja").write_text("\n".join(ninja) + "\n")
    (root / "Makefile").write_text("\n".join(make) + "\n")


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]))
