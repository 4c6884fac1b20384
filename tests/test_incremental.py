"""Keys and incremental builds: what reruns after a change, and what does not."""

import os
import sys
import time

import pytest

from conftest import ran


CHAIN = """\
targets:
  gen:
    kind: script
    srcs: [data.txt]
    outs: [lines.txt]
    cmds: ["grep -v '^#' $SRC/data.txt > $OUT/lines.txt"]
  lib:
    kind: script
    srcs: ["lib/*.c"]
    deps: [gen]
    outs: [lib.txt]
    env: {FLAGS: "-O2"}
    cmds: ["cat $SRC/lib/*.c $DEP_GEN/lines.txt > $OUT/lib.txt; echo $FLAGS >> $OUT/lib.txt"]
  other:
    kind: script
    srcs: [other.c]
    outs: [other.txt]
    cmds: ["cp $SRC/other.c $OUT/other.txt"]
  app:
    kind: script
    deps: [lib, other]
    outs: [app.txt]
    cmds: ["cat $DEP_LIB/lib.txt $DEP_OTHER/other.txt > $OUT/app.txt"]
"""


def make_chain(ws):
    ws.write("BUILD.yaml", CHAIN)
    for rel, text in (("data.txt", "# header\none\ntwo\n"), ("lib/a.c", "int a;\n"),
                      ("lib/b.c", "int b;\n"), ("other.c", "int other;\n")):
        ws.write(rel, text)
    # Past the window in which a digest is not trusted (a file may change again within the
    # same timestamp tick without its mtime or ctime moving): the ctime cannot be set back.
    time.sleep(0.25)


def test_no_change_runs_nothing_and_hashes_nothing(ws, capsys):
    make_chain(ws)
    first = ws.build(capsys=capsys)
    assert ran(first) == {"gen", "lib", "other", "app"}
    third_party_edit = ws.root / "unrelated.txt"   # files outside srcs are never read
    third_party_edit.write_text("x")
    last = ws.root / ".buildgraph" / "last-build.json"
    before = last.stat().st_mtime_ns
    second = ws.build(capsys=capsys)
    assert ran(second) == set()
    assert last.stat().st_mtime_ns == before   # a no-op build hashes nothing, so it writes nothing
    assert {second[n] for n in ("gen", "lib", "other", "app")} == {"up-to-date"}
    assert "0 ran" in second["_out"]
    assert (ws.out("app") / "app.txt").read_text() == "int a;\nint b;\none\ntwo\n-O2\nint other;\n"


