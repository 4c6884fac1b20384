"""`cache clean`: remove what a cache directory holds for every workspace that uses it.

Nothing here is removed by `clean`, which is one workspace's business. Parts, as they
lie in CACHE_DIR (store/local.py has the store's own layout):
  results     index.sqlite, cas/, compile-cache/, failed/, quarantine/, tmp/, sandbox/, etc/
              (and earlier versions' ac/, sha256/ and sandboxer/): what builds produced; any of it
              is rebuilt on demand
  downloads   toolchains/ (the default toolchain store) and sources/ (upstream trees):
              fetched once, large, slow to fetch again; removed only with --all
The cache lock is held exclusively throughout (never under a running build), and the
lock file stays. What is removed is counted first, so the summary says what went.
"""

from __future__ import annotations

import os
from pathlib import Path

from buildgraph.fsutil import force_remove
from buildgraph.store.local import INDEX, LEGACY, LocalStore

RESULTS = (INDEX, f"{INDEX}-wal", f"{INDEX}-shm", "cas", "compile-cache", "failed", "quarantine", "tmp", "sandbox",
           "etc", *LEGACY)
DOWNLOADS = ("toolchains", "sources")
_KEEP = ("lock",)


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under `path`, each inode counted once."""
    seen, files, size = set(), 0, 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            files += 1
            size += st.st_size
    return files, size


def clean(cache_dir: Path, everything: bool) -> list[tuple[str, int, int]]:
    """Remove the results (and with `everything`, all else but the lock) of `cache_dir`;
    returns (name, files, bytes) of each part removed, a directory's name ending in "/".
    StoreError while a build runs."""
    store = LocalStore(cache_dir)
    removed = []
    with store.exclusive("cache clean"):
        store.close()
        names = sorted(os.listdir(cache_dir)) if everything else [n for n in RESULTS if (cache_dir / n).exists()]
        for name in names:
            if name in _KEEP:
                continue
            path = cache_dir / name
            tree = path.is_dir() and not path.is_symlink()
            files, size = tree_size(path) if tree else (1, path.lstat().st_size)
            force_remove(path)
            if files:   # not the empty tmp/ and sandbox/ every store keeps
                removed.append((f"{name}/" if tree else name, files, size))
    return removed
