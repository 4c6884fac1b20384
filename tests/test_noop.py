"""The no-op check (noop.py): it answers a build that would do nothing without loading the
workspace, and never answers one that would do something."""

import os
import shutil
import time

import pytest

from conftest import ran, trace_actions
from test_incremental import make_chain


@pytest.fixture
def sessions(monkeypatch):
    """How many builds went past the no-op check and opened a session (loaded the state and
    the workspace)."""
    from buildgraph import operations

    opened = []
    real = operations.Session.__init__

    def counting(self, *args, **kw):
        opened.append(1)
        real(self, *args, **kw)
    monkeypatch.setattr(operations.Session, "__init__", counting)
    return opened


def settle():
    """Past the window in which a file just written is too young to vouch for (racy)."""
    time.sleep(0.25)


def test_a_noop_build_is_answered_from_stat_signatures_alone(ws, capsys, sessions):
    make_chain(ws)
    assert ran(ws.build(capsys=capsys)) == {"gen", "lib", "other", "app"}
    assert len(sessions) == 1
    second = ws.build(capsys=capsys)
    assert len(sessions) == 1   # no state, no YAML, no keys
    assert {second[n] for n in ("gen", "lib", "other", "app")} == {"up-to-date"}
    assert "4 nodes: 0 ran, 0 cached, 4 up to date in " in second["_out"]
    trace = ws.root / "trace.json"
    assert ws.run("build", "--profile", str(trace), capsys=capsys)[0] == 0
    assert len(sessions) == 1 and trace_actions(trace) == []   # the up-to-date nodes only, as instants


def _edit_source(ws):
    ws.write("lib/a.c", "int a2;\n")


def _same_content_new_inode(ws):
    path = ws.root / "other.c"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _edit_output(ws):
    out = ws.out("other") / "other.txt"
    out.chmod(0o644)
    out.write_text("edited\n")


def _add_glob_match(ws):
    ws.write("lib/c.c", "int c;\n")


def _remove_glob_match(ws):
    (ws.root / "lib" / "b.c").unlink()


def _edit_build_file(ws):
    path = ws.root / "BUILD.yaml"
    path.write_text(path.read_text().replace('FLAGS: "-O2"', 'FLAGS: "-O3"'))


def _another_grep_on_path(ws, monkeypatch):
    bin_dir = ws.root.parent / "other-bin"
    bin_dir.mkdir()
    shutil.copy2(shutil.which("grep"), bin_dir / "grep")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _another_kernel(ws, monkeypatch):
    from buildgraph import signatures
    monkeypatch.setattr(signatures, "kernel_release", lambda: "0.0.0-other-kernel")


def _buildgraph_changed(ws, monkeypatch):
    from buildgraph import signatures
    real = signatures.code_signature
    monkeypatch.setattr(signatures, "code_signature", lambda: real() + (("", "new.py", 1, 2),))


CHANGES = {
    # change -> (how, what runs then; None: not asserted)
    "edit a source": (_edit_source, {"lib", "app"}),
    "same bytes, new file": (_same_content_new_inode, set()),
    "edit an output": (_edit_output, set()),
    "a file joins a glob": (_add_glob_match, {"lib", "app"}),
    "a file leaves a glob": (_remove_glob_match, {"lib", "app"}),
    "edit BUILD.yaml": (_edit_build_file, {"lib", "app"}),
}
HOST_CHANGES = {
    "another grep on PATH": (_another_grep_on_path, None),   # every key names the host tools
    "another kernel": (_another_kernel, {"gen", "lib", "other", "app"}),
    "buildgraph's code changed": (_buildgraph_changed, set()),
}


