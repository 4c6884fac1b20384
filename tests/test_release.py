"""The release itself, from real upstream sources: all six artifacts (cpu, mkl, cu130 x
static, dynamic) built with the portable toolchain (nvcc on the same clang and libc++ for
cu130), audited, installed into a fresh venv and called through ctypes (release_test).
Cold, this compiles OpenBLAS, libjpeg-turbo, protobuf and OpenCV (twice each where linking
differs): ~40 minutes on 2 cores; oneDNN comes from Intel's wheels. The cache
lives in $BUILDGRAPH_RELEASE_CACHE (default ~/.cache/buildgraph-release), kept between
runs on the same machine, so a warm run restores everything in seconds."""

import os
from pathlib import Path

import pytest
from conftest import SHARED_TOOLCHAINS, copy_release_workspace

from buildgraph.cli import main

RELEASE_CACHE = Path(os.environ.get("BUILDGRAPH_RELEASE_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildgraph-release")


@pytest.mark.slow
@pytest.mark.release
@pytest.mark.skipif(not os.environ.get("BUILDGRAPH_TEST_RELEASE"),
                    reason="the real release build: set BUILDGRAPH_TEST_RELEASE=1 (.ci/run does)")
def test_release_artifacts_from_real_sources(tmp_path, capsys):
    ws = copy_release_workspace(tmp_path / "release")
    rc = main(["build", "-C", str(ws), "--cache-dir", str(RELEASE_CACHE), "--toolchain-dir", str(SHARED_TOOLCHAINS),
               "--git-sha", "0" * 40, "release_test"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-6000:] + err[-3000:]
    tags = {"cpu": "manylinux2014_x86_64.manylinux_2_17_x86_64", "cu130": "manylinux2014_x86_64.manylinux_2_17_x86_64",
            "mkl": "manylinux_2_34_x86_64"}
    for variant in (f"{d}-{l}" for d in tags for l in ("static", "dynamic")):
        device = variant.split("-")[0]
        log = (ws / ".buildgraph/out" / f"release_test@{variant}" / "test.log").read_text()
        assert log.rstrip().endswith("all checks passed"), log
        for check in ("BLAS sgemm", "JPEG encode", "OpenCV resize", "protobuf Tensor"):
            assert f"ok       {check}" in log, log
        release = ws / ".buildgraph/out" / f"release@{variant}"
        meta = dict(line.split("=", 1) for line in (release / "dist/libbackend.so.meta").read_text().splitlines())
        assert meta["platform_tag"] == tags[device], meta
        assert meta["linking"] == variant.split("-")[1]
        licences = {p.parent.name for p in (release / "dist/licenses").rglob("*") if p.is_file()}
        assert licences >= {"backend", "openblas", "libjpeg-turbo", "opencv", "protobuf", "libc++", "libunwind"}
        assert list((release / "wheel").glob(f"mxbackend-1.9.0-py3-none-{tags[device].split('.')[0]}*.whl"))
        assert meta["debug.libbackend.so.build_id"]
        if device == "cu130":
            assert "cudart" in licences      # the CUDA runtime is linked in; its terms ship
        if device == "mkl":
            assert "ok       oneDNN ReLU" in log
            assert {"libgomp", "onednn-bin"} <= licences, licences
    static = {p.name for p in (ws / ".buildgraph/out/release@cpu-static/dist/lib").iterdir()}
    dynamic = {p.name for p in (ws / ".buildgraph/out/release@cpu-dynamic/dist/lib").iterdir()}
    assert static == {"libbackend.so"}                                    # dependencies linked in
    assert any(n.startswith("libopencv_core-") for n in dynamic) and any(n.startswith("libprotobuf-") for n in dynamic)
