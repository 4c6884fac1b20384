"""The whole release (all six artifacts, each installed and tested), measured.

    .venv/bin/python bench/pipeline.py [--dir DIR] [--jobs N] [--from PHASE]

Phases, each on a copy of the repository's release workspace in DIR (default a temporary
directory), with nginx WebDAV on loopback as the remote cache:
  cold     empty local and remote caches: wall time; CPU time of every process the build
           ran (the machine's busy time: run it idle); the critical path over the durations the
           build recorded; the floor max(critical path, CPU time / cores) and how far the
           wall time is above it. Targets: within 15% of the floor.
  noop     the same build again: the whole process, nothing to do. Target: under 0.5 s.
  edit     one line appended to a backend source: what reran (only backend, release and
           release_test nodes may), and how long it took.
  remote   an empty local cache and a fresh workspace against the warm remote: every node
           restored, none run. Target: under 30 s.
Figures go to DIR/pipeline.json as each phase ends, the cold run's timeline to
DIR/cold-trace.json; --from PHASE resumes with DIR's caches
(the cold phase takes ~40 minutes on 2 cores). Prints figures; asserts nothing.
Needs `bash .ci/setup --tests` (nginx) and the toolchains (fetched on first use).
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_release_workspace  # noqa: E402
from servers import NginxServer  # noqa: E402

PHASES = ("cold", "noop", "edit", "remote")
EDITED = "examples/backend/src/blas_ops.cpp"


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores, /proc/stat). Actions run in
    bwrap's pid namespaces, whose processes are reaped there: the build's own rusage misses
    them, so the machine's counter is the measure (run the benchmark on an idle machine)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]   # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def build(ws: Path, cache: Path, url: str, jobs: int, *extra: str) -> tuple[float, float, dict]:
    """Run `buildgraph build release_test`; (wall s, busy CPU s of the machine, status per node)."""
    log = ws / "build-log.json"
    before = busy_seconds()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "build", "-C", str(ws), "--cache-dir", str(cache),
                           "--remote-cache", url, f"-j{jobs}", "--git-sha", "0" * 40, "--log-json", str(log),
                           *extra, "release_test"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    cpu = busy_seconds() - before
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    status = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        status[event["node"]] = event["status"]
    return wall, cpu, status


def critical_path(ws: Path) -> tuple[float, list[str]]:
    """The longest chain of recorded durations through the graph of release_test."""
    from buildgraph.graph import configure
    from buildgraph.state import StateDir
    from buildgraph.workspace import load_workspace

    graph = configure(load_workspace(ws))
    durations = {n: r.duration for n, r in StateDir(ws).load().nodes.items()}
    selected = graph.select(["release_test"])
    priority, path = graph.critical_path(selected, durations, default=0.0)
    return (priority[path[0]] if path else 0.0), path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the workspace and caches live (kept; default: a temporary dir)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--from", dest="start", choices=PHASES, default="cold")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-pipeline-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    ws, cache, remote = root / "ws", root / "cache", root / "remote"
    results_file = root / "pipeline.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    phases = PHASES[PHASES.index(args.start):]
    if "cold" in phases:
        for d in (ws, cache, remote):
            shutil.rmtree(d, ignore_errors=True)
        copy_release_workspace(ws)
    remote.mkdir(exist_ok=True)
    cores = args.jobs
    server = NginxServer(remote)   # started here, stopped by its PID below
    try:
        def record(name: str, figures: dict) -> None:
            results[name] = figures
            results_file.write_text(json.dumps(results, indent=2))
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items() if k != "path"), flush=True)

        if "cold" in phases:
            # The cold run's timeline stays in DIR (chrome://tracing, Perfetto) for the post-mortem.
            wall, cpu, status = build(ws, cache, server.url, args.jobs, "--profile", str(root / "cold-trace.json"))
            length, path = critical_path(ws)
            floor = max(length, cpu / cores)
            record("cold", {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cores": cores,
                            "utilisation": round(cpu / (wall * cores), 3), "critical_path_s": round(length, 1),
                            "floor_s": round(floor, 1), "over_floor": round(wall / floor - 1, 3),
                            "nodes_ran": sum(s == "ran" for s in status.values()), "path": path})
        if "noop" in phases:
            walls = []
            for _ in range(3):
                wall, _, status = build(ws, cache, server.url, args.jobs)
                walls.append(round(wall, 3))
            record("noop", {"wall_s": min(walls), "runs": walls, "nodes": len(status),
                            "ran": sum(s == "ran" for s in status.values())})
        if "edit" in phases:
            source = ws / EDITED
            source.write_text(source.read_text() + f"// bench edit {time.time()}\n")
            wall, cpu, status = build(ws, cache, server.url, args.jobs)
            ran = sorted(n for n, s in status.items() if s == "ran")
            outside = [n for n in ran if n.split("@")[0] not in ("backend", "release", "release_test")]
            record("edit", {"wall_s": round(wall, 1), "ran": len(ran), "ran_outside_backend_chain": outside})
        if "remote" in phases:
            fresh_ws, fresh_cache = root / "ws-fresh", root / "cache-fresh"
            shutil.rmtree(fresh_ws, ignore_errors=True)
            shutil.rmtree(fresh_cache, ignore_errors=True)
            shutil.copytree(ws, fresh_ws, ignore=shutil.ignore_patterns(".buildgraph", "build-log.json"))
            wall, _, status = build(fresh_ws, fresh_cache, server.url, args.jobs)
            record("remote", {"wall_s": round(wall, 1), "nodes": len(status),
                              "restored": sum(s == "cached" for s in status.values()),
                              "ran": sum(s == "ran" for s in status.values())})
    finally:
        server.stop()
    print(f"figures in {results_file}")


if __name__ == "__main__":
    main()