@pytest.mark.parametrize("change", [*CHANGES, *HOST_CHANGES])
def test_any_change_is_left_to_the_build(ws, capsys, sessions, monkeypatch, change):
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.build(capsys=capsys)["app"] == "up-to-date" and len(sessions) == 1
    if change in CHANGES:
        CHANGES[change][0](ws)
        expected = CHANGES[change][1]
    else:
        HOST_CHANGES[change][0](ws, monkeypatch)
        expected = HOST_CHANGES[change][1]
    after = ws.build(capsys=capsys)
    assert len(sessions) == 2, "the no-op check answered a build that had a change to look at"
    assert after["_rc"] == 0
    if expected is not None:
        assert ran(after) == expected
    if change == "edit an output":
        assert after["other"] == "cached" and (ws.out("other") / "other.txt").read_text() == "int other;\n"


@pytest.mark.parametrize("past_a_change", [False, True])
def test_a_host_change_while_a_build_runs_is_seen_by_the_next_build(ws, capsys, monkeypatch, past_a_change):
    """The record's host facts are the host the keys read, taken before they read it: a
    change during the build (an apt upgrade beside a long compile) fails the next check,
    which then keys every node again, instead of passing it as if the keys had seen it."""
    from buildgraph import engine, signatures

    make_chain(ws)
    if past_a_change:   # a record to check against: the build is one past a change
        ws.build(capsys=capsys)
        _edit_source(ws)
        settle()
    kernel = ["5.0.0-before"]
    monkeypatch.setattr(signatures, "kernel_release", lambda: kernel[0])
    real = engine.Engine.record

    def upgraded_after_the_first_result(self, *args, **kw):
        kernel[0] = "6.0.0-after"
        return real(self, *args, **kw)
    monkeypatch.setattr(engine.Engine, "record", upgraded_after_the_first_result)
    assert ws.build(capsys=capsys)["_rc"] == 0 and kernel[0] == "6.0.0-after"
    monkeypatch.setattr(engine.Engine, "record", real)
    assert ran(ws.build(capsys=capsys)) == {"gen", "lib", "other", "app"}   # keyed with the new kernel


def test_a_partial_build_in_between_is_never_skipped_over(ws, capsys, sessions):
    """`build gen` after an edit changes gen's output; the next full build must see that its
    dependents are stale, though nothing it can stat changed since `build gen`."""
    make_chain(ws)
    ws.build(capsys=capsys)
    ws.write("data.txt", "# header\nthree\n")
    settle()
    assert ran(ws.build("gen", capsys=capsys)) == {"gen"}
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    assert ws.build("--sandbox", "none", capsys=capsys)["_rc"] == 0   # another request: not answered
    assert len(sessions) == 4


def test_a_failed_build_removes_the_record(ws, capsys, sessions):
    make_chain(ws)
    ws.build(capsys=capsys)
    record = ws.root / ".buildgraph" / "noop.marshal"
    assert record.exists()
    ws.write("other.c", "int other2;\n")
    path = ws.root / "BUILD.yaml"
    path.write_text(path.read_text().replace('cp $SRC/other.c $OUT/other.txt', 'exit 3'))
    settle()
    assert ws.build(capsys=capsys)["_rc"] == 1
    assert not record.exists()
    path.write_text(path.read_text().replace('exit 3', 'cp $SRC/other.c $OUT/other.txt'))
    settle()
    assert ran(ws.build(capsys=capsys)) == {"other", "app"}


def test_clean_removes_the_record(ws, capsys, sessions):
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.run("clean", capsys=capsys)[0] == 0
    assert not (ws.root / ".buildgraph" / "noop.marshal").exists()
    assert set(ws.build(capsys=capsys).values()) >= {"cached"}


def test_unchanged_nodes_are_not_keyed_again(ws, capsys, monkeypatch):
    """Past the no-op check, a node whose inputs are as its last build's is up to date
    without its action and key being computed (Engine.unchanged); its dependents are not."""
    from buildgraph.engine import Engine

    make_chain(ws)
    ws.build(capsys=capsys)
    keyed = []
    real = Engine.action_for
    monkeypatch.setattr(Engine, "action_for", lambda self, node, deps: keyed.append(node.name) or
                        real(self, node, deps))
    _edit_source(ws)
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    assert sorted(keyed) == ["app", "lib"]


