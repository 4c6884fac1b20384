"""Scheduling: -j and the shared jobserver, --keep-going, Ctrl-C, critical-path order."""

import json
import os
import signal

import pytest
import subprocess
import time

from conftest import ran, trace_actions

MAKEFILE = """\
JOBS := j1 j2 j3 j4 j5 j6
all: $(JOBS)
$(JOBS):
\t@s=$$(date +%s%N); sleep 0.3; echo "$$s $$(date +%s%N)" > $(OUT)/$@.span
.PHONY: all $(JOBS)
"""


def max_overlap(spans):
    points = sorted([(s, 1) for s, e in spans] + [(e, -1) for s, e in spans])
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def test_nested_makes_share_the_jobserver_slots(ws, capsys):
    ws.write("Makefile", MAKEFILE)
    ws.write("BUILD.yaml", """\
        targets:
          left: {kind: script, srcs: [Makefile], outs: [spans/], cmds: ["mkdir $OUT/spans", "make -f $SRC/Makefile OUT=$OUT/spans"]}
          right: {kind: script, srcs: [Makefile], outs: [spans/], env: {SIDE: r}, cmds: ["mkdir $OUT/spans", "make -f $SRC/Makefile OUT=$OUT/spans"]}
        """)
    st = ws.build("-j2", capsys=capsys)
    assert ran(st) == {"left", "right"}, st["_out"]
    spans = [tuple(map(int, p.read_text().split())) for node in ("left", "right")
             for p in (ws.out(node) / "spans").iterdir()]
    assert len(spans) == 12
    assert max_overlap(spans) == 2        # 2 actions x make -j would be 12 at once without a jobserver


def test_make_alone_uses_all_slots(ws, capsys):
    ws.write("Makefile", MAKEFILE)
    ws.write("BUILD.yaml", """\
        targets:
          only: {kind: script, srcs: [Makefile], outs: [spans/], cmds: ["mkdir $OUT/spans", "make -f $SRC/Makefile OUT=$OUT/spans"]}
        """)
    ws.build("-j3", capsys=capsys)
    spans = [tuple(map(int, p.read_text().split())) for p in (ws.out("only") / "spans").iterdir()]
    assert max_overlap(spans) == 3


def test_fifo_jobserver_form_is_reachable(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          f:
            kind: script
            jobserver: fifo
            outs: [t]
            cmds:
              - 'fifo=$(echo "$MAKEFLAGS" | sed -n "s/.*--jobserver-auth=fifo:\\([^ ]*\\).*/\\1/p")'
              - 'test -p "$fifo"'
              - 'exec 3<>"$fifo"; head -c 1 <&3 > $OUT/t; cat $OUT/t >&3'
        """)
    st = ws.build("-j2", capsys=capsys)
    assert st["f"] == "ran", st["_out"]
    assert (ws.out("f") / "t").read_text() == "+"


def test_keep_going_builds_what_does_not_depend_on_the_failure(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          bad: {kind: script, outs: [o], cmds: ["exit 1"]}
          after_bad: {kind: script, deps: [bad], outs: [o], cmds: ["touch $OUT/o"]}
          good1: {kind: script, outs: [o], cmds: ["sleep 0.2; touch $OUT/o"]}
          good2: {kind: script, deps: [good1], outs: [o], cmds: ["touch $OUT/o"]}
        """)
    st = ws.build("-k", "-j1", capsys=capsys)
    assert st["_rc"] == 1
    assert st["bad"] == "failed" and st["after_bad"] == "skipped"
    assert st["good1"] == "ran" and st["good2"] == "ran"


