"""The release itself, from real upstream sources: the cpu artifacts (static and dynamic)
built with the portable toolchain, audited manylinux_2_17, installed into a fresh venv and
called through ctypes (release_test). Cold, this compiles OpenBLAS, libjpeg-turbo,
protobuf and OpenCV (twice each where linking differs): ~30 minutes on 2 cores. The cache
lives in $BUILDGRAPH_RELEASE_CACHE (default ~/.cache/buildgraph-release), kept between
runs on the same machine, so a warm run restores everything in seconds."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, SHARED_TOOLCHAINS

from buildgraph.cli import main

RELEASE_CACHE = Path(os.environ.get("BUILDGRAPH_RELEASE_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildgraph-release")


@pytest.mark.slow
@pytest.mark.release
@pytest.mark.skipif(not os.environ.get("BUILDGRAPH_TEST_RELEASE"),
                    reason="the real release build: set BUILDGRAPH_TEST_RELEASE=1 (.ci/run does)")
def test_cpu_artifacts_from_real_sources(tmp_path, capsys):
    ws = tmp_path / "release"
    for name in ("BUILD.yaml", "deps", "toolchains", "examples/backend"):
        src, dst = REPO / name, ws / name
        shutil.copytree(src, dst) if src.is_dir() else (dst.parent.mkdir(parents=True, exist_ok=True),
                                                         shutil.copy(src, dst))
    rc = main(["build", "-C", str(ws), "--cache-dir", str(RELEASE_CACHE), "--toolchain-dir", str(SHARED_TOOLCHAINS),
               "--git-sha", "0" * 40, "release_test@cpu-static", "release_test@cpu-dynamic"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-6000:] + err[-3000:]
    for variant in ("cpu-static", "cpu-dynamic"):
        log = (ws / ".buildgraph/out" / f"release_test@{variant}" / "test.log").read_text()
        assert log.rstrip().endswith("all checks passed"), log
        for check in ("BLAS sgemm", "JPEG encode", "OpenCV resize", "protobuf Tensor"):
            assert f"ok       {check}" in log, log
        release = ws / ".buildgraph/out" / f"release@{variant}"
        meta = dict(line.split("=", 1) for line in (release / "dist/libbackend.so.meta").read_text().splitlines())
        assert meta["platform_tag"] == "manylinux2014_x86_64.manylinux_2_17_x86_64", meta
        assert meta["linking"] == variant.split("-")[1]
        licences = {p.parent.name for p in (release / "dist/licenses").rglob("*") if p.is_file()}
        assert licences >= {"backend", "openblas", "libjpeg-turbo", "opencv", "protobuf", "libc++", "libunwind"}
        assert list((release / "wheel").glob("mxbackend-1.9.0-py3-none-manylinux2014_x86_64.*.whl"))
        assert meta["debug.libbackend.so.build_id"]
    static = {p.name for p in (ws / ".buildgraph/out/release@cpu-static/dist/lib").iterdir()}
    dynamic = {p.name for p in (ws / ".buildgraph/out/release@cpu-dynamic/dist/lib").iterdir()}
    assert static == {"libbackend.so"}                                    # dependencies linked in
    assert any(n.startswith("libopencv_core-") for n in dynamic) and any(n.startswith("libprotobuf-") for n in dynamic)