def test_clean_keeps_what_it_knows_of_the_sources(ws, capsys, monkeypatch):
    """After `clean` everything is restored from the cache without hashing a source again
    (the stat cache stays: each entry is checked against the file's stat signature), and
    `why` still explains the next change (the restored nodes' inputs are recorded)."""
    from buildgraph import digest

    make_chain(ws)
    ws.build(capsys=capsys)
    settle()
    ws.build(capsys=capsys)   # past the racy window: every source's digest is trusted
    assert ws.run("clean", capsys=capsys)[0] == 0
    hashed = []
    real = digest.file_digest
    monkeypatch.setattr(digest, "file_digest", lambda path: hashed.append(str(path)) or real(path))
    after = ws.build(capsys=capsys)
    assert {after[n] for n in ("gen", "lib", "other", "app")} == {"cached"}, after
    assert not [p for p in hashed if p.startswith(str(ws.root)) and "/.buildgraph/" not in p]
    ws.write("lib/a.c", "int a3;\n")
    rc, out, _ = ws.run("why", "lib", capsys=capsys)
    assert rc == 0 and "lib: source changed: lib/a.c" in out


def _keyed(monkeypatch) -> list[str]:
    """The nodes whose action (and so key) a build computes from now on."""
    from buildgraph.engine import Engine

    keyed = []
    real = Engine.action_for
    monkeypatch.setattr(Engine, "action_for", lambda self, node, deps: keyed.append(node.name) or
                        real(self, node, deps))
    return keyed


def test_after_clean_a_node_whose_inputs_are_unchanged_is_restored_by_its_recorded_key(ws, capsys, monkeypatch):
    """`clean` keeps each node's key with what it was computed from: the build after it
    restores every unchanged node without computing its key; an edited source is keyed
    and run, with everything downstream of it, and never restored by its old key."""
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.run("clean", capsys=capsys)[0] == 0
    keyed = _keyed(monkeypatch)
    after = ws.build(capsys=capsys)
    assert {after[n] for n in ("gen", "lib", "other", "app")} == {"cached"} and keyed == []
    assert (ws.out("app") / "app.txt").read_text() == "int a;\nint b;\none\ntwo\n-O2\nint other;\n"
    assert ws.run("clean", capsys=capsys)[0] == 0
    ws.write("lib/a.c", "int a2;\n")
    after = ws.build(capsys=capsys)
    assert ran(after) == {"lib", "app"} and sorted(keyed) == ["app", "lib"]
    assert {after[n] for n in ("gen", "other")} == {"cached"}
    assert (ws.out("app") / "app.txt").read_text().startswith("int a2;\n")


def test_a_recorded_key_the_cache_no_longer_has_is_one_miss_and_the_node_runs(ws, capsys, monkeypatch):
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.run("clean", capsys=capsys)[0] == 0
    assert ws.run("cache", "clean", capsys=capsys)[0] == 0
    keyed = _keyed(monkeypatch)
    after = ws.build(capsys=capsys)
    assert ran(after) == {"gen", "lib", "other", "app"} and sorted(keyed) == ["app", "gen", "lib", "other"]
    rc, out, _ = ws.run("cache", "stats", capsys=capsys)
    assert rc == 0 and "local store: 0 hits, 4 misses" in out, out


