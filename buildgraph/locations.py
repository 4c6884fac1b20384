"""Where buildgraph keeps what outlives a build, when not told: the cache directory and
the toolchain store. Light on purpose: the no-op check needs them before anything else."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    env = os.environ.get("BUILDGRAPH_CACHE_DIR")
    if env:
        return Path(env).absolute()
    return user_cache_dir() / "buildgraph"


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"))


def programs_dir() -> Path:
    """Where buildgraph keeps the programs it builds for itself (the sandboxer), for every
    cache directory, as Bazel keeps its install base apart from its output bases:
    $BUILDGRAPH_PROGRAMS_DIR, else $XDG_CACHE_HOME/buildgraph-programs."""
    env = os.environ.get("BUILDGRAPH_PROGRAMS_DIR")
    if env:
        return Path(env).absolute()
    return user_cache_dir() / "buildgraph-programs"


def default_toolchain_dir(cache_dir: Path) -> Path:
    env = os.environ.get("BUILDGRAPH_TOOLCHAIN_DIR")
    return Path(env) if env else cache_dir / "toolchains"


def toolchain_dir(cache_dir: Path | None, explicit: Path | None) -> Path:
    """The toolchain store a command uses: --toolchain-dir, else the default for its cache."""
    return explicit or default_toolchain_dir(cache_dir or default_cache_dir())
