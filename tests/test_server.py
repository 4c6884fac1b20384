"""The resident server (client.py, server.py): what a build does and prints is the same with it
or without it, and killing any of its processes harms no build and no later one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from buildgraph import client
from buildgraph.sandbox import detect_mode
from conftest import REPO, mount_points, stop_servers

STEPS = """\
    targets:
      a: {kind: script, srcs: [v], outs: [o], cmds: ["cp $SRC/v $OUT/o"]}
      b: {kind: script, deps: [a], outs: [o], cmds: ["cat $DEP_A/o $DEP_A/o > $OUT/o"]}
      slow: {kind: script, srcs: [v], outs: [o], cmds: ["sleep $(cat $SRC/v | cut -c1-2); cp $SRC/v $OUT/o"]}
      broken: {kind: script, outs: [o], cmds: ["echo it broke >&2; exit 3"]}
    """


@pytest.fixture
def where():
    """A server directory of the test's own (short: a socket's path has at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="bgs-", dir="/tmp")
    yield path
    stop_servers(path)


def spawn(ws, where, *args, env=None, **kw) -> subprocess.Popen:
    return ws.spawn(*args, env={"BUILDGRAPH_SERVER_DIR": where, **(env or {})}, **kw)


def finish(proc, timeout=60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def server_pid(where, timeout=30.0) -> int:
    """The pid of the one server up in `where` (waiting for it to start)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for lock in Path(where).glob("*.lock"):
            text = lock.read_text().strip()
            if text.isdigit() and Path(f"/proc/{text}").exists() and lock.with_suffix(".sock").exists():
                return int(text)
        time.sleep(0.05)
    raise AssertionError(f"no server came up in {where}: {os.listdir(where)}")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pid: int, timeout=15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:   # our own child, a zombie until reaped
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def sleeping(marker: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()


def assert_served(pid: int, proc: subprocess.Popen) -> None:
    """That `proc`'s build runs in the server `pid`: while an action sleeps, the build process
    is the server's child, and the client has none."""
    deadline = time.time() + 20
    while not children(pid) and time.time() < deadline:
        time.sleep(0.02)
    assert children(pid) and not children(proc.pid)


def started_server(ws, where) -> int:
    """Build once without a server: that build starts one; its pid."""
    ws.write("BUILD.yaml", STEPS)
    ws.write("v", "1\n")
    rc, out, err = finish(spawn(ws, where, "build", "b"))
    assert rc == 0, out + err
    return server_pid(where)


def same_text(text: str) -> str:
    return re.sub(r"\d+\.\d+s", "T", text)


def test_later_builds_run_in_the_server_and_print_what_a_build_without_one_prints(ws, where):
    pid = started_server(ws, where)
    ws.write("v", "2\n")
    served = finish(spawn(ws, where, "build", "b"))
    ws.write("v", "3\n")
    alone = finish(spawn(ws, where, "build", "b", env={"BUILDGRAPH_SERVER": "0"}))
    assert served[0] == alone[0] == 0
    assert same_text(served[1]) == same_text(alone[1]) and "2 ran" in served[1]
    assert same_text(served[2]) == same_text(alone[2])
    assert ws.out("b").joinpath("o").read_text() == "3\n3\n"
    # Where it ran: while an action sleeps, the build process is the server's child, not the client's.
    ws.write("v", "3 served\n")
    proc = spawn(ws, where, "build", "slow")
    assert_served(pid, proc)
    assert finish(proc)[0] == 0
    assert ws.out("slow").joinpath("o").read_text() == "3 served\n"


def test_a_failed_build_and_a_usage_error_exit_as_without_a_server(ws, where):
    started_server(ws, where)
    for args, code in ((("build", "broken"), 1), (("build", "nothing-by-this-name"), 2)):
        served = finish(spawn(ws, where, *args))
        alone = finish(spawn(ws, where, *args, env={"BUILDGRAPH_SERVER": "0"}))
        assert served[0] == alone[0] == code
        assert same_text(served[1]) == same_text(alone[1])
        assert same_text(served[2]) == same_text(alone[2]) and served[2], served


def test_the_server_builds_in_the_clients_directory_environment_and_umask(ws, where):
    ws.write("BUILD.yaml", STEPS)
    other_cache = ws.root.parent / "cache-from-env"
    env = dict(os.environ, PYTHONPATH=str(REPO), BUILDGRAPH_SERVER_DIR=where, BUILDGRAPH_CACHE_DIR=str(other_cache))

    def build():   # no -C and no --cache-dir: the workspace is the working directory, the cache the environment's
        return subprocess.Popen([sys.executable, "-m", "buildgraph", "build", "slow"], cwd=ws.root / "toolchains",
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: os.umask(0o027))
    ws.write("v", "0 first\n")
    assert finish(build())[0] == 0
    shutil.rmtree(other_cache)
    pid = server_pid(where)
    ws.write("v", "1 served\n")
    proc = build()
    assert_served(pid, proc)
    rc, out, err = finish(proc)
    assert rc == 0, out + err
    assert ws.out("slow").joinpath("o").read_text() == "1 served\n"
    # The cache the build made, made under the client's umask (actions have their own: 022).
    assert other_cache.stat().st_mode & 0o777 == 0o750 and (other_cache / "cas").is_dir()


def test_ctrl_c_stops_a_served_build_as_it_stops_any(ws, where):
    pid = started_server(ws, where)
    ws.write("v", "40 ctrl-c\n")
    proc = spawn(ws, where, "build", "slow")
    deadline = time.time() + 20
    while not sleeping("sleep 40") and time.time() < deadline:
        time.sleep(0.05)
    assert sleeping("sleep 40") and children(pid)
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc, timeout=20)
    assert rc == 130 and "interrupted" in err, out + err
    assert not sleeping("sleep 40")
    assert not gone(pid, timeout=0.5)   # the server stays up


