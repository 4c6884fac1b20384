"""Scale benchmark: buildgraph vs ninja vs GNU make on generated N-node graphs.

    python bench/scale.py [N ...]          (default: 1000 10000)

For each N: cold build, no-op rebuild (best of 3) and one-leaf-change rebuild,
for all three tools on equivalent generated files, in this one process tree.
Also the per-action overhead: buildgraph running N independent one-command
actions at -j1 against the same commands run bare, one process each. Prints
figures and ratios; asserts nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genworkspace import generate  # noqa: E402

BG = [sys.executable, "-m", "buildgraph"]


def timed(cmd, cwd, env=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def touch_leaf(root: Path, n: int, round_: int) -> None:
    (root / "src" / f"n{n - 1}.txt").write_text(f"node {n - 1} edit {round_}\n")


def bench_tool(name, cold_cmd, noop_cmd, root, n, env=None) -> dict:
    cold = timed(cold_cmd, root, env)
    noop = min(timed(noop_cmd, root, env) for _ in range(3))
    leaf = []
    for r in range(3):
        touch_leaf(root, n, r)
        leaf.append(timed(noop_cmd, root, env))
    return {"tool": name, "cold": cold, "noop": noop, "leaf": min(leaf)}


def run_scale(n: int, base: Path, sandbox: str) -> list[dict]:
    rows = []
    for tool in ("buildgraph", "ninja", "make"):
        root = base / f"{tool}-{n}"
        generate(root, n)
        if tool == "buildgraph":
            cmd = BG + ["build", "-j2", "--sandbox", sandbox, "--cache-dir", str(base / f"cache-{n}")]
            rows.append(bench_tool(f"buildgraph ({sandbox})", cmd, cmd, root, n))
        elif tool == "ninja":
            rows.append(bench_tool("ninja", ["ninja", "-j2"], ["ninja", "-j2"], root, n))
        else:
            rows.append(bench_tool("make", ["make", "-j2"], ["make", "-j2"], root, n))
    return rows


def per_action_overhead(n: int, base: Path, sandbox: str) -> tuple[float, float]:
    root = base / f"overhead-{sandbox}"
    (root / "src").mkdir(parents=True)
    lines = ["host_tools: [sh, cat]", "targets:"]
    for i in range(n):
        (root / "src" / f"f{i}").write_text(f"{i}\n")
        lines += [f"  a{i}: {{kind: script, srcs: [src/f{i}], outs: [o], cmds: [\"cat $SRC/src/f{i} > $OUT/o\"]}}"]
    (root / "BUILD.yaml").write_text("\n".join(lines) + "\n")
    bg = timed(BG + ["build", "-j1", "--sandbox", sandbox, "--cache-dir", str(root / ".cache")], root)
    out = root / "bare"
    out.mkdir()
    t = time.perf_counter()
    for i in range(n):
        subprocess.run(["sh", "-c", f"cat src/f{i} > bare/o{i}"], cwd=root, check=True)
    bare = time.perf_counter() - t
    return bg / n, bare / n


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parent.parent / "buildgraph")])
    from buildgraph.sandbox import detect_mode
    sandbox = detect_mode()
    base = Path(tempfile.mkdtemp(prefix="bg-bench-"))
    try:
        print(f"{'nodes':>6}  {'tool':<20} {'cold s':>8} {'no-op s':>8} {'1 leaf s':>8}   ratios vs ninja (no-op, leaf)")
        for n in sizes:
            rows = run_scale(n, base, sandbox)
            ninja = next(r for r in rows if r["tool"] == "ninja")
            for r in rows:
                print(f"{n:>6}  {r['tool']:<20} {r['cold']:8.3f} {r['noop']:8.3f} {r['leaf']:8.3f}   "
                      f"{r['noop'] / ninja['noop']:6.1f}x {r['leaf'] / ninja['leaf']:6.1f}x")
        for mode in dict.fromkeys((sandbox, "none")):
            bg, bare = per_action_overhead(500, base, mode)
            print(f"per-action ({mode:>7}): buildgraph {bg * 1e3:.2f} ms, bare command {bare * 1e3:.2f} ms, "
                  f"overhead {(bg - bare) * 1e3:.2f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
