"""Reproducibility: verify with perturbations, manifests, and diff with root causes."""

import json
import shutil
import time

from conftest import HOST_GCC, Workspace

from buildgraph.cli import main


def diff(a, b, capsys):
    capsys.readouterr()
    rc = main(["diff", str(a), str(b)])
    return rc, capsys.readouterr().out


def test_verify_catches_date_and_build_path_and_names_the_cause(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          good: {kind: script, outs: [o], cmds: ["echo same > $OUT/o"]}
          stamp: {kind: script, outs: [o], cmds: ["date > $OUT/o"]}
          where: {kind: script, outs: [o], cmds: ["pwd > $OUT/o"]}
          declared:
            kind: script
            outs: [o]
            reproducible: false
            reproducible_reason: a random id by design
            cmds: ["od -An -N4 -tx4 /dev/urandom > $OUT/o"]
        """)
    assert ws.build(capsys=capsys)["_rc"] == 0
    time.sleep(1.1)   # the second run is later: `date` must show it
    rc, out, _ = ws.run("verify", capsys=capsys)
    assert rc == 1
    assert "good: reproducible" in out
    assert "stamp: differs" in out and "o: embeds a timestamp" in out
    assert "where: differs" in out and "o: embeds the build path" in out
    assert "declared: expected-to-differ (a random id by design)" in out
    assert "1 reproducible, 2 differ or failed, 1 declared not reproducible" in out


def test_verify_runs_every_node_with_its_environment_reversed(ws, capsys):
    """verify's second run reverses the order of each action's environment: every node whose
    output shows that order differs, whether its sandbox was started for it or ahead of it
    (a spare sandbox, under bwrap: every node after the first here)."""
    names = ("one", "two", "three", "four")
    ws.write("BUILD.yaml", "targets:\n" + "".join(
        f"  {n}: {{kind: script, outs: [o], cmds: [\"env | cut -d= -f1 > $OUT/o\"]}}\n" for n in names))
    assert ws.build("-j1", capsys=capsys)["_rc"] == 0
    rc, out, _ = ws.run("verify", capsys=capsys)
    assert rc == 1
    assert all(f"{n}: differs" in out for n in names), out


def test_verify_c_builds_with_and_without_debug_info(ws, capsys):
    ws.write("lib.c", "int f(int x) { return x * 3; }\n")
    ws.write("BUILD.yaml", """\
        toolchain: host-gcc
        targets:
          plain: {kind: script, srcs: [lib.c], outs: [lib.so], cmds: ["$CC -O2 -fPIC -shared $SRC/lib.c -o $OUT/lib.so"]}
          debug: {kind: script, srcs: [lib.c], outs: [lib.so], cmds: ["cd $WORK && $CC -O2 -g -fPIC -shared $SRC/lib.c -o $OUT/lib.so"]}
        """)
    ws.build(capsys=capsys)
    rc, out, _ = ws.run("verify", capsys=capsys)
    assert "plain: reproducible" in out
    # -g records the compile directory; verify runs in another one on purpose.
    assert "debug: differs" in out and "lib.so: embeds the build path" in out and rc == 1


def build_copy(src_ws, name, capsys):
    other = Workspace(src_ws.root.parent / name, src_ws.root.parent / f"{name}-cache")
    shutil.copytree(src_ws.root, other.root, ignore=shutil.ignore_patterns(".buildgraph", ".events.json"))
    st = other.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    return other


def test_same_workspace_in_two_directories_gives_identical_manifests(ws, capsys, tmp_path):
    ws.write("lib.c", "int f(int x) { return x * 3; }\n")
    ws.write("BUILD.yaml", """\
        toolchain: host-gcc
        targets:
          lib: {kind: script, srcs: [lib.c], outs: [lib.so], cmds: ["$CC -O2 -fPIC -shared $SRC/lib.c -o $OUT/lib.so"]}
          pkg: {kind: script, deps: [lib], outs: [pkg.tar], cmds: ["tar --sort=name --mtime=@0 --owner=0 --group=0 -cf $OUT/pkg.tar -C $DEP_LIB lib.so"]}
        """)
    one = build_copy(ws, "first", capsys)
    two = build_copy(ws, "second", capsys)
    manifests = []
    for w in (one, two):
        path = tmp_path / f"{w.root.name}.json"
        assert w.run("manifest", "-o", str(path), capsys=capsys)[0] == 0
        manifests.append(path)
    assert manifests[0].read_text() == manifests[1].read_text()
    data = json.loads(manifests[0].read_text())
    assert set(data["nodes"]) == {"lib", "pkg"} and data["nodes"]["lib"]["outputs"]["lib.so"]
    assert str(tmp_path) not in manifests[0].read_text()
    rc, out = diff(manifests[0], manifests[1], capsys)
    assert rc == 0 and "manifests agree" in out


def test_changed_toolchain_is_the_root_cause_and_dependents_are_downstream(ws, capsys, tmp_path):
    tool = tmp_path / "bin" / "mkver"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho tool-1\n")
    tool.chmod(0o755)
    ws.write("toolchains/mine.yaml", f"name: mine\nversion: '1'\nprovider: host\ntools: {{mkver: {tool}}}\n")
    ws.write("BUILD.yaml", """\
        targets:
          gen: {kind: script, toolchain: mine, outs: [v], cmds: ["mkver > $OUT/v"]}
          use: {kind: script, deps: [gen], outs: [u], cmds: ["cat $DEP_GEN/v > $OUT/u"]}
          other: {kind: script, outs: [x], cmds: ["echo x > $OUT/x"]}
        """)
    ws.build(capsys=capsys)
    before = tmp_path / "before.json"
    ws.run("manifest", "-o", str(before), capsys=capsys)
    tool.write_text("#!/bin/sh\necho tool-2\n")
    ws.build(capsys=capsys)
    after = tmp_path / "after.json"
    ws.run("manifest", "-o", str(after), capsys=capsys)
    rc, out = diff(before, after, capsys)
    assert rc == 1
    root = out.split("root cause: inputs changed:")[1].split("downstream only:")[0]
    assert "gen: toolchain mine: files changed" in root and "use" not in root and "other" not in out
    assert "downstream only:\n  use: only because the output of gen changed" in out


def test_same_key_different_outputs_is_named_not_reproducible(ws, capsys, tmp_path):
    ws.write("BUILD.yaml", "targets:\n  t: {kind: script, outs: [o], cmds: ['date +%N > $OUT/o']}\n")
    ws.build(capsys=capsys)
    first = tmp_path / "a.json"
    ws.run("manifest", "-o", str(first), capsys=capsys)
    other = Workspace(tmp_path / "b", tmp_path / "b-cache")
    other.root.mkdir()
    other.write("toolchains/host-gcc.yaml", HOST_GCC)
    other.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text())
    other.build(capsys=capsys)
    second = tmp_path / "b.json"
    other.run("manifest", "-o", str(second), capsys=capsys)
    rc, out = diff(first, second, capsys)
    assert rc == 1 and "root cause: not reproducible (same key, other outputs):\n  t: same inputs, different outputs: o" in out


def test_reproducible_false_needs_a_reason(ws, capsys):
    ws.write("BUILD.yaml", "targets:\n  t: {kind: script, outs: [o], reproducible: false, cmds: ['true']}\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "needs a reproducible_reason" in err


def test_diffoscope_reports_are_kept(ws, capsys, tmp_path):
    if not shutil.which("diffoscope"):
        import pytest
        pytest.skip("diffoscope not installed (bash .ci/setup --tests installs diffoscope-minimal)")
    ws.write("BUILD.yaml", "targets:\n  stamp: {kind: script, outs: [o], cmds: ['date +%N > $OUT/o']}\n")
    ws.build(capsys=capsys)
    reports = tmp_path / "reports"
    rc, out, _ = ws.run("verify", "--report-dir", str(reports), capsys=capsys)
    assert rc == 1
    (report,) = reports.iterdir()
    assert report.name == "stamp--o.txt" and report.read_text().strip()
