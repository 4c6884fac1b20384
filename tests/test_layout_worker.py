"""Restored outputs laid out by a second process (layout_worker.py): the same out/ as the
build lays out itself, recorded only once laid out, and what the worker cannot do is done
or reported by the build."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from buildgraph import engine, fsutil, layout_worker

NODES = """\
targets:
  tree: {kind: script, outs: [bin/tool, share/data.txt, link], cmds: [
    "mkdir -p $OUT/bin $OUT/share", "printf '#!/bin/sh\\\\necho hi\\\\n' > $OUT/bin/tool",
    "chmod +x $OUT/bin/tool", "echo data > $OUT/share/data.txt", "ln -s share/data.txt $OUT/link"]}
""" + "".join(f"""\
  n{i}: {{kind: script, outs: [o], cmds: ["echo {i} > $OUT/o"]}}
""" for i in range(5))


def _counting_workers(monkeypatch) -> list:
    started = []

    class Counted(layout_worker.LayoutWorker):
        def __init__(self):
            super().__init__()
            started.append([p.pid for p in self.procs])
    monkeypatch.setattr(engine, "LayoutWorker", Counted)
    return started


def _check_outputs(ws):
    tree = ws.out("tree")
    assert (tree / "bin" / "tool").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(os.stat(tree / "bin" / "tool").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(tree / "share" / "data.txt").st_mode) == 0o444
    assert os.readlink(tree / "link") == "share/data.txt"
    for i in range(5):
        assert sorted(os.listdir(ws.out(f"n{i}"))) == ["o"]
        assert (ws.out(f"n{i}") / "o").read_text() == f"{i}\n"


def test_a_restore_past_the_first_nodes_is_laid_out_by_the_worker(ws, capsys, monkeypatch):
    ws.write("BUILD.yaml", NODES)
    assert ws.build(capsys=capsys)["_rc"] == 0
    assert ws.run("clean", capsys=capsys)[0] == 0
    monkeypatch.setattr(engine, "LAYOUT_WORKER_AFTER", 2)
    started = _counting_workers(monkeypatch)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0 and all(st[n] == "cached" for n in ("tree", "n0", "n4")), st
    assert len(started) == 1
    _check_outputs(ws)
    again = ws.build(capsys=capsys)   # recorded as laid out: nothing to restore
    assert all(again[n] == "up-to-date" for n in ("tree", "n0", "n4")), again


def test_a_directory_that_is_there_is_replaced_by_the_build_itself(ws, capsys, monkeypatch):
    """The worker only makes new directories: one already there (here: its record lost,
    an output edited, a stray file added) is answered EXISTS and replaced whole."""
    ws.write("BUILD.yaml", NODES)
    assert ws.build(capsys=capsys)["_rc"] == 0
    (ws.root / ".buildgraph" / "state.marshal").unlink()
    edited = ws.out("n3") / "o"
    edited.chmod(0o644)
    edited.write_text("edited\n")
    (ws.out("n1") / "stray").write_text("x")
    monkeypatch.setattr(engine, "LAYOUT_WORKER_AFTER", 0)
    started = _counting_workers(monkeypatch)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0 and st["n3"] == "cached", st
    assert len(started) == 1
    _check_outputs(ws)
    assert ws.build(capsys=capsys)["n3"] == "up-to-date"


def test_what_the_worker_cannot_lay_out_fails_the_build_and_is_laid_out_next_time(ws, capsys, monkeypatch):
    ws.write("BUILD.yaml", NODES)
    assert ws.build(capsys=capsys)["_rc"] == 0
    assert ws.run("clean", capsys=capsys)[0] == 0
    blocker = ws.root / ".buildgraph" / "out"
    blocker.write_text("not a directory")   # every node's directory is refused
    monkeypatch.setattr(engine, "LAYOUT_WORKER_AFTER", 0)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 1 and f"error: {blocker}" in st["_err"] and "Traceback" not in st["_err"], st["_err"]
    blocker.unlink()
    st = ws.build(capsys=capsys)   # nothing was recorded as laid out, and the cache kept every entry
    assert st["_rc"] == 0 and all(st[n] == "cached" for n in ("tree", "n0", "n4")), st
    _check_outputs(ws)


@pytest.mark.parametrize("stage", [0, 1], ids=["dirs", "files"])
def test_a_worker_that_dies_leaves_the_laying_out_to_the_build(ws, capsys, monkeypatch, stage):
    ws.write("BUILD.yaml", NODES)
    assert ws.build(capsys=capsys)["_rc"] == 0
    assert ws.run("clean", capsys=capsys)[0] == 0

    class Dying(layout_worker.LayoutWorker):
        def __init__(self):
            super().__init__()
            self.procs[stage].kill()
            self.procs[stage].wait()
    monkeypatch.setattr(engine, "LayoutWorker", Dying)
    monkeypatch.setattr(engine, "LAYOUT_WORKER_AFTER", 0)
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 0 and all(st[n] == "cached" for n in ("tree", "n0", "n4")), st
    _check_outputs(ws)
    assert ws.build(capsys=capsys)["tree"] == "up-to-date"


def test_a_stage_whose_next_stage_is_gone_ends_quietly(tmp_path):
    """The first stage made its directories and cannot pass them on: it exits 0 without a
    traceback on the build's terminal; the build sees the broken pipeline and lays out the
    rest itself (above)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(layout_worker.__file__).parent.parent)!r}); "
            "from buildgraph.layout_worker import serve; serve('dirs')")
    proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()   # the next stage is gone
    proc.stdin.write(layout_worker._framed([(str(tmp_path / "out"), "n0", ())]))
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""
    assert (tmp_path / "out" / "n0").is_dir()