def test_killing_the_client_stops_its_build_and_frees_the_workspace(ws, where):
    started_server(ws, where)
    ws.write("v", "41 killed client\n")
    proc = spawn(ws, where, "build", "slow")
    deadline = time.time() + 20
    while not sleeping("sleep 41") and time.time() < deadline:
        time.sleep(0.05)
    assert sleeping("sleep 41")
    proc.kill()
    proc.communicate()
    deadline = time.time() + 15
    while sleeping("sleep 41") and time.time() < deadline:
        time.sleep(0.05)
    assert not sleeping("sleep 41")
    ws.write("v", "4\n")
    rc, out, err = finish(spawn(ws, where, "build", "b"), timeout=30)
    assert rc == 0 and ws.out("b").joinpath("o").read_text() == "4\n4\n", out + err


@pytest.mark.skipif(detect_mode() != "bwrap" or os.geteuid() != 0,
                    reason="a namespace of its own is made where bwrap runs and it may (mountns.py)")
def test_a_served_bwrap_build_reads_a_namespace_without_sys_and_the_host_keeps_it(ws, where):
    pid = started_server(ws, where)
    ws.write("v", "6 namespace\n")
    proc = spawn(ws, where, "build", "slow", "--sandbox", "bwrap")

    def trimmed() -> int | None:   # the build's process, once its sandbox is made
        for child in children(pid):
            try:
                points = {p[0] for p in mount_points(Path(f"/proc/{child}/mountinfo").read_text())}
            except OSError:
                continue
            if "/" in points and "/sys" not in points and "/dev/pts" not in points:
                return child
        return None
    deadline = time.time() + 20
    while (build := trimmed()) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert build is not None
    assert os.readlink(f"/proc/{build}/ns/mnt") != os.readlink(f"/proc/{pid}/ns/mnt")
    assert os.path.ismount("/sys") and "/sys" in {p[0] for p in mount_points(
        Path(f"/proc/{pid}/mountinfo").read_text())}
    rc, out, err = finish(proc)
    assert rc == 0 and ws.out("slow").joinpath("o").read_text() == "6 namespace\n", out + err


PAIR = """\
    targets:
      x: {kind: script, srcs: [v], outs: [o], cmds: ["cp $SRC/v $OUT/o"]}
      y: {kind: script, srcs: [w], deps: [x], outs: [o], cmds: ["cat $DEP_X/o $SRC/w > $OUT/o"]}
    """


def test_a_served_build_after_one_without_the_server_builds_from_the_state_on_disk(ws, where):
    """The server keeps the state a build left decoded for the next (resident.py). A build
    without the server then changes that state on disk: the next served build builds what
    a build without the server would (y from x's new output)."""
    ws.write("BUILD.yaml", PAIR)
    ws.write("v", "1\n")
    ws.write("w", "1\n")
    time.sleep(0.3)
    assert finish(spawn(ws, where, "build"))[0] == 0
    server_pid(where)
    ws.write("v", "2\n")
    time.sleep(0.3)
    served = finish(spawn(ws, where, "build"))
    assert served[0] == 0 and "2 ran" in served[1], served
    time.sleep(0.5)   # the server decodes the state that build left (it waits for no request)
    ws.write("v", "3\n")
    time.sleep(0.3)
    alone = finish(spawn(ws, where, "build", env={"BUILDGRAPH_SERVER": "0"}))
    assert alone[0] == 0 and "2 ran" in alone[1], alone
    ws.write("w", "2\n")
    time.sleep(0.3)
    served = finish(spawn(ws, where, "build"))
    assert served[0] == 0 and "1 ran" in served[1], served
    assert ws.out("y").joinpath("o").read_text() == "3\n2\n"


def test_a_held_state_file_is_given_once_and_only_while_the_file_is_unchanged(tmp_path):
    import marshal

    from buildgraph import resident
    from buildgraph.fsutil import write_atomic

    d = str(tmp_path)
    write_atomic(f"{d}/s", marshal.dumps({"n": 1}))
    resident.hold(d, [("s", marshal.loads)])
    first, sig = resident.read(d, "s", marshal.loads)
    assert first == {"n": 1} and sig == resident.stat_signature(os.stat(f"{d}/s"))
    assert resident.read(d, "s", marshal.loads)[0] is not first   # taken once: the second is decoded anew
    resident.hold(d, [("s", marshal.loads)])
    write_atomic(f"{d}/s", marshal.dumps({"n": 2}))   # replaced
    assert resident.read(d, "s", marshal.loads)[0] == {"n": 2}
    resident.hold(d, [("s", marshal.loads)])
    with open(f"{d}/s", "r+b") as f:   # rewritten in place
        f.write(marshal.dumps({"n": "three"}))
    assert resident.read(d, "s", marshal.loads)[0] == {"n": "three"}