def test_after_clean_the_graph_shows_nothing_built_and_why_still_explains(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.run("clean", capsys=capsys)[0] == 0
    rc, out, _ = ws.run("graph", "--format", "dot", capsys=capsys)
    assert rc == 0 and "filled" not in out, out
    ws.write("lib/a.c", "int a3;\n")
    rc, out, _ = ws.run("why", "lib", capsys=capsys)
    assert rc == 0 and "lib: source changed: lib/a.c" in out, out


def test_a_noop_build_loads_no_http_tls_sqlite_yaml_or_rich(ws, capsys):
    make_chain(ws)
    assert ran(ws.build(capsys=capsys)) == {"gen", "lib", "other", "app"}
    code = ("import sys; from buildgraph.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('urllib3', 'http.client', 'ssl', 'sqlite3', 'yaml', 'rich') "
            "if m in sys.modules), file=sys.stderr)")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", code, "build", "-C", str(ws.root), "--cache-dir", str(ws.cache)],
                          capture_output=True, text=True)
    assert "4 up to date" in proc.stdout and proc.stderr.strip().endswith("0 []"), proc.stdout + proc.stderr


def test_past_a_change_the_record_vouches_for_the_nodes_it_did_not_touch(ws, capsys, monkeypatch):
    """When only sources and outputs changed since the record, the nodes upstream of and
    beside the change are up to date without their sources being expanded, statted or
    digested again (Engine.trust): only the changed node's and its dependents' are."""
    from buildgraph.engine import Engine

    make_chain(ws)
    ws.build(capsys=capsys)
    read = []
    real = Engine._sources
    monkeypatch.setattr(Engine, "_sources", lambda self, target: read.append(target) or real(self, target))
    _edit_source(ws)
    after = ws.build(capsys=capsys)
    assert ran(after) == {"lib", "app"} and after["gen"] == after["other"] == "up-to-date"
    assert set(read) == {"lib", "app"}
    assert (ws.out("app") / "app.txt").read_text() == "int a2;\nint b;\none\ntwo\n-O2\nint other;\n"


def test_a_packed_map_pickles_what_was_read_and_what_was_not_alike():
    import pickle

    import pytest

    from buildgraph.packedmap import PackedMap

    m = PackedMap({"b": (1, "x"), "a": [2]})
    once = pickle.loads(pickle.dumps(m))
    assert list(once) == ["b", "a"] and len(once) == 2 and "a" in once and "c" not in once
    assert once["a"] == [2]                  # read: unpickled now
    twice = pickle.loads(pickle.dumps(once))  # one value read, one still packed
    assert twice == {"b": (1, "x"), "a": [2]} == m and dict(twice.items()) == {"b": (1, "x"), "a": [2]}
    with pytest.raises(KeyError):
        twice["c"]
    assert twice.get("c") is None


def test_past_a_change_only_the_targets_walked_are_unpickled(ws, capsys, monkeypatch):
    """The workspace kept between builds loads target by target (packedmap.py): a build
    past a change reads the targets of the nodes it walks, and no other."""
    from buildgraph.packedmap import PackedMap

    make_chain(ws)
    ws.build(capsys=capsys)
    read = []
    real = PackedMap.__getitem__

    def spy(self, key):
        if key not in self._values:
            read.append(key)
        return real(self, key)
    monkeypatch.setattr(PackedMap, "__getitem__", spy)
    _edit_source(ws)
    after = ws.build(capsys=capsys)
    assert ran(after) == {"lib", "app"} and after["gen"] == after["other"] == "up-to-date"
    assert sorted(read) == ["app", "lib"]


DIAMOND = """\
host_tools: [sh, cat, head]
targets:
  top: {kind: script, srcs: [top.txt], outs: [o], cmds: ["head -n1 $SRC/top.txt > $OUT/o"]}
  left: {kind: script, srcs: [left.txt, shared.txt], deps: [top], outs: [o],
         cmds: ["cat $DEP_TOP/o $SRC/left.txt $SRC/shared.txt > $OUT/o"]}
  right: {kind: script, srcs: [right.txt, shared.txt], deps: [top], outs: [o],
          cmds: ["cat $DEP_TOP/o $SRC/right.txt $SRC/shared.txt > $OUT/o"]}
  bottom: {kind: script, srcs: [bottom.txt], deps: [left, right], outs: [o],
           cmds: ["cat $DEP_LEFT/o $DEP_RIGHT/o $SRC/bottom.txt > $OUT/o"]}
  aside: {kind: script, srcs: [aside.txt], outs: [o], cmds: ["cat $SRC/aside.txt > $OUT/o"]}
"""


