"""Workspace loading: bad input gives file:line, the field, a hint, and exit code 2."""

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildgraph.errors import ConfigError
from buildgraph.graph import configure
from buildgraph.workspace import load_workspace


def test_typo_in_field_names_line_and_suggests(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          a:
            kind: script
            cmds: [touch $OUT/a]
            outs: [a]
            scrs: [x.c]
        """)
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc == 2
    assert "BUILD.yaml:6: targets.a.scrs: unknown field 'scrs'" in err
    assert "did you mean 'srcs'?" in err
    assert "Traceback" not in err


def test_unknown_dependency_suggests_closest(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          libfoo: {kind: script, cmds: [touch $OUT/f], outs: [f]}
          app:
            kind: script
            deps: [libfo]
            cmds: [touch $OUT/a]
            outs: [a]
        """)
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2
    assert "BUILD.yaml:5: targets.app.deps: unknown target 'libfo'" in err
    assert "did you mean 'libfoo'?" in err


def test_cycle_is_reported_as_its_path(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          a: {kind: script, deps: [b], cmds: ["true"]}
          b: {kind: script, deps: [c], cmds: ["true"]}
          c: {kind: script, deps: [a], cmds: ["true"]}
        """)
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2
    assert "dependency cycle: a → b → c → a" in err


def test_error_in_a_deps_file_names_that_file(ws, capsys):
    ws.write("BUILD.yaml", "targets: {}\n")
    ws.write("deps/zlib.yaml", """\
        kind: cmake
        cmake_args: -DX=1
        """)
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2
    assert "deps/zlib.yaml:2: cmake_args: expected a list of strings, got a string" in err


def test_unknown_kind_and_axis_and_toolchain(ws):
    ws.write("BUILD.yaml", "targets:\n  a: {kind: scirpt, cmds: ['true']}\n")
    with pytest.raises(ConfigError, match="did you mean 'script'"):
        load_workspace(ws.root)
    ws.write("BUILD.yaml", "variants: {device: [cpu]}\ntargets:\n  a: {kind: script, cmds: ['true'], features: [devcie]}\n")
    with pytest.raises(ConfigError, match="did you mean 'device'"):
        load_workspace(ws.root)
    ws.write("BUILD.yaml", "targets:\n  a: {kind: script, cmds: ['true'], toolchain: host-gc}\n")
    with pytest.raises(ConfigError, match="did you mean 'host-gcc'"):
        load_workspace(ws.root)


def test_yaml_syntax_error_names_line(ws, capsys):
    ws.write("BUILD.yaml", "targets:\n  a: {kind: script\n  b: 1\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2
    assert "BUILD.yaml:3: invalid YAML" in err


def test_glob_matching_nothing_is_an_error_before_anything_runs(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          a: {kind: script, srcs: ["src/*.c"], cmds: [touch $OUT/a], outs: [a]}
        """)
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2
    assert "BUILD.yaml:2: targets.a.srcs: pattern 'src/*.c' matches no file" in err


def test_a_pattern_matching_nothing_suggests_the_nearest_file(ws, capsys):
    ws.write("src/main.cc", "int main() {}\n")
    ws.write("src/util/strings.cc", "\n")
    for pattern, near in (("src/mian.cc", "src/main.cc"), ("src/*.c", "src/main.cc"),
                          ("src/utils/strings.cc", "src/util/strings.cc")):
        ws.write("BUILD.yaml", f"targets:\n  a: {{kind: script, srcs: [{pattern!r}], cmds: ['true'], outs: []}}\n")
        rc, _, err = ws.run("build", capsys=capsys)
        assert rc == 2 and f"pattern {pattern!r} matches no file" in err and f"did you mean '{near}'?" in err, err


