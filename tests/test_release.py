"""The release itself, from real upstream sources: all six artifacts (cpu, mkl, cu130 x
static, dynamic) built with the portable toolchain (nvcc on the same clang and libc++ for
cu130), audited, installed into a fresh venv and called through ctypes (release_test).
Cold, this compiles OpenBLAS, libjpeg-turbo, protobuf and OpenCV (twice each where linking
differs): ~40 minutes on 2 cores; oneDNN comes from Intel's wheels. The cache
lives in $BUILDGRAPH_RELEASE_CACHE (default ~/.cache/buildgraph-release), kept between
runs on the same machine, so a warm run restores everything in seconds."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_TOOLCHAINS, copy_release_workspace

from buildgraph.cli import main
from buildgraph.locations import user_cache_dir

RELEASE_CACHE = Path(os.environ.get("BUILDGRAPH_RELEASE_CACHE") or user_cache_dir() / "buildgraph-release")


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
            "mkl": "manylinux_2_27_x86_64"}
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
        project = f"mxbackend_{variant.replace('-', '_')}"     # mxbackend-{device}-{linking}
        assert list((release / "wheel").glob(f"{project}-1.9.0-py3-none-{tags[device].split('.')[0]}*.whl"))
        assert meta["debug.libbackend.so.build_id"]
        if device == "cu130":
            assert "cudart" in licences      # the CUDA runtime is linked in; its terms ship
        if device == "mkl":    # Intel's libdnnl sets the tag; the libgomp beside it is for glibc 2.17
            assert "libdnnl" in meta["platform_tag.set_by"] and "expf@GLIBC_2.27" in meta["platform_tag.set_by"]
            assert "libgomp" not in meta["platform_tag.set_by"], meta["platform_tag.set_by"]
            assert "ok       oneDNN ReLU" in log
            assert {"libgomp", "onednn-bin"} <= licences, licences
    static = {p.name for p in (ws / ".buildgraph/out/release@cpu-static/dist/lib").iterdir()}
    dynamic = {p.name for p in (ws / ".buildgraph/out/release@cpu-dynamic/dist/lib").iterdir()}
    assert static == {"libbackend.so"}                                    # dependencies linked in
    assert any(n.startswith("libopencv_core-") for n in dynamic) and any(n.startswith("libprotobuf-") for n in dynamic)


@pytest.mark.slow
@pytest.mark.release
@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists("/dev/nvidiactl"),
                    reason="needs an NVIDIA GPU and driver: on a machine with one, run "
                           "BUILDGRAPH_TEST_RELEASE=1 pytest -m gpu tests/test_release.py")
@pytest.mark.skipif(not os.environ.get("BUILDGRAPH_TEST_RELEASE"),
                    reason="the real release build: set BUILDGRAPH_TEST_RELEASE=1 (.ci/run does)")
def test_cu130_wheels_run_their_kernel_on_the_gpu(tmp_path, capsys):
    # The sandbox shows actions no GPU, so release_test only proves a cu130 wheel loads and says
    # "no CUDA device". Here the wheel is installed and called as a user on a GPU machine would.
    ws = copy_release_workspace(tmp_path / "release")
    rc = main(["build", "-C", str(ws), "--cache-dir", str(RELEASE_CACHE), "--toolchain-dir", str(SHARED_TOOLCHAINS),
               "--git-sha", "0" * 40, "release@cu130-static", "release@cu130-dynamic"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-4000:] + err[-3000:]
    for variant in ("cu130-static", "cu130-dynamic"):
        venv = tmp_path / f"venv-{variant}"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        wheel = next((ws / ".buildgraph/out" / f"release@{variant}" / "wheel").glob("*.whl"))
        subprocess.run([venv / "bin/pip", "install", "--quiet", "--no-index", "--no-deps", wheel], check=True)
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        run = subprocess.run([venv / "bin/python", ws / "examples/backend/tests/wheel_test.py", "cu130"],
                             capture_output=True, text=True, env=env)
        assert run.returncode == 0 and "ok       CUDA saxpy" in run.stdout, run.stdout + run.stderr