def test_edits_sources_and_outputs_in_any_mix_build_what_a_clean_build_would(ws, capsys):
    """A run of edits: sources (one read by two targets, one whose change its node's output
    does not show), outputs tampered with, several at once, none. After every build each
    output is what the sources say, whether the record vouched for a node or not."""
    import random

    ws.write("BUILD.yaml", DIAMOND)
    files = {f"{n}.txt": f"{n} 0\n" for n in ("top", "left", "right", "bottom", "aside", "shared")}
    for rel, text in files.items():
        ws.write(rel, text)
    settle()

    def expected() -> dict[str, str]:
        top = files["top.txt"].splitlines(keepends=True)[0]
        left = top + files["left.txt"] + files["shared.txt"]
        right = top + files["right.txt"] + files["shared.txt"]
        return {"top": top, "left": left, "right": right, "bottom": left + right + files["bottom.txt"],
                "aside": files["aside.txt"]}
    rng = random.Random(16)
    for step in range(14):
        for _ in range(rng.randint(0, 2)):
            what = rng.choice(["source", "source", "second line of top", "output"])
            if what == "output":
                node = rng.choice(list(expected()))
                out = ws.out(node) / "o"
                if out.exists():
                    out.chmod(0o644)
                    out.write_text("tampered\n")
            elif what == "second line of top":   # its output does not change: no one downstream runs
                files["top.txt"] = files["top.txt"].splitlines(keepends=True)[0] + f"more {step}\n"
                ws.write("top.txt", files["top.txt"])
            else:
                rel = rng.choice(list(files))
                files[rel] = f"{rel} {step}\n"
                ws.write(rel, files[rel])
        settle()
        st = ws.build(capsys=capsys)
        assert st["_rc"] == 0, st["_out"] + st["_err"]
        for node, text in expected().items():
            assert (ws.out(node) / "o").read_text() == text, (step, node, st)


def _record(ws) -> tuple | None:
    import marshal

    path = ws.root / ".buildgraph" / "noop.marshal"
    return marshal.loads(path.read_bytes()) if path.exists() else None


def test_the_record_a_build_past_a_change_patches_is_the_one_it_would_write_whole(ws, capsys):
    """A build that trusted the record writes the next one by patching it: the entries of the
    nodes it rewrote replaced, the rest kept (noop.record). After edits of sources and of
    outputs, one and two builds apart, that record is the one a build without a record to
    patch writes."""
    ws.write("BUILD.yaml", DIAMOND)
    for n in ("top", "left", "right", "bottom", "aside", "shared"):
        ws.write(f"{n}.txt", f"{n} 0\n")
    settle()
    ws.build(capsys=capsys)
    compared = 0
    for step, edits in enumerate([["left"], ["top", "aside"], ["bottom"], [], ["shared"], ["right"]]):
        for n in edits:
            ws.write(f"{n}.txt", f"{n} {step}\n")
        if step % 3 == 2:
            out = ws.out("left") / "o"
            out.chmod(0o644)
            out.write_text("tampered\n")
        settle()
        assert ws.build(capsys=capsys)["_rc"] == 0
        if step % 2 == 0:
            continue   # the next build patches a patched record
        settle()
        patched = _record(ws)
        (ws.root / ".buildgraph" / "noop.marshal").unlink()
        assert ran(ws.build(capsys=capsys)) == set()
        whole = _record(ws)
        assert patched is not None and whole is not None
        assert patched[:7] == whole[:7] and patched[10:] == whole[10:], step
        assert all(dict(patched[i]) == dict(whole[i]) for i in (7, 8, 9)), step
        compared += 1
    assert compared == 3
