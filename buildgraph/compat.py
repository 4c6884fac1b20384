"""Compatibility rules between toolchains, checked before anything runs.

CUDA's nvcc supports a range of host gcc versions per release; using a newer gcc
fails deep inside a build (or, worse, miscompiles). The table gives, per CUDA
major.minor, the newest gcc major that release supports, from NVIDIA's installation
guides (host compiler support tables); the oldest supported gcc is not checked.
"""

from __future__ import annotations

import re

from buildgraph.errors import ConfigError

# CUDA (major, minor) range -> newest supported gcc major.
CUDA_MAX_GCC = (
    ((10, 0), (10, 2), 8),
    ((11, 0), (11, 0), 9),
    ((11, 1), (11, 3), 10),
    ((11, 4), (11, 8), 11),
    ((12, 0), (12, 3), 12),
    ((12, 4), (12, 9), 13),
    ((13, 0), (13, 99), 15),
)


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def max_gcc_for_cuda(cuda_version: str) -> int | None:
    mm = _major_minor(cuda_version)
    if mm is None:
        return None
    for low, high, gcc in CUDA_MAX_GCC:
        if low <= mm <= high:
            return gcc
    return None


def check_cuda_host(cuda_tc, host_tc) -> None:
    """ConfigError (exit 2) if `host_tc`'s gcc is outside what `cuda_tc`'s nvcc supports."""
    limit = max_gcc_for_cuda(cuda_tc.cuda)
    gcc = _major_minor(host_tc.version)
    if limit is None:
        raise ConfigError(f"no host-compiler rule for CUDA {cuda_tc.cuda}", file=cuda_tc.loc.file,
                          line=cuda_tc.loc.line, field="cuda",
                          hint="known CUDA releases: 10.0-10.2, 11.x, 12.x, 13.x")
    if gcc is None or gcc[0] > limit:
        raise ConfigError(
            f"toolchain '{cuda_tc.name}' (CUDA {cuda_tc.cuda}) cannot use host compiler "
            f"'{host_tc.name}' (gcc {host_tc.version}): CUDA {cuda_tc.cuda} supports gcc <= {limit}",
            file=cuda_tc.loc.file, line=cuda_tc.loc.line, field="host_compiler",
            hint=f"pick a gcc {limit} or older toolchain as host_compiler")