def test_node_directories_are_made_in_runs_the_first_of_each_spread(tmp_path, monkeypatch):
    """ext4 places a directory made under out/'s hint (chattr +T) by scanning every block
    group, and the next ones made without it beside the last: the first stage sets the hint
    for the first directory of each run of SPREAD_RUN and clears it for the rest, and sets
    it again at the end of each batch. Here the flags are simulated, to see them at each mkdir."""
    top = str(tmp_path / "out")
    os.mkdir(top)
    other = 0x80000   # another flag of out/ (extents): kept as it is
    flags = {"now": other | fsutil.TOPDIR}
    seen = []
    monkeypatch.setattr(layout_worker, "inode_flags", lambda fd: flags["now"])
    monkeypatch.setattr(layout_worker, "set_inode_flags", lambda fd, value: flags.update(now=value))
    made = layout_worker.make_new_dir
    monkeypatch.setattr(layout_worker, "make_new_dir",
                        lambda t, n: seen.append(bool(flags["now"] & fsutil.TOPDIR)) or made(t, n))
    runs = layout_worker.SpreadRuns()
    run = layout_worker.SPREAD_RUN
    answers, batch, total = [], run + 1, 6 * (run + 1)   # batches that end inside a run
    for first in range(0, total, batch):
        answers += layout_worker.make_dirs([(top, f"n{i}", ()) for i in range(first, first + batch)], runs)
        assert flags["now"] == other | fsutil.TOPDIR   # on again after each batch
    runs.close()
    assert seen == [i % run == 0 for i in range(total)]
    assert [a[3] for a in answers] == [None] * total and len(os.listdir(top)) == total


def test_a_hint_this_process_may_not_change_leaves_the_directories_made_as_they_come(tmp_path, monkeypatch):
    top = str(tmp_path / "out")
    os.mkdir(top)

    def refused(fd, value):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(layout_worker, "inode_flags", lambda fd: fsutil.TOPDIR)
    monkeypatch.setattr(layout_worker, "set_inode_flags", refused)
    runs = layout_worker.SpreadRuns()
    answers = layout_worker.make_dirs([(top, f"n{i}", ()) for i in range(40)], runs)
    runs.close()
    assert [a[3] for a in answers] == [None] * 40 and len(os.listdir(top)) == 40


def test_out_keeps_its_hint_after_a_restore_where_the_filesystem_has_one(tmp_path):
    top = str(tmp_path / "out")
    fsutil.make_top_dir(top)
    runs = layout_worker.SpreadRuns()
    layout_worker.make_dirs([(top, f"n{i}", ()) for i in range(40)], runs)
    runs.close()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = fsutil.inode_flags(fd)
    finally:
        os.close(fd)
    if flags is None:
        pytest.skip("this filesystem has no inode flags")
    assert flags & fsutil.TOPDIR
