"""Remote execution benchmark: the demo on BuildGrid with two buildgraph workers vs local -j2.

    .venv/bin/python bench/remote_exec.py

Starts PostgreSQL, BuildGrid (SQL scheduler) and two workers on loopback (as the tests do;
needs `bash .ci/setup --tests`), builds the demo cold locally with -j2 and cold remotely,
and measures the per-action overhead of going remote: N independent one-command actions
remote vs local at -j1. Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from servers import BuildGridServer, PostgresServer, WorkerProcess  # noqa: E402

BG = [sys.executable, "-m", "buildgraph"]


def build(ws: Path, cache: Path, *extra) -> float:
    t = time.perf_counter()
    subprocess.run(BG + ["build", "-C", str(ws), "--cache-dir", str(cache), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def tiny_workspace(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    lines = ["targets:"] + [f"  a{i}: {{kind: script, outs: [o], cmds: [\"echo {i} > $OUT/o\"]}}" for i in range(n)]
    (root / "BUILD.yaml").write_text("\n".join(lines) + "\n")
    return root


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bg-rexec-bench-"))
    pg = bgd = None
    workers = []
    try:
        pg = PostgresServer(base / "pg")
        bgd = BuildGridServer(base / "bgd", pg.dsn)
        workers = [WorkerProcess(base / f"w{i}", bgd.url) for i in (1, 2)]
        demo_local, demo_remote = base / "demo-local", base / "demo-remote"
        for d in (demo_local, demo_remote):
            shutil.copytree(REPO / "examples" / "demo", d, ignore=shutil.ignore_patterns(".buildgraph"))
        local = build(demo_local, base / "c-local", "-j2")
        remote = build(demo_remote, base / "c-remote", "-j2", "--remote-executor", bgd.url)
        print(f"demo (14 actions): local -j2 {local:.2f} s, two workers {remote:.2f} s, "
              f"ratio remote/local {remote / local:.2f}")
        n = 30
        t_local = build(tiny_workspace(base / "tiny-local", n), base / "t-local", "-j1")
        t_remote = build(tiny_workspace(base / "tiny-remote", n), base / "t-remote", "-j1",
                         "--remote-executor", bgd.url)
        print(f"per action ({n} one-command actions, -j1): local {t_local / n * 1e3:.0f} ms, "
              f"remote {t_remote / n * 1e3:.0f} ms, overhead of going remote {(t_remote - t_local) / n * 1e3:.0f} ms")
    finally:
        for w in workers:
            w.stop()
        if bgd:
            bgd.stop()
        if pg:
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
