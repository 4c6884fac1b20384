"""Generate the scale benchmark's N-node graph for buildgraph, ninja, make and Bazel.

The graph is a binary tree: node i cats its own source and the outputs of nodes
2i+1 and 2i+2 (those below N). Node 0 is the root; the leaves are the upper half.
Every tool runs the same command on the same inputs: cat, in that order.
"""

from __future__ import annotations

import sys
from pathlib import Path

BAZEL_OFFLINE = Path(__file__).resolve().parents[2] / "shared" / "notes" / "bazel-offline"


def deps_of(i: int, n: int) -> list[int]:
    return [d for d in (2 * i + 1, 2 * i + 2) if d < n]


def generate(root: Path, n: int, bazel_user_root: Path | None = None) -> None:
    (root / "src").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "src" / f"n{i}.txt").write_text(f"node {i}\n")
    yaml = ["workspace: bench", "host_tools: [cat]", "targets:"]
    ninja = ["rule step", "  command = cat $in > $out", ""]
    make = [".PHONY: all", "all: out/n0", "", "out:", "\tmkdir -p out", ""]
    bazel = []
    for i in range(n):
        deps = deps_of(i, n)
        yaml.append(f"  n{i}:")
        yaml.append("    kind: script")
        yaml.append(f"    srcs: [src/n{i}.txt]")
        if deps:
            yaml.append(f"    deps: [{', '.join(f'n{d}' for d in deps)}]")
        yaml.append("    outs: [o]")
        reads = "".join(f" $DEP_N{d}/o" for d in deps)
        yaml.append(f"    cmds: [\"cat $SRC/src/n{i}.txt{reads} > $OUT/o\"]")
        dep_outs = [f"out/n{d}" for d in deps]
        ninja.append(f"build out/n{i}: step src/n{i}.txt {' '.join(dep_outs)}".rstrip())
        make.append(f"out/n{i}: {' '.join([f'src/n{i}.txt'] + dep_outs)} | out")
        make.append("\tcat $^ > $@")
        srcs = ", ".join([f'"src/n{i}.txt"'] + [f'":n{d}"' for d in deps])
        bazel.append(f'genrule(name = "n{i}", srcs = [{srcs}], outs = ["n{i}.out"], cmd = "cat $(SRCS) > $@")')
    (root / "BUILD.yaml").write_text("\n".join(yaml) + "\n")
    (root / "build.ninja").write_text("\n".join(ninja) + "\n")
    (root / "Makefile").write_text("\n".join(make) + "\n")
    (root / "BUILD.bazel").write_text("\n".join(bazel) + "\n")
    (root / "WORKSPACE").write_text(
        'workspace(name = "gen")\n'
        f'local_repository(name = "rules_cc", path = "{BAZEL_OFFLINE / "rules_cc_stub"}")\n'
        f'local_repository(name = "rules_java", path = "{BAZEL_OFFLINE / "rules_java_stub"}")\n'
        'local_repository(name = "platforms", path = "/usr/share/bazel/platforms")\n')
    if bazel_user_root is not None:
        (root / ".bazelrc").write_text(f"startup --output_user_root={bazel_user_root}\n")


if __name__ == "__main__":
    generate(Path(sys.argv[1]), int(sys.argv[2]))