def test_one_edit_reruns_exactly_its_downstream(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    ws.write("lib/b.c", "int b2;\n")
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    ws.write("other.c", "int other2;\n")
    assert ran(ws.build(capsys=capsys)) == {"other", "app"}
    assert "int b2;" in (ws.out("app") / "app.txt").read_text()


def test_replaced_outputs_leave_nothing_behind_even_after_a_killed_build(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    trash = ws.root / ".buildgraph" / "trash"
    (trash / "7" / "sub").mkdir(parents=True)   # as a build killed before its janitor ran leaves it
    (trash / "7" / "sub" / "f").write_text("old")
    (trash / "7" / "sub").chmod(0o555)
    ws.write("lib/b.c", "int b3;\n")
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    assert list(trash.iterdir()) == []
    assert sorted(p.name for p in ws.out("").iterdir()) == ["app", "gen", "lib", "other"]
    assert "int b3;" in (ws.out("app") / "app.txt").read_text()


def test_identical_output_stops_the_rebuild_early_cutoff(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    ws.write("data.txt", "# another comment, same lines\none\ntwo\n")
    assert ran(ws.build(capsys=capsys)) == {"gen"}


def test_added_source_file_is_seen(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    ws.write("lib/c.c", "int c;\n")
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}


def test_env_flag_and_command_changes_give_new_keys(ws, capsys):
    make_chain(ws)
    keys = [ws.build(capsys=capsys) and _key(ws, "lib")]
    ws.write("BUILD.yaml", CHAIN.replace('FLAGS: "-O2"', 'FLAGS: "-O3"'))
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    keys.append(_key(ws, "lib"))
    ws.write("BUILD.yaml", CHAIN.replace('FLAGS: "-O2"', 'FLAGS: "-O3"').replace("echo $FLAGS", "echo x$FLAGS"))
    assert ran(ws.build(capsys=capsys)) == {"lib", "app"}
    keys.append(_key(ws, "lib"))
    assert len(set(keys)) == 3


def test_toolchain_change_gives_new_key(ws, capsys, tmp_path):
    # A toolchain whose compiler is a copy we can change byte by byte.
    fake = tmp_path / "bin"
    fake.mkdir()
    cc = fake / "mycc"
    cc.write_text("#!/bin/sh\necho v1\n")
    cc.chmod(0o755)
    ws.write("toolchains/mine.yaml", f"name: mine\nversion: '1'\nprovider: host\ntools: {{cc: {cc}}}\n")
    ws.write("BUILD.yaml", """\
        targets:
          t:
            kind: script
            toolchain: mine
            outs: [v]
            cmds: ["echo built > $OUT/v"]
        """)
    ws.build(capsys=capsys)
    k1 = _key(ws, "t")
    assert ran(ws.build(capsys=capsys)) == set()
    cc.write_text("#!/bin/sh\necho v2\n")
    assert ran(ws.build(capsys=capsys)) == {"t"}
    assert _key(ws, "t") != k1
    rc, out, _ = ws.run("why", "t", capsys=capsys)
    assert "no input changed" in out


def test_why_names_the_changed_inputs(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    ws.write("lib/a.c", "int a2;\n")
    ws.write("BUILD.yaml", CHAIN.replace('FLAGS: "-O2"', 'FLAGS: "-O0"'))
    rc, out, _ = ws.run("why", "lib", capsys=capsys)
    assert rc == 0
    assert "lib: source changed: lib/a.c" in out
    assert "lib: env FLAGS: '-O2' → '-O0'" in out
    rc, out, _ = ws.run("plan", capsys=capsys)
    assert "lib" in out and "run: source changed: lib/a.c" in out
    assert "app" in out and "after lib" in out


def test_cache_restores_after_clean(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    assert ws.run("clean", capsys=capsys)[0] == 0
    statuses = ws.build(capsys=capsys)
    assert ran(statuses) == set()
    assert {statuses[n] for n in ("gen", "lib", "other", "app")} == {"cached"}
    assert (ws.out("app") / "app.txt").exists()


def test_deleted_output_is_restored(ws, capsys):
    make_chain(ws)
    ws.build(capsys=capsys)
    (ws.out("app") / "app.txt").unlink()
    statuses = ws.build(capsys=capsys)
    assert statuses["app"] == "cached"
    assert (ws.out("app") / "app.txt").exists()


def test_a_state_that_cannot_be_read_is_a_cache_miss_never_a_wrong_answer(ws, capsys):
    """The state is only an accelerator: cut short, garbled, or from another layout, it is
    set aside and the build after it is what a clean build would be (restored, not rerun)."""
    import marshal

    from buildgraph.state import STATE, STATE_VERSION, StateDir

    make_chain(ws)
    ws.build(capsys=capsys)
    path = ws.root / ".buildgraph" / STATE
    whole = path.read_bytes()
    assert StateDir(ws.root).load().nodes["app"].key   # what save wrote, load reads
    for bad in (whole[: len(whole) // 2], b"\x00garbage", marshal.dumps((STATE_VERSION, {}, {}, {"app": ("k",)}, {})),
                marshal.dumps((STATE_VERSION, {}, {}, ["app"], {})), marshal.dumps("a string")):
        ws.write("other.c", f"int other{len(bad)};\n")
        time.sleep(0.25)   # past the window in which a new file is too young to vouch for
        path.write_bytes(bad)
        (ws.root / ".buildgraph" / "noop.marshal").unlink(missing_ok=True)
        after = ws.build(capsys=capsys)
        assert after["_rc"] == 0 and ran(after) == {"other", "app"}, after["_err"]
        assert {after[n] for n in ("gen", "lib")} == {"cached"}
        assert (ws.out("app") / "app.txt").read_text().endswith(f"int other{len(bad)};\n")


def _key(ws, node):
    from buildgraph.state import StateDir

    return StateDir(ws.root).load().nodes[node].key


def test_buildgraph_upgraded_in_place_configures_again(ws, capsys, monkeypatch):
    """The configured graph (commands included) is cached; new buildgraph code must not reuse it."""
    from buildgraph import engine

    make_chain(ws)
    ws.build(capsys=capsys)
    parsed = []
    real = engine.load_workspace
    monkeypatch.setattr(engine, "load_workspace", lambda root: parsed.append(root) or real(root))
    ws.build(capsys=capsys)
    assert parsed == []
    from buildgraph import signatures
    monkeypatch.setattr(signatures, "code_signature", lambda: (("", "recipes.py", 1, 2),))
    ws.build(capsys=capsys)
    assert len(parsed) == 1


def _inode_flags(path) -> int:
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, flags)   # FS_IOC_GETFLAGS
        return int.from_bytes(flags[:4], sys.byteorder)
    finally:
        os.close(fd)


def test_out_is_made_the_top_of_unrelated_trees_where_the_filesystem_takes_the_hint(ws, capsys, tmp_path):
    """out/<node> directories are unrelated trees: out/ is made with ext4's hint saying so
    (chattr +T, fsutil.make_top_dir), again after `clean` removed it."""
    from buildgraph.fsutil import make_top_dir

    make_top_dir(str(tmp_path / "probe"))
    try:
        supported = _inode_flags(tmp_path / "probe") & 0x00020000
    except OSError:
        supported = 0
    if not supported:
        pytest.skip("this filesystem keeps no inode flags")
    make_chain(ws)
    for _ in range(2):
        assert ws.build(capsys=capsys)["_rc"] == 0
        assert _inode_flags(ws.root / ".buildgraph" / "out") & 0x00020000
        assert ws.run("clean", capsys=capsys)[0] == 0
        assert not (ws.root / ".buildgraph" / "out").exists()


def test_a_remembered_value_is_computed_again_when_its_facts_change_or_its_file_is_bad(tmp_path):
    from buildgraph.fsutil import remembered

    calls = []

    def compute():
        calls.append(1)
        return ["value", len(calls)]
    path = str(tmp_path / "memo" / "v.json")
    assert remembered(path, (1, 2), compute) == ["value", 1]
    assert remembered(path, [1, 2], compute) == ["value", 1]          # the same facts, as JSON
    assert remembered(path, (1, 3), compute) == ["value", 2]          # changed: computed and kept
    assert remembered(path, (1, 3), compute, lambda v: v[1] > 2) == ["value", 3]   # not valid
    (tmp_path / "memo" / "v.json").write_text("{not json")
    assert remembered(path, (1, 3), compute) == ["value", 4]
    (tmp_path / "a-file").write_text("")   # where nothing can be written: computed, not kept
    assert remembered(str(tmp_path / "a-file" / "w.json"), 1, compute) == ["value", 5]
    assert remembered(str(tmp_path / "a-file" / "w.json"), 1, compute) == ["value", 6]
