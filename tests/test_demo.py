"""The demo workspace (examples/demo), built end to end with the host compiler."""

import shutil

import pytest
from conftest import REPO, Workspace, ran

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(REPO / "examples" / "demo", root, ignore=shutil.ignore_patterns(".buildgraph"))
    return Workspace(root, tmp_path / "cache")


def test_demo_builds_every_variant_and_its_tests_pass(demo, capsys):
    st = demo.build(capsys=capsys)
    assert st["_rc"] == 0, st["_out"]
    nodes = {n for n in st if not n.startswith("_")}
    assert 10 <= len(nodes) <= 20
    assert {"backend@cpu-static", "backend@fast-dynamic", "mathx", "zlite"} <= nodes
    for variant in ("cpu-static", "cpu-dynamic", "fast-static", "fast-dynamic"):
        log = (demo.out(f"backend_test@{variant}") / "test.log").read_text()
        assert "gemm_sum=720" in log and log.rstrip().endswith("ok")
        device = variant.split("-")[0].upper()
        assert f"device={device}" in log
    assert (demo.out("backend@cpu-dynamic") / "lib/libbackend.so").exists()
    assert (demo.out("backend@cpu-static") / "lib/libbackend.a").exists()

    again = demo.build(capsys=capsys)
    assert ran(again) == set()

    # A one-file change in a shared library rebuilds it and everything downstream, nothing else.
    src = demo.root / "src/strutil/strutil.c"
    src.write_text(src.read_text().replace("toupper", "(char)toupper"))
    changed = ran(demo.build(capsys=capsys))
    assert "strutil" in changed and "mathx" not in changed and "zlite" not in changed
    assert changed <= {"strutil"} | {n for n in nodes if n.startswith(("backend@", "backend_test@"))}
