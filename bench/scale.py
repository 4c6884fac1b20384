"""Scale benchmark: buildgraph against Bazel, ninja and GNU make on one N-node graph.

    .venv/bin/python bench/scale.py [N ...]        (default: 1000 10000)

It works in a new directory under $TMPDIR (/tmp when unset): set TMPDIR to measure on
another filesystem. The first line says which it ran on.

The graph (genworkspace.py) is a binary tree: node i cats its own source and the
outputs of nodes 2i+1 and 2i+2. For each N and tool, in this one process tree on an
idle machine, whole-process wall time (start-up, loading and saving included):
  cold      a first build into an empty cache
  no-op     the same build again (median of 5; Bazel's server is warm by then)
  leaf      after editing one leaf's source: log2(N) actions in a chain (median of 3)
  restore   buildgraph only: `clean`, then everything from the local cache (median of 3)
buildgraph's no-op and leaf again without its resident server, and its peak memory (RSS)
on cold and no-op builds in their own process, and its server's. The per-action overhead,
measured first, before the trees above are made and deleted (on an ext4 without a journal
each new inode then scans past the freed ones: README, "Benchmarks"): 500 independent
one-command actions at -j1 against the same commands run bare (`sh -c`), one process
each. Then this machine's floors under those figures: a bare
spawn against one in bwrap's namespaces and mounts (CPU counted machine-wide), and laying
out a directory with one file per node. Bazel is measured when `bazel` is installed
(Debian's bazel-bootstrap, run offline with ../shared/notes/bazel-offline/) and
shut down afterwards. Prints figures and ratios; asserts nothing: the targets are
in the README.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genworkspace import generate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The `buildgraph` command as installed beside this interpreter, as users run it (`python -m`
# would add runpy's imports to every figure).
_COMMAND = Path(sys.executable).with_name("buildgraph")
BG = [str(_COMMAND)] if _COMMAND.exists() else [sys.executable, "-m", "buildgraph"]
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")}  # as users run it


def timed(cmd, cwd, rss_file: Path | None = None, env=None) -> float:
    if rss_file is not None:   # GNU time: the command's peak resident set, in KiB
        cmd = ["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *cmd]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or ENV)
    return time.perf_counter() - t


def rss_mb(path: Path) -> float:
    return int(path.read_text().split()[-1]) / 1024


def touch_leaf(root: Path, n: int, round_: int) -> None:
    (root / "src" / f"n{n - 1}.txt").write_text(f"node {n - 1} edit {round_}\n")


def bench_tool(name, cmd, root, n, restore=None, server=False) -> dict:
    """The four figures of one tool. With `server` (buildgraph's): the first build has none and
    starts it, as a user's first build does; then no-op and leaf again without it, and the
    peak memory of builds in their own process (a served build's is its child's)."""
    row = {"tool": name, "cold": timed(cmd, root)}
    row["noop"] = statistics.median(timed(cmd, root) for _ in range(5))
    leaf = []
    for r in range(3):
        touch_leaf(root, n, r)
        time.sleep(0.2)   # as an edit in an editor would be: not in the same clock tick as the build
        leaf.append(timed(cmd, root))
    row["leaf"] = statistics.median(leaf)
    if restore is not None:
        times = []
        for _ in range(3):
            subprocess.run(restore, cwd=root, check=True, stdout=subprocess.DEVNULL, env=ENV)
            times.append(timed(cmd, root))
        row["restore"] = statistics.median(times)
    if server:
        alone = {**ENV, "BUILDGRAPH_SERVER": "0"}
        rss_file = root.parent / f"{root.name}.rss"
        row["noop_alone"] = statistics.median(timed(cmd, root, rss_file, alone) for _ in range(5))
        row["noop_mb"] = rss_mb(rss_file)
        leaf = []
        for r in range(3):
            touch_leaf(root, n, 10 + r)
            time.sleep(0.2)
            leaf.append(timed(cmd, root, env=alone))
        row["leaf_alone"] = statistics.median(leaf)
        subprocess.run(BG + ["clean"], cwd=root, check=True, stdout=subprocess.DEVNULL, env=ENV)
        shutil.rmtree(cmd[cmd.index("--cache-dir") + 1])
        timed(cmd, root, rss_file, alone)
        row["cold_mb"] = rss_mb(rss_file)
        row["server_mb"] = sum(server_rss_mb(pid) for pid in server_pids())
    return row


def server_pids() -> list[int]:
    where = Path(ENV["BUILDGRAPH_SERVER_DIR"])
    return [int(t) for t in (p.read_text().strip() for p in where.glob("*.lock")) if t.isdigit()]


def server_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def run_scale(n: int, base: Path, sandbox: str, tools: list[str]) -> list[dict]:
    rows = []
    for tool in tools:
        root = base / f"{tool}-{n}"
        generate(root, n, bazel_user_root=base / "bazel-root")
        if tool == "buildgraph":
            cmd = BG + ["build", "-j2", "--sandbox", sandbox, "--cache-dir", str(base / f"cache-{n}")]
            rows.append(bench_tool(f"buildgraph ({sandbox})", cmd, root, n, restore=BG + ["clean"], server=True))
        elif tool == "bazel":
            try:
                rows.append(bench_tool("Bazel (warm server)", ["bazel", "build", "--jobs=2", "//:all"], root, n))
            finally:
                subprocess.run(["bazel", "shutdown"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            rows.append(bench_tool(tool, [tool, "-j2"], root, n))
        shutil.rmtree(root, ignore_errors=True)
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
    (root / "bare").mkdir()
    t = time.perf_counter()
    for i in range(n):
        subprocess.run(["sh", "-c", f"cat src/f{i} > bare/o{i}"], cwd=root, check=True)
    bare = time.perf_counter() - t
    return bg / n, bare / n


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)   # idle and iowait are not busy


def spawn_floor(argv: list[str], n: int, netns=None) -> tuple[float, float]:
    """(wall, CPU of the whole machine) per run of `argv`, n runs one after another: CPU
    counted machine-wide, since a pid namespace's processes escape the parent's accounting.
    `netns`: a buildgraph.netns.NetnsPool to start each run in one of, as a build does."""
    busy0, total0 = _busy_ticks()
    t = time.perf_counter()
    for _ in range(n):
        if netns is None:
            subprocess.run(argv, check=True)
            continue
        fd = netns.take()
        with netns.entered(fd):
            proc = subprocess.Popen(argv)
        proc.wait()
        netns.give(fd)
    wall = time.perf_counter() - t
    busy1, total1 = _busy_ticks()
    return wall / n, (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1) * wall / n


def one_process_layout(base: Path, n: int) -> float:
    """Seconds per node to lay out what a restore lays out for this graph (a directory holding
    one small file), right after removing the same tree (as `clean` does before a restore)."""
    root = base / "fs-floor"
    for _ in range(2):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        t = time.perf_counter()
        for i in range(n):
            os.mkdir(root / f"n{i}")
            fd = os.open(root / f"n{i}" / "o", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, b"node output\n")
            os.close(fd)
        seconds = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)
    return seconds / n


def print_floors(base: Path, sizes: list[int]) -> None:
    """What this machine charges for the work no build tool can skip: spawning the sandbox
    of one action, and the directory and file a restored node needs. The first bounds the
    targets from below: per-action overhead >= the sandbox's spawn over a bare one; cold N >=
    N x its CPU / CPUs. The second is a reference, not a bound: one process laying out into
    a plain directory; a restore lays out in two processes, its directories spread in runs
    (layout_worker.py), and can take less."""
    from buildgraph import sandboxer
    from buildgraph.locations import programs_dir
    from buildgraph.netns import NetnsPool

    bare = ["/bin/sh", "-c", ":"]
    # As a build starts its sandboxes: in a network namespace of the build's pool where it
    # may make them (netns.py), else one of each sandbox's own.
    netns = NetnsPool.make()
    sandboxed = ["bwrap", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                 *(("--unshare-net",) if netns is None else ()), "--unshare-pid", "--as-pid-1", "--unshare-ipc",
                 "--unshare-uts", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                 "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
                 "--dev", "/dev", "--tmpfs", "/tmp", "--"] + bare
    cpus = os.cpu_count() or 1
    sh_wall, sh_cpu = spawn_floor(bare, 200)
    print(f"floor: bare `sh -c :` {sh_wall * 1e3:.2f} ms wall, {sh_cpu * 1e3:.2f} ms CPU per run")
    if shutil.which("bwrap"):
        bw_wall, bw_cpu = spawn_floor(sandboxed, 200, netns)
        print(f"floor: the same in bwrap's namespaces and mounts{' (pooled network namespace)' if netns else ''} "
              f"{bw_wall * 1e3:.2f} ms wall, "
              f"{bw_cpu * 1e3:.2f} ms CPU per run: per-action overhead >= {(bw_wall - sh_wall) * 1e3:.2f} ms, "
              + ", ".join(f"cold {n:,} >= {n * bw_cpu / cpus:.1f} s" for n in sizes))
        maker = sandboxer.program(str(programs_dir()))
        if maker is not None:   # what a build runs as root (buildgraph/sandboxer.py)
            sx_wall, sx_cpu = spawn_floor([maker, *sandboxed[1:]], 200, netns)
            print(f"floor: the same made by buildgraph's sandboxer {sx_wall * 1e3:.2f} ms wall, "
                  f"{sx_cpu * 1e3:.2f} ms CPU per run: per-action overhead >= {(sx_wall - sh_wall) * 1e3:.2f} ms, "
                  + ", ".join(f"cold {n:,} >= {n * sx_cpu / cpus:.1f} s" for n in sizes))
    if netns is not None:
        netns.close()
    per_node = one_process_layout(base, max(sizes))
    print(f"reference: one process making a directory and one small file per node, after removing them, "
          f"{per_node * 1e3:.3f} ms: " + ", ".join(f"restore {n:,} at that rate {n * per_node:.2f} s" for n in sizes))


def filesystem(path: Path) -> str:
    """The filesystem `path` is on, as the figures depend on it: its type and device, and
    for ext4 whether it has a journal (without one, ext4 scans past every inode freed in
    the last minute on each it allocates: README, "Benchmarks")."""
    mount, fstype, source = "", "?", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point, rest = fields[4], fields[fields.index("-") + 1:]
            if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(mount):
                mount, fstype, source = point, rest[0], rest[1]
    if fstype != "ext4":
        return f"{fstype} on {source}"
    try:
        task = Path(f"/sys/fs/ext4/{os.path.basename(os.path.realpath(source))}/journal_task").read_text().strip()
    except OSError:
        return f"ext4 on {source}"
    return f"ext4 on {source} ({'no journal' if task == '<none>' else 'journal'})"


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "buildgraph")], check=True)
    from buildgraph.sandbox import detect_mode
    sandbox = detect_mode()
    tools = ["buildgraph", "ninja", "make"] + (["bazel"] if shutil.which("bazel") else [])
    base = Path(tempfile.mkdtemp(prefix="bg-bench-"))
    ENV["BUILDGRAPH_SERVER_DIR"] = str(base / "servers")   # stopped at the end
    try:
        print(f"whole-process wall time, seconds; {os.cpu_count()} CPUs; in {base}, {filesystem(base)}; "
              f"{'Bazel: ' + shutil.which('bazel') if 'bazel' in tools else 'Bazel not installed'}")
        print(f"{'nodes':>6}  {'tool':<22} {'cold':>8} {'no-op':>8} {'1 leaf':>8} {'restore':>8}   "
              f"{'vs Bazel (cold, no-op, leaf)':<30} vs ninja (no-op, leaf)")
        per_action = {mode: per_action_overhead(500, base, mode) for mode in dict.fromkeys((sandbox, "none"))}
        for n in sizes:
            rows = run_scale(n, base, sandbox, tools)
            ninja = next(r for r in rows if r["tool"] == "ninja")
            bazel = next((r for r in rows if r["tool"].startswith("Bazel")), None)
            for r in rows:
                vs_bazel = (f"{r['cold'] / bazel['cold']:5.2f}x {r['noop'] / bazel['noop']:5.2f}x "
                            f"{r['leaf'] / bazel['leaf']:5.2f}x") if bazel else "–"
                print(f"{n:>6}  {r['tool']:<22} {fmt(r['cold'])} {fmt(r['noop'])} {fmt(r['leaf'])} "
                      f"{fmt(r.get('restore')):>8}   {vs_bazel:<30} "
                      f"{r['noop'] / ninja['noop']:5.1f}x {r['leaf'] / ninja['leaf']:5.1f}x")
            bg = rows[0]
            print(f"{n:>6}  buildgraph without its server (BUILDGRAPH_SERVER=0): no-op {fmt(bg['noop_alone'])}, "
                  f"leaf {fmt(bg['leaf_alone'])}")
            print(f"{n:>6}  buildgraph peak memory in its own process: cold {bg['cold_mb']:.0f} MB, "
                  f"no-op {bg['noop_mb']:.0f} MB; its server {bg['server_mb']:.0f} MB resident")
        for mode, (bg, bare) in per_action.items():
            print(f"per-action ({mode:>7}, measured first): buildgraph {bg * 1e3:.2f} ms, "
                  f"bare command {bare * 1e3:.2f} ms, overhead {(bg - bare) * 1e3:.2f} ms")
        print_floors(base, sizes)
    finally:
        if (base / "servers").is_dir():
            from buildgraph.server import stop_all

            stop_all(str(base / "servers"))
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
