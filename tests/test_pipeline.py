"""The release pipeline in the repository root: five recipes, backend variants, tests."""

import json

from conftest import REPO, SHARED_TOOLCHAINS, copy_release_workspace

from buildgraph.cli import main
from buildgraph.graph import configure
from buildgraph.workspace import load_workspace


def test_release_graph_shape():
    ws = load_workspace(REPO)
    graph = configure(ws)
    assert set(ws.targets) >= {"openblas", "libjpeg-turbo", "opencv", "onednn", "protobuf", "backend"}
    # Recipes that read no feature are one node for every variant; the others split by linking.
    assert graph.by_target["openblas"] == ["openblas"] and graph.by_target["libjpeg-turbo"] == ["libjpeg-turbo"]
    assert graph.by_target["onednn"] == ["onednn@static", "onednn@dynamic"]
    assert len(graph.by_target["backend"]) == 6
    mkl = dict(graph.nodes["backend@mkl-static"].deps)
    assert mkl["onednn-bin"] == "onednn-bin" and mkl["opencv"] == "opencv@static"   # Intel's wheels
    assert "onednn-bin" not in dict(graph.nodes["backend@cpu-dynamic"].deps)
    # One artifact and one test of it per variant; the mkl artifacts bundle libgomp.
    assert len(graph.by_target["release"]) == 6 and len(graph.by_target["release_test"]) == 6
    assert dict(graph.nodes["release@mkl-dynamic"].deps)["libgomp"] == "libgomp"
    assert graph.nodes["backend@cu130-static"].toolchain == "cuda-13.0"
    assert graph.nodes["backend@cpu-static"].toolchain == "portable"
    # OpenCV takes JPEG from our node, not its bundled copy.
    assert dict(graph.nodes["opencv@dynamic"].deps) == {"libjpeg-turbo": "libjpeg-turbo"}
    for name in ("openblas", "libjpeg-turbo", "opencv", "onednn", "protobuf"):
        t = ws.targets[name]
        assert t.source is not None and t.licenses and t.version, name


def test_release_plan_keys_need_no_source(tmp_path, capsys):
    rc = main(["plan", "-C", str(copy_release_workspace(tmp_path / "ws")), "--cache-dir", str(tmp_path / "cache"),
               "--toolchain-dir", str(SHARED_TOOLCHAINS), "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    nodes = {n["node"]: n for n in json.loads(out)["nodes"]}
    assert len(nodes) == 29
    for dep in ("openblas", "libjpeg-turbo", "protobuf@static", "onednn@dynamic", "onednn-bin-lib"):
        assert nodes[dep]["key"] and nodes[dep]["status"] == "run"
    assert nodes["backend@cpu-static"]["key"] is None      # known once its dependencies are built
    assert not (tmp_path / "cache" / "sources").exists()   # no source was fetched to compute keys
