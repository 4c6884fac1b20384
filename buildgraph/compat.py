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
# The same for clang as host compiler (crt/host_config.h of each release refuses newer ones).
CUDA_MAX_CLANG = (
    ((12, 8), (12, 9), 19),
    ((13, 0), (13, 99), 20),
)


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def max_host_for_cuda(cuda_version: str, table=CUDA_MAX_GCC) -> int | None:
    mm = _major_minor(cuda_version)
    if mm is None:
        return None
    for low, high, limit in table:
        if low <= mm <= high:
            return limit
    return None


def check_cuda_host(cuda_tc, host_tc) -> None:
    """ConfigError (exit 2) if `host_tc`'s compiler is outside what `cuda_tc`'s nvcc supports.
    A host toolchain is gcc at its `version` unless its `compiler` says otherwise ("clang 19.1.7")."""
    family, version = (host_tc.compiler.split(None, 1) + [""])[:2] if host_tc.compiler else ("gcc", host_tc.version)
    table = {"gcc": CUDA_MAX_GCC, "clang": CUDA_MAX_CLANG}.get(family)
    limit = max_host_for_cuda(cuda_tc.cuda, table) if table else None
    found = _major_minor(version)
    if limit is None:
        raise ConfigError(f"no {family} host-compiler rule for CUDA {cuda_tc.cuda}", file=cuda_tc.loc.file,
                          line=cuda_tc.loc.line, field="cuda",
                          hint="known CUDA releases: 10.0-10.2, 11.x, 12.x, 13.x with gcc; 12.8-13.x with clang")
    if found is None or found[0] > limit:
        raise ConfigError(
            f"toolchain '{cuda_tc.name}' (CUDA {cuda_tc.cuda}) cannot use host compiler "
            f"'{host_tc.name}' ({family} {version}): CUDA {cuda_tc.cuda} supports {family} <= {limit}",
            file=cuda_tc.loc.file, line=cuda_tc.loc.line, field="host_compiler",
            hint=f"pick a {family} {limit} or older toolchain as host_compiler")
