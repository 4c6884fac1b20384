"""The remaining commands: graph, query, cache stats, clean, --help, bad usage."""

import json
import os

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


def test_graph_pictures_reduce_edges_cluster_variants_and_colour_outcomes(ws, capsys, tmp_path):
    ws.write("BUILD.yaml", DIAMOND.replace("deps: [left, right]", "deps: [left, right, base]").replace(
        'cmds: ["echo base > $OUT/o"]', 'cmds: ["echo base > $OUT/o"]}\n  bad: {kind: cmake, outs: [o]'))
    rc, out, _ = ws.run("graph", capsys=capsys)
    # top -> base is implied by top -> left -> base: left out, unless every edge is asked for
    assert rc == 0 and '"top@static" -> "base";' not in out and '"left" -> "base";' in out
    rc, every, _ = ws.run("graph", "--all-edges", capsys=capsys)
    assert '"top@static" -> "base";' in every and every.count("->") == out.count("->") + 2
    static = out[out.index('label="static"'):]
    assert static.index('"right@static"') < static.index("}")        # the variant's own box
    assert 'shape="component"' in out and 'shape="ellipse"' in out and 'style="dashed"' in out
    ws.run("build", "-k", capsys=capsys)
    rc, out, _ = ws.run("graph", capsys=capsys)
    line = {n: next(l for l in out.splitlines() if l.strip().startswith(f'"{n}" [')) for n in ("base", "bad")}
    assert 'fillcolor="palegreen"' in line["base"] and 'fillcolor="salmon"' in line["bad"], out
    ws.run("build", "base", capsys=capsys)   # up to date: its last outcome stays "ran"
    assert 'fillcolor="palegreen"' in next(l for l in ws.run("graph", capsys=capsys)[1].splitlines()
                                           if l.strip().startswith('"base" ['))
    rc, _, _ = ws.run("graph", "--format", "svg", "-o", str(tmp_path / "g.svg"), capsys=capsys)
    assert rc == 0 and "<svg" in (tmp_path / "g.svg").read_text() and "top@dynamic" in (tmp_path / "g.svg").read_text()


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
    rc, _, err = ws.run("clean", "--cache", capsys=capsys)   # the shared cache is not one workspace's
    assert rc == 2 and "cache clean --all" in err and (ws.cache / "cas").is_dir()
    rc, out, _ = ws.run("clean", capsys=capsys)
    assert rc == 0 and not (ws.root / ".buildgraph/out").exists() and (ws.cache / "cas").is_dir()
    (ws.cache / "sources").mkdir()   # a fetched upstream tree: kept unless --all
    (ws.cache / "sources" / "tree").write_bytes(b"x" * 1000)
    rc, out, _ = ws.run("cache", "clean", capsys=capsys)
    assert rc == 0 and "removed cas/: " in out and "kept toolchains/, sources/" in out
    assert "removed index.sqlite: 1 files" in out   # a file: no slash
    assert not (ws.cache / "cas").exists() and (ws.cache / "sources" / "tree").exists()
    rc, out, _ = ws.run("cache", "clean", "--all", capsys=capsys)
    assert rc == 0 and "removed sources/: 1 files, 0.0 MB" in out
    assert sorted(os.listdir(ws.cache)) == ["lock"]


def test_help_and_bad_usage(capsys):
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main(["build", "--jobs", "x"]) == 2


