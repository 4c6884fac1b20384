"""Remote cache benchmark, against real servers on loopback (nginx WebDAV, BuildGrid).

    .venv/bin/python bench/remote.py [--mb 500]

For each server: (1) the demo workspace built cold (empty local and remote caches)
vs rebuilt on an empty local cache against the warm remote — the ratio is what a CI
job following another gains; (2) restore throughput of one action whose outputs are
a 500 MB set of files (10 x 50 MB), from the warm remote into an empty local cache.
Prints figures and ratios; asserts nothing. Needs `bash .ci/setup --tests`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from servers import BuildGridServer, NginxServer  # noqa: E402

BG = [sys.executable, "-m", "buildgraph"]


def build(ws: Path, cache: Path, url: str) -> float:
    t = time.perf_counter()
    subprocess.run(BG + ["build", "-C", str(ws), "--cache-dir", str(cache), "--remote-cache", url, "-j2"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def fresh(ws: Path, cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(ws / ".buildgraph", ignore_errors=True)


def big_workspace(root: Path, mb: int) -> Path:
    root.mkdir(parents=True)
    files, size = 10, mb // 10
    (root / "BUILD.yaml").write_text(
        "targets:\n  big:\n    kind: script\n    outs: [data/]\n    cmds:\n"
        "      - mkdir $OUT/data\n"
        f"      - for i in $(seq 1 {files}); do head -c {size}M /dev/urandom > $OUT/data/part$i; done\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "buildgraph")])
    base = Path(tempfile.mkdtemp(prefix="bg-remote-bench-"))
    try:
        print(f"{'server':<10} {'demo cold s':>12} {'demo warm-remote s':>19} {'speed-up':>9} "
              f"{'restore ' + str(args.mb) + ' MB s':>18} {'MB/s':>8}")
        for kind in ("nginx", "buildgrid"):
            root = base / kind
            server = NginxServer(root / "server") if kind == "nginx" else BuildGridServer(root / "server")
            try:
                demo = root / "demo"
                shutil.copytree(REPO / "examples" / "demo", demo, ignore=shutil.ignore_patterns(".buildgraph"))
                cache = root / "cache"
                cold = build(demo, cache, server.url)
                fresh(demo, cache)
                warm = build(demo, cache, server.url)
                big = big_workspace(root / "big", args.mb)
                build(big, root / "bigcache", server.url)
                fresh(big, root / "bigcache")
                restore = build(big, root / "bigcache", server.url)
                print(f"{kind:<10} {cold:12.2f} {warm:19.2f} {cold / warm:8.1f}x {restore:18.2f} "
                      f"{args.mb * 1.048576 / restore:8.0f}")
            finally:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