def test_without_keep_going_nothing_new_starts_after_a_failure(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          a_bad: {kind: script, outs: [o], cmds: ["exit 1"]}
          z_later: {kind: script, outs: [o], cmds: ["touch $OUT/o"]}
        """)
    st = ws.build("-j1", capsys=capsys)
    assert st["_rc"] == 1 and st["a_bad"] == "failed" and "z_later" not in st
    assert "1 not started" in st["_out"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_children_and_keeps_finished_results(ws, sig):
    # A sleep of its own length: pgrep below must not find another test's (or anyone's) sleep.
    sleep = f"sleep 60.{os.getpid()}{sig.value}"
    ws.write("BUILD.yaml", f"""\
        targets:
          quick: {{kind: script, outs: [q], cmds: ["echo q > $OUT/q"]}}
          slow: {{kind: script, outs: [s], cmds: ["{sleep} && echo s > $OUT/s"]}}
        """)
    proc = ws.spawn("build", "-j2", "--log-json", str(ws.root / "cut.json"), "--profile", str(ws.root / "cut-trace.json"))
    deadline = time.time() + 30
    while not (ws.out("quick") / "q").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, out + err
    assert time.time() - t0 < 10
    assert "interrupted" in err
    left = subprocess.run(["pgrep", "-f", sleep], capture_output=True, text=True).stdout.split()
    assert not left
    # The interrupted build still wrote its event log and trace: what finished, what did not.
    cut = {e["node"]: e["status"] for e in map(json.loads, (ws.root / "cut.json").read_text().splitlines())}
    assert cut["quick"] == "ran" and cut.get("slow", "cancelled") != "ran", cut
    assert "quick" in {e["name"] for e in trace_actions(ws.root / "cut-trace.json")}
    proc = ws.spawn("build", "quick", "--log-json", str(ws.root / "ev.json"))
    proc.communicate(timeout=30)
    events = [json.loads(line) for line in (ws.root / "ev.json").read_text().splitlines()]
    assert events[0]["node"] == "quick" and events[0]["status"] == "up-to-date"


def test_critical_path_runs_first(ws, capsys):
    spec = """\
        targets:
          a_short1: {kind: script, srcs: [v], outs: [o], cmds: ["sleep 0.05; cp $SRC/v $OUT/o"]}
          b_short2: {kind: script, srcs: [v], outs: [o], cmds: ["sleep 0.06; cp $SRC/v $OUT/o"]}
          z_long: {kind: script, srcs: [v], outs: [o], cmds: ["sleep 0.6; cp $SRC/v $OUT/o"]}
          z_tail: {kind: script, deps: [z_long], outs: [o], cmds: ["cp $DEP_Z_LONG/o $OUT/o"]}
        """
    ws.write("BUILD.yaml", spec)
    ws.write("v", "1")
    ws.build("-j1", capsys=capsys)          # records durations
    ws.write("v", "2")
    log = ws.root / "order.json"
    rc, out, _ = ws.run("build", "-j1", "--log-json", str(log), capsys=capsys)
    order = [json.loads(line)["node"] for line in log.read_text().splitlines()]
    # The event log lists nodes in build order (topological); check the run order via the trace.
    trace = ws.root / "trace.json"
    ws.write("v", "3")
    ws.run("build", "-j1", "--profile", str(trace), capsys=capsys)
    events = trace_actions(trace)
    assert [e["name"] for e in events][0] == "z_long"
    assert {e["name"] for e in events} == {"a_short1", "b_short2", "z_long", "z_tail"}
    assert all(e["ph"] == "X" and e["dur"] > 0 for e in events)
    assert set(order) == {"a_short1", "b_short2", "z_long", "z_tail"}


def test_the_first_action_starts_before_every_ready_node_is_checked(ws, capsys, monkeypatch):
    from buildgraph.engine import Engine
    from buildgraph.scheduler import CHECK_BATCH
    from buildgraph.ui import PlainReporter

    ws.write("BUILD.yaml", "targets:\n" + "".join(
        f"  n{i}: {{kind: script, outs: [o], cmds: [\"echo {i} > $OUT/o\"]}}\n" for i in range(100)))
    checked, at_first_start = [], []
    action_for, started = Engine.action_for, PlainReporter.started

    def counting_action_for(self, *args, **kw):
        checked.append(1)
        return action_for(self, *args, **kw)

    def noting_started(self, name):
        if not at_first_start:
            at_first_start.append(len(checked))
        return started(self, name)
    monkeypatch.setattr(Engine, "action_for", counting_action_for)
    monkeypatch.setattr(PlainReporter, "started", noting_started)
    statuses = ws.build("-j1", capsys=capsys)
    assert statuses["_rc"] == 0 and len(ran(statuses)) == 100
    # The rest of the 100 leaves are checked while the first actions run.
    assert len(checked) == 100 and at_first_start[0] <= CHECK_BATCH


def test_the_trace_shows_the_build_its_slots_restored_nodes_and_phases_inside_actions(ws, capsys):
    ws.write("v", "1")
    ws.write("BUILD.yaml", """\
        targets:
          a: {kind: script, outs: [o], cmds: ["echo a > $OUT/o"]}
          b: {kind: script, srcs: [v], deps: [a], outs: [o], cmds: ["sleep 0.2; cat $SRC/v $DEP_A/o > $OUT/o"]}
        """)
    ws.build(capsys=capsys)
    ws.write("v", "2")
    trace = ws.root / "trace.json"
    assert ws.run("build", "-j1", "--profile", str(trace), capsys=capsys)[0] == 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {(e["name"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"].endswith("_name")}
    assert {("process_name", "buildgraph build"), ("thread_name", "build"), ("thread_name", "slot 1")} <= names
    build = next(e for e in events if e.get("cat") == "build")
    [b] = trace_actions(trace)
    assert b["name"] == "b" and b["tid"] == 1 and build["ts"] <= b["ts"] and b["ts"] + b["dur"] <= build["dur"]
    up = next(e for e in events if e["name"] == "a")
    assert up["ph"] == "i" and up["cat"] == "up-to-date" and up["tid"] == 0
    phases = [e for e in events if e.get("cat") == "phase"]
    assert [p["name"] for p in phases] == ["stage", "run", "collect", "store"]
    assert all(p["tid"] == 1 and b["ts"] <= p["ts"] for p in phases[:3])
    # The sleep is in the run; the store, on the build's thread, waits on the disk (under the
    # parallel suite, once, longer than the sleep), so it is not compared.
    assert max(phases[:3], key=lambda p: p["dur"])["name"] == "run" and phases[1]["dur"] >= 200_000


def test_declared_estimate_orders_a_fresh_build(ws, capsys):
    """No durations recorded yet: `estimate` puts the long node first (alphabetical order
    and the default estimate would start it last); a bad estimate is a load error."""
    ws.write("BUILD.yaml", """\
        targets:
          a_short: {kind: script, outs: [o], cmds: ["echo a > $OUT/o"]}
          b_short: {kind: script, outs: [o], cmds: ["echo b > $OUT/o"]}
          z_long: {kind: script, estimate: 12m, outs: [o], cmds: ["echo z > $OUT/o"]}
        """)
    trace = ws.root / "trace.json"
    rc, out, err = ws.run("build", "-j1", "--profile", str(trace), capsys=capsys)
    assert rc == 0, out + err
    events = trace_actions(trace)
    assert [e["name"] for e in events][0] == "z_long"
    ws.write("BUILD.yaml", "targets:\n  z: {kind: script, estimate: soon, outs: [o], cmds: [\"true\"]}\n")
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:2" in err and "estimate" in err and "12m" in err


def test_a_waiting_heavy_node_holds_no_slot_a_running_make_could_use(ws, capsys):
    """While a weight-2 node waits for two free slots, a running make gets the free one:
    the scheduler does not sit on it (which left one core idle for a whole OpenCV build)."""
    ws.write("Makefile", MAKEFILE)
    ws.write("BUILD.yaml", """\
        targets:
          pre: {kind: script, estimate: 1s, outs: [o], cmds: ["sleep 0.2", "touch $OUT/o"]}
          heavy: {kind: script, weight: 2, estimate: 10m, deps: [pre], outs: [o], cmds: ["touch $OUT/o"]}
          runner: {kind: script, estimate: 2s, srcs: [Makefile], outs: [spans/],
                   cmds: ["mkdir $OUT/spans", "sleep 1", "make -f $SRC/Makefile OUT=$OUT/spans"]}
        """)
    st = ws.build("-j2", capsys=capsys)
    assert st["runner"] == "ran" and st["heavy"] == "ran", st["_out"]
    spans = [tuple(map(int, p.read_text().split())) for p in (ws.out("runner") / "spans").iterdir()]
    assert max_overlap(spans) == 2


def test_weight_is_admission_and_the_heavy_nodes_make_gets_the_slots(ws, capsys):
    """A weight-2 node on -j2 starts only when both slots are free, then its own make
    runs two jobs at once (it is not left with one slot while buildgraph holds the other)."""
    ws.write("Makefile", MAKEFILE)
    ws.write("BUILD.yaml", """\
        targets:
          heavy: {kind: script, weight: 2, srcs: [Makefile], outs: [spans/],
                  cmds: ["mkdir $OUT/spans", "make -f $SRC/Makefile OUT=$OUT/spans"]}
        """)
    st = ws.build("-j2", capsys=capsys)
    assert st["heavy"] == "ran", st["_out"]
    spans = [tuple(map(int, p.read_text().split())) for p in (ws.out("heavy") / "spans").iterdir()]
    assert max_overlap(spans) == 2


def test_a_restored_nodes_line_is_in_the_log_while_an_action_still_runs(ws, capsys):
    """Restored nodes' lines are buffered (a few writes a second, not one per node), but a
    log followed live (CI, `| tee`) shows them before the build waits on a running action."""
    ws.write("BUILD.yaml", """\
        targets:
          quick: {kind: script, outs: [q], cmds: ["echo q > $OUT/q"]}
          slow: {kind: script, outs: [s], cmds: ["sleep 60", "echo s > $OUT/s"]}
        """)
    assert ws.build("quick", capsys=capsys)["quick"] == "ran"
    assert ws.run("clean", capsys=capsys)[0] == 0
    proc = ws.spawn("build", "-j2", env={"PYTHONUNBUFFERED": ""})   # a pipe, buffered: the plain reporter
    try:
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        seen, deadline = "", time.time() + 20
        while "cached quick" not in seen and time.time() < deadline and proc.poll() is None:
            try:
                seen += os.read(fd, 65536).decode()
            except BlockingIOError:
                time.sleep(0.05)
        assert "cached quick" in seen and proc.poll() is None, seen
    finally:
        proc.kill()
        proc.communicate()
