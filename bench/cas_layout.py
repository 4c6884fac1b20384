"""Should CAS blobs live inside diskcache or in a sharded directory of files?

    python bench/cas_layout.py        (needs the `bench` extra: diskcache)

Measures, for several blob sizes, the two operations a build does with blobs:
ingest (an action's output file enters the store) and restore (the blob appears
at an output path). Sharded directory: LocalStore.ingest (rename/link in) and
LocalStore.copy_out (a file of its own: reflink where the filesystem can, else a copy by
the kernel — what out/<node> gets). diskcache: Cache.set(read=True) from the file, and a copy out of
Cache.get(read=True). Prints throughput and the ratio; asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import diskcache
except ImportError:
    sys.exit("bench/cas_layout.py needs diskcache: pip install 'buildgraph[bench]'")

from buildgraph.digest import file_digest  # noqa: E402
from buildgraph.store.local import LocalStore  # noqa: E402

CASES = [(2000, 4 << 10), (200, 1 << 20), (6, 64 << 20)]


def make_files(d: Path, count: int, size: int) -> list[Path]:
    d.mkdir(parents=True)
    files = []
    for i in range(count):
        p = d / f"f{i}"
        p.write_bytes(os.urandom(min(size, 1 << 20)) * max(1, size >> 20) if size >= 1 << 20 else os.urandom(size))
        files.append(p)
    return files


def sharded(base: Path, files: list[Path]) -> tuple[float, float]:
    store = LocalStore(base / "store")
    digests = [file_digest(f) for f in files]
    t = time.perf_counter()
    for f, d in zip(files, digests):
        store.ingest(str(f), d, False)
    ingest = time.perf_counter() - t
    out = base / "out-sharded"
    out.mkdir()
    t = time.perf_counter()
    for i, d in enumerate(digests):
        store.copy_out(d, False, str(out / f"o{i}"))
    restore = time.perf_counter() - t
    store.close()
    return ingest, restore


def in_diskcache(base: Path, files: list[Path]) -> tuple[float, float]:
    cache = diskcache.Cache(str(base / "dc"), size_limit=2 ** 40)
    digests = [file_digest(f) for f in files]
    t = time.perf_counter()
    for f, d in zip(files, digests):
        with open(f, "rb") as fh:
            cache.set(d, fh, read=True)
        os.unlink(f)
    ingest = time.perf_counter() - t
    out = base / "out-dc"
    out.mkdir()
    t = time.perf_counter()
    for i, d in enumerate(digests):
        with cache.get(d, read=True) as src, open(out / f"o{i}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    restore = time.perf_counter() - t
    cache.close()
    return ingest, restore


def main() -> None:
    print(f"{'blobs':>6} {'size':>8}  {'layout':<18} {'ingest MB/s':>12} {'restore MB/s':>13}")
    for count, size in CASES:
        total_mb = count * size / 1e6
        results = {}
        for name, fn in (("sharded directory", sharded), ("diskcache", in_diskcache)):
            base = Path(tempfile.mkdtemp(prefix="bg-cas-"))
            try:
                files = make_files(base / "src", count, size)
                results[name] = fn(base, files)
            finally:
                shutil.rmtree(base, ignore_errors=True)
            ing, res = results[name]
            print(f"{count:>6} {size >> 10:>6}KB  {name:<18} {total_mb / ing:12.0f} {total_mb / res:13.0f}")
        (si, sr), (di, dr) = results["sharded directory"], results["diskcache"]
        print(f"{'':>16}  sharded/diskcache speed: ingest {di / si:.1f}x, restore {dr / sr:.1f}x")


if __name__ == "__main__":
    main()
