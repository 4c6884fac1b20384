"""Fixtures: throwaway workspaces in tmp dirs, each with its own cache directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from buildgraph.cli import main
from buildgraph.locations import user_cache_dir

# A developer's own ~/.buildgraphrc must not change what the tests run (rcfile.py).
os.environ["BUILDGRAPH_RC"] = os.devnull
# The builds that tests run as processes go through this test process's own resident server
# (server.py), as a user's do, in a short directory (a socket's path has at most 107 bytes);
# pytest_sessionfinish stops it by its pid.
SERVER_DIR = tempfile.mkdtemp(prefix="bgs-", dir="/tmp")
os.environ["BUILDGRAPH_SERVER_DIR"] = SERVER_DIR

REPO = Path(__file__).resolve().parent.parent
# Heavy toolchains (zig, CUDA) are fetched once into this store and shared by every
# test and every run on this machine; the store's locking makes concurrent fetches safe.
SHARED_TOOLCHAINS = Path(os.environ.get("BUILDGRAPH_TEST_TOOLCHAINS")
                         or user_cache_dir() / "buildgraph-test-toolchains")

HOST_GCC = """\
name: host-gcc
version: "12"
provider: host
tools:
  cc: gcc
  cxx: g++
  ar: ar
  as: as
  ld: ld
  objcopy: objcopy
"""


def _command_words(args) -> int:
    """How many leading arguments name the (sub)command: `toolchain fetch`, `artifact push` have two."""
    return 2 if args and args[0] in ("toolchain", "artifact") else 1


class Workspace:
    """A workspace on disk plus helpers to run buildgraph on it."""

    def __init__(self, root: Path, cache: Path, toolchain_dir: Path | None = None):
        self.root, self.cache = root, cache
        self.toolchain_dir = toolchain_dir

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        if mode is not None:
            path.chmod(mode)
        return path

    def run(self, *args, capsys=None) -> tuple[int, str, str]:
        """Run the CLI in this process; returns (exit code, stdout, stderr)."""
        n = _command_words(args)
        rc = main([*args[:n], "-C", str(self.root), "--cache-dir", str(self.cache), *self._tc_args(), *args[n:]])
        if capsys is not None:
            out, err = capsys.readouterr()
            return rc, out, err
        return rc, "", ""

    def build(self, *args, capsys) -> dict:
        """Build in-process with an event log; returns node -> status."""
        log = self.root / ".events.json"
        rc, out, err = self.run("build", "--log-json", str(log), *args, capsys=capsys)
        statuses = {}
        if log.exists():
            statuses = {e["node"]: e["status"] for e in map(json.loads, log.read_text().splitlines())}
        statuses["_rc"], statuses["_out"], statuses["_err"] = rc, out, err
        return statuses

    def spawn(self, *args, env=None, **kw) -> subprocess.Popen:
        """Run the CLI as a separate process (for kills, signals and concurrency);
        `env` adds to the environment."""
        n = _command_words(args)
        cmd = [sys.executable, "-m", "buildgraph", *args[:n], "-C", str(self.root),
               "--cache-dir", str(self.cache), *self._tc_args(), *args[n:]]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)

    def _tc_args(self) -> list[str]:
        return ["--toolchain-dir", str(self.toolchain_dir)] if self.toolchain_dir else []

    def use_toolchains(self, *names: str) -> None:
        """Copy the repository's pinned toolchains/<name>.yaml into this workspace."""
        for name in names:
            self.write(f"toolchains/{name}.yaml", (REPO / "toolchains" / f"{name}.yaml").read_text())
        # and the patch files they may name, byte for byte
        shutil.copytree(REPO / "toolchains" / "patches", self.root / "toolchains" / "patches", dirs_exist_ok=True)

    def out(self, node: str) -> Path:
        return self.root / ".buildgraph" / "out" / node


@pytest.fixture
def ws(tmp_path) -> Workspace:
    w = Workspace(tmp_path / "ws", tmp_path / "cache")
    w.root.mkdir()
    w.write("toolchains/host-gcc.yaml", HOST_GCC)
    return w


@pytest.fixture
def shared_ws(tmp_path) -> Workspace:
    """A workspace whose toolchain store is the shared one (for zig, CUDA, apt gcc)."""
    w = Workspace(tmp_path / "ws", tmp_path / "cache", SHARED_TOOLCHAINS)
    w.root.mkdir()
    return w


def trace_actions(path: Path) -> list[dict]:
    """The actions that ran or failed in a --profile trace, by start time (not the build
    span, the phases inside actions, the instants of restored nodes or the metadata)."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    return sorted((e for e in events if e["ph"] == "X" and e.get("cat") in ("ran", "failed")), key=lambda e: e["ts"])


def ran(statuses: dict) -> set[str]:
    return {n for n, s in statuses.items() if s == "ran"}


def pytest_collection_modifyitems(config, items):
    """The longest tests first (the real release build), so a parallel run overlaps them with
    everything else instead of starting them last."""
    items.sort(key=lambda item: item.get_closest_marker("release") is None)


def copy_release_workspace(dest: Path) -> Path:
    """The repository's release workspace (BUILD.yaml, recipes, toolchains, the backend) copied
    to `dest`: no state of the developer's own builds in the repository leaks into a test."""
    for name in ("BUILD.yaml", "deps", "toolchains", "examples/backend"):
        src, dst = REPO / name, dest / name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return dest


def mount_points(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a mountinfo (escapes left as they are)."""
    return [(f[4], f[f.index("-", 6) + 1]) for f in (line.split(" ") for line in text.splitlines())]


def stop_servers(where: str) -> None:
    """Stop the resident servers in `where` by their pids, and remove it."""
    from buildgraph import server

    server.stop_all(where)
    shutil.rmtree(where, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    stop_servers(SERVER_DIR)