def test_the_summary_counts_the_whole_process_served_or_not(ws, where, tmp_path):
    """A build's summary line ("in X s") counts from the start of the `buildgraph` process the
    user ran, interpreter start-up included; a served build from its client's start, not the
    server's or its child's. Here the client sleeps 1 s before it starts the build."""
    ws.write("BUILD.yaml", STEPS)
    ws.write("v", "1\n")
    (tmp_path / "bin").mkdir()   # a directory of its own: sys.path[0], whose stat is in the context
    script = tmp_path / "bin" / "slow_buildgraph.py"
    script.write_text("import sys, time\ntime.sleep(1.0)\nfrom buildgraph.client import main\nsys.exit(main())\n")
    slow = [sys.executable, str(script), "build", "a", "-C", str(ws.root), "--cache-dir", str(ws.cache)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "BUILDGRAPH_SERVER_DIR": where}
    for served in (False, True):
        proc = subprocess.run(slow, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        seconds = float(re.search(r" in (\d+\.\d+)s", proc.stdout).group(1))
        assert seconds >= 1.0, (served, proc.stdout)
        if not served:
            server_pid(where)   # the first build started it: the second is served


def test_killing_the_server_harms_no_build(ws, where):
    pid = started_server(ws, where)
    ws.write("v", "2 server killed\n")
    proc = spawn(ws, where, "build", "slow")
    assert_served(pid, proc)
    os.kill(pid, signal.SIGKILL)
    rc, out, err = finish(proc)
    assert rc == 0 and ws.out("slow").joinpath("o").read_text() == "2 server killed\n", out + err
    # Its socket is left behind: the next build builds itself and starts another server.
    ws.write("v", "5\n")
    rc, out, err = finish(spawn(ws, where, "build", "b"))
    assert rc == 0 and ws.out("b").joinpath("o").read_text() == "5\n5\n", out + err
    assert server_pid(where) != pid


def test_another_context_gets_another_server_and_a_changed_one_ends_its_own(ws, where, tmp_path, monkeypatch):
    before = client.context()
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    assert client.context() != before
    monkeypatch.delenv("PYTHONHASHSEED")
    assert client.context() == before
    # A package installed into a directory on sys.path: another context, and its server exits.
    site = Path(tempfile.mkdtemp(prefix="bgs-site-", dir=tmp_path))
    monkeypatch.syspath_prepend(str(site))
    ours = client.context()
    (site / "newly_installed.py").write_text("")
    assert client.context() != ours
    ws.write("BUILD.yaml", STEPS)
    ws.write("v", "1\n")
    assert finish(spawn(ws, where, "build", "a", env={"PYTHONPATH": f"{site}:{REPO}"}))[0] == 0
    pid = server_pid(where)
    (site / "another.py").write_text("")
    assert gone(pid)
    assert not list(Path(where).glob("*.sock"))


def test_no_server_in_a_directory_others_can_open_and_shutdown_stops_ours(ws, where, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("BUILDGRAPH_SERVER_DIR", str(shared))
    assert client.server_dir() is None
    pid = started_server(ws, where)
    rc = subprocess.run([sys.executable, "-m", "buildgraph", "shutdown"], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO), BUILDGRAPH_SERVER_DIR=where))
    assert rc.returncode == 0 and rc.stdout.startswith("stopped 1 server"), rc.stdout + rc.stderr
    assert gone(pid)


def test_the_server_has_imported_everything_a_build_imports(ws):
    """What a served build would still import is paid in every build (the server's point)."""
    ws.write("BUILD.yaml", STEPS)
    ws.write("v", "1\n")
    probe = ("import importlib, sys\n"
             "from buildgraph import server\n"
             "for m in server.PRELOAD: importlib.import_module(m)\n"
             "before = set(sys.modules)\n"
             "from buildgraph import cli\n"
             "for v in ('1', '2'):\n"   # one that parses the workspace, one that only runs what changed
             f"    open({str(ws.root / 'v')!r}, 'w').write(v)\n"
             f"    assert cli.main(['build', 'b', '-C', {str(ws.root)!r}, '--cache-dir', {str(ws.cache)!r}]) == 0\n"
             "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "BUILDGRAPH_SERVER": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_shutdown_stops_a_server_still_starting(ws, where):
    import fcntl

    client._start_server(where, client.context())
    lock, deadline = None, time.time() + 20
    while lock is None and time.time() < deadline:   # the moment it holds its lock, before it listens
        for path in Path(where).glob("*.lock"):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                lock = path
            finally:
                os.close(fd)
        time.sleep(0.001)
    assert lock is not None
    from buildgraph import server

    stopped = server.stop_all(where)
    assert len(stopped) == 1 and gone(stopped[0])
