"""The remaining commands: graph, query, cache stats, clean, --help, bad usage."""

import json

from buildgraph.cli import main

DIAMOND = """\
variants: {linking: [static, dynamic]}
targets:
  base: {kind: script, outs: [o], cmds: ["echo base > $OUT/o"]}
  left: {kind: script, deps: [base], outs: [o], cmds: ["cat $DEP_BASE/o > $OUT/o"]}
  right: {kind: script, deps: [base], outs: [o], cmds: ["cat $DEP_BASE/o > $OUT/o"], features: [linking]}
  top: {kind: script, deps: [left, right], outs: [o], cmds: ["cat $DEP_LEFT/o $DEP_RIGHT/o > $OUT/o"]}
"""


def test_graph_dot_and_json(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    rc, out, _ = ws.run("graph", capsys=capsys)
    assert rc == 0
    assert out.startswith("digraph buildgraph {")
    assert '"top@static" -> "right@static";' in out and '"left" -> "base";' in out
    rc, out, _ = ws.run("graph", "--format", "json", "top@dynamic", capsys=capsys)
    data = json.loads(out)
    assert {n["name"] for n in data["nodes"]} == {"base", "left", "right@dynamic", "top@dynamic"}
    top = next(n for n in data["nodes"] if n["name"] == "top@dynamic")
    assert top["features"] == {"linking": "dynamic"} and sorted(top["deps"]) == ["left", "right@dynamic"]


def test_query_deps_and_rdeps(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    rc, out, _ = ws.run("query", "deps", "top@static", capsys=capsys)
    assert out.split() == ["base", "left", "right@static"]
    rc, out, _ = ws.run("query", "rdeps", "base", capsys=capsys)
    assert out.split() == ["left", "right@dynamic", "right@static", "top@dynamic", "top@static"]
    rc, out, _ = ws.run("query", "rdeps", "base", "--direct", capsys=capsys)
    assert out.split() == ["left", "right@dynamic", "right@static"]
    rc, _, err = ws.run("query", "deps", "topp", capsys=capsys)
    assert rc == 2 and "did you mean 'top'" in err


def test_cache_stats_and_clean(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    ws.build(capsys=capsys)
    rc, out, _ = ws.run("cache", "stats", capsys=capsys)
    assert rc == 0
    # top@static and top@dynamic read no feature and their deps' outputs are identical:
    # one action key, one cache entry.
    assert "action results: 5" in out
    # The two top nodes share a key: it runs once and the other is restored from it.
    assert "last build: 6 nodes" in out and "ran 5, cached 1" in out
    ws.build(capsys=capsys)   # a no-op writes nothing: stats still show the build that did something
    rc, out, _ = ws.run("cache", "stats", capsys=capsys)
    assert "ran 5, cached 1" in out
    rc, out, _ = ws.run("clean", "--cache", capsys=capsys)
    assert rc == 0 and not (ws.root / ".buildgraph/out").exists() and not ws.cache.exists()


def test_help_and_bad_usage(capsys):
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main(["build", "--jobs", "x"]) == 2


def test_missing_workspace_is_a_usage_error(tmp_path, capsys):
    assert main(["plan", "-C", str(tmp_path)]) == 2
    assert "no BUILD.yaml" in capsys.readouterr().err


def test_terminal_progress_shows_each_node(ws, capsys, monkeypatch):
    import io

    from buildgraph import ui

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    monkeypatch.setattr(ui.sys, "stdout", stream)
    ws.write("BUILD.yaml", DIAMOND.replace('echo base', 'exit 1; echo base').replace("  left:", "  ok: {kind: script, outs: [o], cmds: ['touch $OUT/o']}\n  left:"))
    rc, _, _ = ws.run("build", "-k", capsys=capsys)
    text = stream.getvalue()
    assert rc == 1
    assert "ran" in text and " ok" in text
    assert "FAILED" in text and "base" in text and "command: exit 1; echo base" in text
    assert "skipped" in text


def test_plan_names_the_critical_path(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    rc, out, _ = ws.run("plan", "top@static", capsys=capsys)
    assert rc == 0
    assert "4 nodes, 4 to run; critical path: base → left → top@static" in out or \
        "critical path: base → right@static → top@static" in out
    assert "never built in this workspace" in out