def test_bad_options_are_refused_with_the_likely_meaning(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    for argv, said in ((["build", "--keep_going"], "did you mean --keep-going?"),   # Bazel's spelling
                       (["build", "--disk_cache=/tmp/c"], "did you mean --cache-dir?"),
                       (["build", "--keep-goin"], "did you mean --keep-going?"),
                       (["biuld"], "did you mean 'build'?"),
                       (["build", "-j", "-1"], "-1: must be 1 or more (or 0: one per CPU core)"),
                       (["build", "--remote-jobs", "0"], "0: must be 1 or more")):
        assert main([*argv, "-C", str(ws.root)]) == 2, argv
        assert said in capsys.readouterr().err, argv
    assert not (ws.root / ".buildgraph" / "out").exists()   # nothing ran
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("buildgraph ")
    assert main(["cache", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "buildgraph cache clean --all" in text


def test_every_command_has_a_description_and_its_own_examples():
    import argparse

    from buildgraph.cli import parser

    def leaves(sub, words=""):
        for name, command in sub.choices.items():
            nested = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
            yield from leaves(nested, f"{words}{name} ") if nested else [(f"{words}{name}", command)]
    top = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for words, command in leaves(top):
        assert command.description, words
        examples = command.epilog.splitlines()[1:] if command.epilog else []
        assert examples and all(e.strip().startswith(f"buildgraph {words}") or words in ("env",)
                                for e in examples), (words, examples)


def test_rc_files_and_named_configs(ws, capsys, tmp_path, monkeypatch):
    """The workspace's .buildgraphrc, then the user's, then the command line; `common` lines
    apply where the command has the option; `--config=NAME` adds `COMMAND:NAME` lines."""
    ws.write("BUILD.yaml", DIAMOND)
    other = tmp_path / "other-cache"
    ws.write(".buildgraphrc", f"""\
        # team defaults
        common --sandbox none --log-json '{ws.root / "events.json"}'
        build -j 1
        build:ci --keep-going --cache-dir '{other}'
        """)
    user = tmp_path / "user-rc"
    user.write_text("info --mirror /srv/mirror\n")
    monkeypatch.setenv("BUILDGRAPH_RC", str(user))
    assert main(["info", "-C", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "sandbox: none" in out and "mirrors: /srv/mirror" in out
    assert f"rc_files: {ws.root / '.buildgraphrc'} {user}" in out
    assert main(["info", "-C", str(ws.root), "--sandbox", "bwrap", "sandbox"]) == 0   # the command line wins
    assert capsys.readouterr().out == "bwrap\n"
    assert main(["build", "-C", str(ws.root), "--config=ci"]) == 0   # log-json from common, cache from ci
    assert (other / "cas").is_dir() and (ws.root / "events.json").exists()
    assert main(["build", "-C", str(ws.root), "--config", "cd"]) == 2
    err = capsys.readouterr().err
    assert "--config=cd: no such config" in err and "(configs: ci)" in err
    ws.write(".buildgraphrc", "build: --jobs 2\n")
    assert main(["build", "-C", str(ws.root)]) == 2
    assert ".buildgraphrc:1: 'build:': expected COMMAND or COMMAND:CONFIG" in capsys.readouterr().err


def test_info_names_where_things_are(ws, capsys):
    ws.write("BUILD.yaml", DIAMOND)
    rc, out, _ = ws.run("info", capsys=capsys)
    assert rc == 0
    assert f"workspace: {ws.root}" in out and f"cache_dir: {ws.cache}" in out
    assert f"output_root: {ws.root / '.buildgraph' / 'out'}" in out and "remote_cache: none" in out
    rc, out, _ = ws.run("info", "cache_dir", capsys=capsys)
    assert out == f"{ws.cache}\n"
    rc, _, err = ws.run("info", "cachedir", capsys=capsys)
    assert rc == 2 and "did you mean 'cache_dir'?" in err
    assert not ws.cache.exists()   # info creates nothing
    # a password in the remote's URL is never printed, as everywhere else
    rc, out, _ = ws.run("info", "remote_cache", "--remote-cache", "http://ci:s3cret@127.0.0.1:9/cache", capsys=capsys)
    assert rc == 0 and out == "http://***@127.0.0.1:9/cache\n"


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


def test_failures_name_their_cause_once_and_only_logs_that_exist(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          quiet: {kind: script, outs: [o], cmds: ["true"]}
          loud: {kind: script, outs: [o], cmds: ["echo compiling; exit 3"]}
          after: {kind: script, deps: [quiet], outs: [o], cmds: ["touch $OUT/o"]}
        """)
    rc, out, err = ws.run("build", "-k", capsys=capsys)
    assert rc == 1
    quiet = next(line for line in err.splitlines() if line.startswith("buildgraph: quiet failed: "))
    assert "declared output not produced: o" in quiet and "log:" not in quiet   # its log would be empty
    assert not (ws.root / ".buildgraph/logs/quiet.log").exists()
    loud = next(line for line in err.splitlines() if line.startswith("buildgraph: loud failed: "))
    assert "command failed (exit code 3)" in loud and loud.endswith("(log: .buildgraph/logs/loud.log)")
    assert "compiling" in (ws.root / ".buildgraph/logs/loud.log").read_text()
    assert "skipped after (quiet failed)" in out


def test_subcommands_prints_each_actions_commands_as_it_starts(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          a: {kind: script, outs: [o], env: {GREETING: "hello world"}, cmds: ["echo $GREETING > $OUT/o"]}
        """)
    rc, out, _ = ws.run("build", "-s", capsys=capsys)
    assert rc == 0
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("SUBCOMMAND: a [key "))
    assert lines[head + 1].startswith("  env -i ") and "GREETING='hello world'" in lines[head + 1]
    assert lines[head + 2] == "  $ echo $GREETING > $OUT/o"
    rc, out, _ = ws.run("build", "--subcommands", capsys=capsys)   # nothing runs: nothing printed
    assert rc == 0 and "SUBCOMMAND" not in out


def test_a_failure_names_its_yaml_line_and_the_compiler_names_workspace_files(ws, capsys, monkeypatch):
    # A real compiler error: the message an editor jumps to names src/bad.c, not the sandbox's
    # copy (/sandbox/src/src/bad.c), and the failing command's own line in BUILD.yaml.
    ws.write("src/bad.c", "int main(void) {\n  return missing;\n}\n")
    ws.write("BUILD.yaml", """\
        toolchain: host-gcc
        targets:
          prog:
            kind: script
            srcs: [src/bad.c]
            outs: [prog]
            cmds:
              - echo configuring
              - $CC -c $SRC/src/bad.c -o $OUT/prog
          lonely:
            kind: script
            outs: [a, b]
            cmds: [touch $OUT/a]
        """)
    monkeypatch.chdir(ws.root)
    rc, out, err = ws.run("build", "-k", capsys=capsys)
    assert rc == 1
    assert "\n  BUILD.yaml:9: targets.prog.cmds[1]: command failed (exit code 1)" in out, out
    assert "  | src/bad.c:2:10: error: 'missing' undeclared" in out, out
    assert "/sandbox" not in out and "/sandbox" not in (ws.root / ".buildgraph/logs/prog.log").read_text()
    assert "\n  BUILD.yaml:12: targets.lonely.outs: declared output not produced: b" in out, out
    # From another directory the workspace's files are named by a path that reaches them.
    monkeypatch.chdir(ws.root / "src")
    rc, out, err = ws.run("build", "prog", capsys=capsys)
    assert "  | ../src/bad.c:2:10: error:" in out, out


def test_the_terminal_display_loads_rich_only_when_something_runs():
    code = """
import io, sys
from buildgraph import ui
from buildgraph.status import Status, UpToDate
class Terminal(io.StringIO):
    def isatty(self): return True
r = ui.make_reporter(Terminal())
r.begin(2, 2)
r.finished(UpToDate("a", "k"))
r.end()
print("rich" in sys.modules)
r.begin(2, 2)
r.started("b")
r.finished(UpToDate("b", "k", Status.RAN))
r.end()
print("rich" in sys.modules)
"""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
