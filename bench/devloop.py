"""The developer's inner loop on a backend of realistic size: one edit, how long until it is built.

    .venv/bin/python bench/devloop.py [--dir DIR] [--units 300] [--toolchain gcc-12|portable]

A workspace in DIR (default a temporary directory) holds the demo's zlite (make) and
strutil (script) and `gb`, the C++ library bench/genbackend.py generates (UNITS translation
units; group_3.h is included by 10% of them), built as one cmake node (Ninja) with the
toolchain. nginx WebDAV on loopback is the remote cache. After a full build of gb (the
compile cache cold, filling the local and the remote one), each edit is measured four ways,
whole-process wall time:
  (a) today:   `buildgraph build --no-compile-cache`: the action reruns, every file compiles
  (b) local:   `buildgraph build`: the action reruns, unchanged files are ccache hits
  (c) remote:  a second developer — empty local cache, warm remote — builds the same tree
               (with an edit of their own): the action reruns, unchanged files are remote hits
  (d) shell:   plain `cmake --build` in the tree `buildgraph shell gb` configured (the
               incremental reference: Ninja recompiles what changed and relinks)
for two edits: one .cpp (src/op_150.cpp with 300 units), and group_3.h (30 of 300 files). Every measured
build sees an edit of its own (a new function appended), so none is an action cache hit.
Targets: (b) within 3x of (d), (b) at least 10x faster than (a), (c) at least 5x faster
than (a). Figures go to DIR/devloop.json and a table on stdout; nothing is asserted.
Needs `bash .ci/setup --tests` (nginx, ccache). Takes ~15 minutes on 2 cores with 300 units.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from genbackend import generate  # noqa: E402
from servers import NginxServer  # noqa: E402

sys.path.insert(0, str(REPO))
from buildgraph import compile_cache  # noqa: E402

BUILD = """\
toolchain: {toolchain}
targets:
  strutil:
    kind: script
    srcs: ["src/strutil/*.c", "src/strutil/*.h"]
    outs: [include/strutil.h, lib/libstrutil.a]
    cmds:
      - mkdir -p $OUT/include $OUT/lib
      - $CC -O2 -fPIC -c $SRC/src/strutil/strutil.c -o strutil.o
      - $AR rcs $OUT/lib/libstrutil.a strutil.o
      - cp $SRC/src/strutil/strutil.h $OUT/include/
  zlite:
    kind: make
    srcs: ["src/zlite/*"]
    source_dir: src/zlite
    make_args: [CFLAGS=-O2 -fPIC]
    install_targets: [install]
    outs: [include/zlite.h, lib/libzlite.a]
  gb:
    kind: cmake
    description: the generated backend (bench/genbackend.py)
    srcs: ["gb/**"]
    source_dir: gb
    deps: [strutil, zlite]
    generator: Ninja
    outs: [include/, lib/]
    cmake_args: [-DBUILD_SHARED_LIBS=ON]