def test_variants_share_nodes_that_read_no_feature(ws):
    ws.write("BUILD.yaml", """\
        variants:
          device: [cpu, mkl, cu130]
          linking: [static, dynamic]
        targets:
          openblas: {kind: script, cmds: ["true"]}
          dnnl: {kind: script, cmds: ["true"], features: [device]}
          backend:
            kind: script
            cmds: ["true"]
            deps: [openblas, dnnl]
            features: [linking]
        """)
    graph = configure(load_workspace(ws.root))
    assert graph.by_target["openblas"] == ["openblas"]
    assert graph.by_target["dnnl"] == ["dnnl@cpu", "dnnl@mkl", "dnnl@cu130"]
    assert "backend@cu130-static" in graph.nodes
    assert len(graph.by_target["backend"]) == 6
    node = graph.nodes["backend@cu130-static"]
    assert dict(node.deps) == {"openblas": "openblas", "dnnl": "dnnl@cu130"}
    assert node.features == (("linking", "static"),)   # only what backend reads is in its key
    assert graph.resolve("backend@mkl") == ["backend@mkl-static", "backend@mkl-dynamic"]


def test_when_adds_deps_and_env_per_variant(ws):
    ws.write("BUILD.yaml", """\
        variants: {device: [cpu, mkl]}
        targets:
          onednn: {kind: script, cmds: ["true"]}
          backend:
            kind: script
            cmds: ["true"]
            features: [device]
            when:
              - if: {device: mkl}
                deps: [onednn]
                env: {USE_DNNL: "1"}
        """)
    graph = configure(load_workspace(ws.root))
    assert graph.nodes["backend@cpu"].deps == ()
    assert graph.nodes["backend@mkl"].deps == (("onednn", "onednn"),)
    assert ("USE_DNNL", "1") in graph.nodes["backend@mkl"].env
    assert ("BG_DEVICE", "mkl") in graph.nodes["backend@mkl"].env


# ------------------------------------------------------------------ fuzzing

_FIELDS = ["workspace", "variants", "toolchain", "targets", "kind", "srcs", "deps", "outs", "env",
           "features", "cmds", "when", "if", "weight", "cmake_args", "make_args", "script", "cmake",
           "make", "host-gcc", "device", "cpu", "a", "b", "source_dir", "jobserver", "name"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                     st.sampled_from(_FIELDS), st.text(string.printable, max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=5), inner, max_size=5)), max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=5))
def test_malformed_build_files_exit_2_without_traceback(ws, capsys, doc):
    ws.write("BUILD.yaml", yaml.safe_dump(doc))
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc in (0, 2), err
    if rc == 2:
        assert err.startswith("buildgraph: error:"), err
    assert "Traceback" not in err


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_arbitrary_text_exits_2_without_traceback(ws, capsys, text):
    ws.write("BUILD.yaml", text)
    rc, _, err = ws.run("graph", capsys=capsys)
    assert rc in (0, 2), err
    assert "Traceback" not in err


def test_an_artifact_project_name_takes_axis_values_and_must_be_one_an_index_takes(ws, capsys):
    body = """\
        variants: {{device: [cpu, gpu]}}
        targets:
          lib: {{kind: script, outs: [lib/l.so], cmds: ["true"]}}
          rel: {{kind: artifact, backend: lib, library: lib/l.so, deps: [lib], wheel: pkg, features: [device],
                 {extra}}}
        """
    ws.write("BUILD.yaml", body.format(extra='project: "pkg-{device}"'))
    rc, out, err = ws.run("plan", capsys=capsys)
    assert rc == 0, err
    from buildgraph.workspace import load_workspace
    rel = load_workspace(ws.root).targets["rel"]
    assert rel.project_for({"device": "gpu"}) == "pkg-gpu"
    ws.write("BUILD.yaml", body.format(extra='project: "pkg-{linking}"'))
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:5: targets.rel.project: {linking} is not an axis this target reads" in err, err
    ws.write("BUILD.yaml", body.format(extra='project: "pkg {device}!"'))
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "is not a project name an index takes" in err, err
