"""Remote execution on BuildGrid (PostgreSQL, SQL scheduler) with two buildgraph workers."""

import shutil
import time

import pytest
from conftest import REPO, Workspace
from servers import BGD, PG_USER, BuildGridServer, PostgresServer, WorkerProcess


@pytest.fixture
def executor(tmp_path):
    import pwd
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.skip(f"no '{PG_USER}' user for PostgreSQL (bash .ci/setup --tests creates it)")
    if not BGD.exists():
        pytest.skip("BuildGrid not installed (bash .ci/setup --tests)")
    pg = PostgresServer(tmp_path / "pg")
    bgd = BuildGridServer(tmp_path / "bgd", pg.dsn)
    workers = [WorkerProcess(tmp_path / f"worker{i}", bgd.url) for i in (1, 2)]
    yield bgd, workers
    for w in workers:
        w.stop()
    bgd.stop()
    pg.stop()


def demo(tmp_path, name) -> Workspace:
    ws = Workspace(tmp_path / name, tmp_path / f"{name}-cache")
    shutil.copytree(REPO / "examples" / "demo", ws.root, ignore=shutil.ignore_patterns(".buildgraph"))
    return ws


def tree(ws, node) -> dict:
    base = ws.out(node)
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_demo_runs_on_workers_bit_identical_and_then_from_the_action_cache(executor, tmp_path, capsys):
    bgd, workers = executor
    remote = demo(tmp_path, "remote")
    st = remote.build("--remote-executor", bgd.url, capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    assert "warning" not in st["_err"]
    nodes = {n for n in st if not n.startswith("_")}
    on_workers = [n for w in workers for n in w.ran()]
    assert sorted(on_workers) == sorted(nodes)            # every action ran on a worker, once
    local = demo(tmp_path, "local")
    assert local.build(capsys=capsys)["_rc"] == 0
    for node in nodes:
        assert tree(remote, node) == tree(local, node), node   # bit-identical to a local build

    # A second build on an empty local cache: every result comes from the action cache.
    shutil.rmtree(remote.cache)
    shutil.rmtree(remote.root / ".buildgraph")
    before = sum(len(w.ran()) for w in workers)
    st = remote.build("--remote-executor", bgd.url, capsys=capsys)
    assert st["_rc"] == 0
    assert sum(len(w.ran()) for w in workers) == before
    assert (remote.out("backend_test@fast-static") / "test.log").read_text().rstrip().endswith("ok")

    # SIGTERM: the worker reports BOT_TERMINATING and exits cleanly.
    import signal
    workers[0].proc.send_signal(signal.SIGTERM)
    assert workers[0].proc.wait(20) == 0
    assert "terminating" in workers[0].log.read_text()


def _one_target(tmp_path, target: str) -> Workspace:
    """A fresh workspace (beside the shared one the executor fixture serves) with one target."""
    ws = Workspace(tmp_path / "ws", tmp_path / "cache")
    ws.root.mkdir()
    ws.write("BUILD.yaml", f"targets:\n  {target}\n")
    return ws


@pytest.mark.slow
def test_killed_worker_its_action_runs_on_the_other(executor, tmp_path, capsys):
    bgd, workers = executor
    ws = _one_target(tmp_path, 'slow: {kind: script, outs: [o], cmds: ["sleep 4; echo done > $OUT/o"]}')
    proc = ws.spawn("build", "--remote-executor", bgd.url)
    deadline = time.time() + 60
    victim = None
    while victim is None and time.time() < deadline:
        victim = next((w for w in workers if "slow" in w.ran()), None)
        time.sleep(0.1)
    assert victim is not None, "no worker started the action"
    victim.kill()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    other = next(w for w in workers if w is not victim)
    assert "slow" in other.ran()
    assert (ws.out("slow") / "o").read_text() == "done\n"


@pytest.mark.slow
def test_remote_failure_shows_its_stderr(executor, tmp_path, capsys):
    bgd, _ = executor
    ws = _one_target(tmp_path, 'bad: {kind: script, outs: [o], cmds: ["echo this-went-wrong-remotely >&2; exit 7"]}')
    st = ws.build("--remote-executor", bgd.url, capsys=capsys)
    assert st["bad"] == "failed"
    assert "this-went-wrong-remotely" in st["_out"] and "on a remote worker" in st["_out"]


def test_unreachable_executor_warns_and_builds_locally(ws, capsys):
    ws.write("BUILD.yaml", "targets:\n  t: {kind: script, outs: [o], cmds: ['echo hi > $OUT/o']}\n")
    st = ws.build("--remote-executor", "grpc://127.0.0.1:9", "--remote-retries", "0", capsys=capsys)
    assert st["t"] == "ran" and st["_rc"] == 0
    assert st["_err"].count("warning: remote executor") == 1