"""
EDITS = {"cpp": "gb/src/op_{middle:03d}.cpp", "header": "gb/include/gb/group_3.h"}


class Bench:
    def __init__(self, root: Path, toolchain: str, toolchain_dir: Path, remote: str):
        self.root, self.toolchain, self.toolchain_dir, self.remote = root, toolchain, toolchain_dir, remote
        self.ws = root / "ws"
        self.edits = 0
        self.units = 0

    def setup(self, units: int) -> None:
        self.units = units
        if self.ws.exists():
            shutil.rmtree(self.ws)
        (self.ws / "toolchains").mkdir(parents=True)
        shutil.copy(REPO / "toolchains" / f"{self.toolchain}.yaml", self.ws / "toolchains")
        if (REPO / "toolchains" / "patches").is_dir():
            shutil.copytree(REPO / "toolchains" / "patches", self.ws / "toolchains" / "patches")
        for lib in ("strutil", "zlite"):
            shutil.copytree(REPO / "examples" / "demo" / "src" / lib, self.ws / "src" / lib)
        (self.ws / "BUILD.yaml").write_text(BUILD.format(toolchain=self.toolchain))
        generate(self.ws / "gb", units)

    def edit(self, what: str) -> None:
        """Append a new function: the file's content, and so its compile, is new."""
        self.edits += 1
        with open(self.ws / self.edited(what), "a") as f:
            f.write(f"\ninline int bench_edit_{self.edits}() {{ return {self.edits}; }}\n")

    def edited(self, what: str) -> str:
        return EDITS[what].format(middle=self.units // 2)

    def build(self, cache: Path, *extra: str) -> float:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "buildgraph", "build", "-C", str(self.ws), "--cache-dir", str(cache),
                               "--toolchain-dir", str(self.toolchain_dir), "--remote-cache", self.remote, *extra, "gb"],
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return elapsed

    def shell_env(self, cache: Path) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-m", "buildgraph", "env", "-C", str(self.ws), "--cache-dir", str(cache),
                              "--toolchain-dir", str(self.toolchain_dir), "gb", "--format", "json"],
                             capture_output=True, text=True, check=True).stdout
        return {**os.environ, **json.loads(out)["env"]}

    def shell_build(self, env: dict[str, str], tree: Path, cache: Path | None = None, configure: bool = False) -> float:
        if configure:   # `buildgraph shell` writes the preset, cmake configures the tree with it
            subprocess.run([sys.executable, "-m", "buildgraph", "shell", "-C", str(self.ws), "--cache-dir", str(cache),
                            "--toolchain-dir", str(self.toolchain_dir), "gb", "--", "cmake", "--preset", "buildgraph-gb",
                            "-B", str(tree)], cwd=self.ws / "gb", check=True, capture_output=True)
        t = time.perf_counter()
        subprocess.run(["cmake", "--build", str(tree)], env=env, check=True, capture_output=True)
        return time.perf_counter() - t


def ccache_counts(cache: Path) -> dict[str, int]:
    return compile_cache.stats(str(cache / "compile-cache"))


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument("--toolchain", default="gcc-12")
    parser.add_argument("--toolchain-dir", type=Path,
                        default=Path(os.environ.get("BUILDGRAPH_TOOLCHAIN_DIR") or Path.home() / ".cache/buildgraph-test-toolchains"))
    args = parser.parse_args()
    root = (args.dir or Path(tempfile.mkdtemp(prefix="bg-devloop-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    for d in ("cache", "cache-dev2-cpp", "cache-dev2-header", "nginx"):
        shutil.rmtree(root / d, ignore_errors=True)
    server = NginxServer(root / "nginx")
    figures: dict = {"units": args.units, "toolchain": args.toolchain, "cores": os.cpu_count()}
    try:
        bench = Bench(root, args.toolchain, args.toolchain_dir, server.url)
        bench.setup(args.units)
        cache = root / "cache"
        figures["full"] = round(bench.build(cache), 2)
        print(f"full build of gb ({args.units} units, {args.toolchain}, compile cache cold): {figures['full']:.1f} s",
              flush=True)
        env = bench.shell_env(cache)
        tree = bench.ws / ".buildgraph" / "devloop-tree"
        bench.shell_build(env, tree, cache, configure=True)   # the developer's tree, built once
        for what in ("cpp", "header"):
            row: dict = {}
            bench.edit(what)
            row["a"] = round(bench.build(cache, "--no-compile-cache"), 2)
            before = ccache_counts(cache)
            bench.edit(what)
            row["b"] = round(bench.build(cache), 2)
            row["b_ccache"] = delta(ccache_counts(cache), before)
            second = root / f"cache-dev2-{what}"
            bench.edit(what)
            row["c"] = round(bench.build(second), 2)
            row["c_ccache"] = ccache_counts(second)
            bench.edit(what)
            row["d"] = round(bench.shell_build(env, tree), 2)
            row["b_over_d"] = round(row["b"] / row["d"], 2)
            row["a_over_b"] = round(row["a"] / row["b"], 1)
            row["a_over_c"] = round(row["a"] / row["c"], 1)
            figures[what] = row
            print(f"edit {bench.edited(what)}: (a) {row['a']:.1f} s  (b) {row['b']:.2f} s  (c) {row['c']:.2f} s  "
                  f"(d) {row['d']:.2f} s   b/d {row['b_over_d']}x (target <= 3)  a/b {row['a_over_b']}x "
                  f"(>= 10)  a/c {row['a_over_c']}x (>= 5)   ccache (b) {row['b_ccache']}  (c) {row['c_ccache']}",
                  flush=True)
    finally:
        server.stop()
        (root / "devloop.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {root / 'devloop.json'}")


if __name__ == "__main__":
    main()
