"""The local store: action cache (AC) and content-addressed storage (CAS) on disk.

Layout of the cache directory (design note)
-------------------------------------------
  cas/<d[:2]>/<d>     a blob, named by its xxh3-128 digest, mode 0444
  cas/<d[:2]>/<d>.x   the same content as an executable, mode 0555 (hardlinks share
                      modes, so a blob wanted both ways is stored twice)
  ac/                 diskcache: action key -> (ActionResult JSON, last-used time);
                      also the counter "cas-bytes" (approximate CAS size)
  sha256/             diskcache: SHA-256 <-> xxh3 of blobs that crossed the remote
                      boundary, so a blob is hashed with SHA-256 at most once
  tmp/                blobs being written; they appear in cas/ by link(2), atomically
  sandbox/            action sandboxes: on the same filesystem, so outputs enter the
                      CAS by rename, without copying
  lock                flock: builds hold it shared, gc exclusive

Why blobs are files in a sharded directory and not diskcache values: outputs move
in by rename (no copy) and are restored by hardlink (no copy); diskcache would copy
every blob once on the way in and hand back paths it may delete under us. Measured
in bench/cas_layout.py (figures in the README).

Invariants that keep the store trustworthy after a crash or kill -9 at any point:
a blob path only ever holds complete content of its digest (written elsewhere,
then linked in); an AC entry is written only after every blob it names exists,
and a hit is served only if every blob is still present; a corrupt or poisoned
entry is deleted and treated as a miss. Leftovers in tmp/ and sandbox/ are
removed by the next process that can take the lock exclusively.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from buildgraph.action import ActionResult, BadResult, OutputFile, OutputSymlink, parse_result
from buildgraph.fsutil import walk_tree
from buildgraph.digest import bytes_digest, file_digest
from buildgraph.errors import StoreError
from buildgraph.fsutil import force_remove, link_or_copy

DEFAULT_MAX_BYTES = 10 * 1024 ** 3
_USED_RESOLUTION = 3600.0  # refresh an entry's last-used time at most hourly


def default_cache_dir() -> Path:
    env = os.environ.get("BUILDGRAPH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "buildgraph"


@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    bytes_in: int = 0
    rejected: int = 0


class LocalStore:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.cas = self.root / "cas"
        self.tmp = self.root / "tmp"
        self.sandboxes = self.root / "sandbox"
        try:
            for d in (self.cas, self.tmp, self.sandboxes):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use cache directory {self.root}: {exc}") from None
        self._ac = None
        self._sha = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._bytes_counted = 0
        self.counters = StoreCounters()

    # ------------------------------------------------------------ locking

    @property
    def ac(self):
        if self._ac is None:
            import diskcache
            self._ac = diskcache.Cache(str(self.root / "ac"), eviction_policy="none",
                                       size_limit=2 ** 62, timeout=60)
        return self._ac

    def open_for_build(self) -> None:
        """Take the shared build lock; clean leftovers if no one else is using the store."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._clean_leftovers()
        except BlockingIOError:
            pass
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._lock_fd = fd

    def close(self) -> None:
        self._count_bytes()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for cache in (self._ac, self._sha):
            if cache is not None:
                cache.close()
        self._ac = self._sha = None

    def _clean_leftovers(self) -> None:
        for d in (self.tmp, self.sandboxes):
            for entry in os.scandir(d):
                force_remove(entry.path)

    # ------------------------------------------------------------ CAS

    def blob_path(self, digest: str, executable: bool = False) -> str:
        return f"{self.cas}/{digest[:2]}/{digest}{'.x' if executable else ''}"

    def has_blob(self, digest: str, executable: bool = False) -> bool:
        return os.path.exists(self.blob_path(digest, executable))

    def ingest(self, path: str, digest: str, executable: bool) -> None:
        """Move a finished file (on this filesystem) into the CAS under `digest`."""
        final = self.blob_path(digest, executable)
        if os.path.exists(final):
            os.unlink(path)
            return
        os.chmod(path, 0o555 if executable else 0o444)
        st = os.stat(path)
        if st.st_nlink > 1:  # another name for this inode may still change: take a copy
            tmp = self._tmp_name()
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o555 if executable else 0o444)
            os.unlink(path)
            path = tmp
        self._link_in(path, final, st.st_size)

    def put_bytes(self, data: bytes) -> str:
        digest = bytes_digest(data)
        final = self.blob_path(digest)
        if not os.path.exists(final):
            tmp = self._tmp_name()
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o444)
            self._link_in(tmp, final, len(data))
        return digest

    def put_tree_copy(self, base: str, duration: float = 0.0) -> ActionResult:
        """The files and symlinks under `base`, copied into the CAS, as an ActionResult."""
        files, links, _ = walk_tree(base)
        return ActionResult(
            files=tuple(OutputFile(rel, self.put_file_copy(path, exe), os.path.getsize(path), exe)
                        for rel, path, exe in files),
            symlinks=tuple(OutputSymlink(rel, target) for rel, target in links), duration=duration)

    def put_file_copy(self, path: str, executable: bool = False) -> str:
        """Copy a file that must stay where it is into the CAS; returns its digest."""
        tmp = self._tmp_name()
        shutil.copyfile(path, tmp)
        digest = file_digest(tmp)
        os.chmod(tmp, 0o555 if executable else 0o444)
        final = self.blob_path(digest, executable)
        if os.path.exists(final):
            os.unlink(tmp)
        else:
            self._link_in(tmp, final, os.path.getsize(tmp))
        return digest

    def temp_path(self) -> str:
        """A fresh path in tmp/, on the CAS's filesystem (ingest moves it in without copying)."""
        return self._tmp_name()

    @property
    def sha_index(self):
        if self._sha is None:
            import diskcache
            self._sha = diskcache.Cache(str(self.root / "sha256"), timeout=60)
        return self._sha

    def remember_sha256(self, digest: str, sha256: str) -> None:
        self.sha_index.set(f"x{digest}", sha256)
        self.sha_index.set(f"s{sha256}", digest)

    def sha256_for(self, digest: str) -> str | None:
        return self.sha_index.get(f"x{digest}")

    def xxh3_for_sha256(self, sha256: str) -> str | None:
        return self.sha_index.get(f"s{sha256}")

    def _tmp_name(self) -> str:
        return f"{self.tmp}/{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"

    def _link_in(self, tmp: str, final: str, size: int) -> None:
        # fsync before the name appears, so a power cut cannot leave a named but empty blob.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.link(tmp, final)  # fails if present: the first writer wins, content is equal
            with self._lock:
                self.counters.bytes_in += size
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    def link_out(self, digest: str, executable: bool, dest: str) -> None:
        """Materialize a blob at `dest` (hardlink, else reflink, else copy)."""
        link_or_copy(self.blob_path(digest, executable), dest)

    # ------------------------------------------------------------ AC

    def get_result(self, key: str, count: bool = True) -> ActionResult | None:
        """The cached result for `key` if it is valid and all its blobs are present.

        `count`: whether this lookup is a reuse check (counted as a hit or miss in the
        build's statistics) rather than a fetch of a result already known to exist.
        """
        counters = self.counters if count else StoreCounters()
        raw = self.ac.get(key)
        if raw is None:
            counters.misses += 1
            return None
        try:
            data, used = raw
            result = parse_result(data)
        except (BadResult, TypeError, ValueError):
            self.ac.delete(key)
            self.counters.rejected += 1
            counters.misses += 1
            return None
        if not all(self.has_blob(f.digest, f.executable) for f in result.files):
            self.ac.delete(key)  # a blob vanished (gc, manual deletion): not a hit
            counters.misses += 1
            return None
        if time.time() - used > _USED_RESOLUTION:
            self.ac.set(key, (data, time.time()))
        counters.hits += 1
        return result

    def put_result(self, key: str, result: ActionResult) -> None:
        for f in result.files:
            if not self.has_blob(f.digest, f.executable):
                raise StoreError(f"refusing to record {key}: blob {f.digest} is missing")
        self.ac.set(key, (result.to_json(), time.time()))

    # ------------------------------------------------------------ stats and gc

    def blob_usage(self) -> tuple[int, int]:
        """(number of blobs, bytes) by walking the CAS."""
        count = size = 0
        for shard in os.scandir(self.cas):
            for entry in os.scandir(shard.path):
                count += 1
                size += entry.stat().st_size
        return count, size

    def stats(self) -> dict:
        blobs, size = self.blob_usage()
        entries = sum(1 for k in self.ac.iterkeys() if k != "cas-bytes")
        return {"directory": str(self.root), "action_entries": entries, "blobs": blobs,
                "bytes": size, "max_bytes": self.max_bytes}

    def _count_bytes(self) -> None:
        """Add the bytes this process stored to the shared counter (one sqlite write per build)."""
        new = self.counters.bytes_in - self._bytes_counted
        if new:
            self.ac.incr("cas-bytes", new)
            self._bytes_counted += new

    def over_limit(self) -> bool:
        self._count_bytes()
        return (self.ac.get("cas-bytes") or 0) > self.max_bytes

    def gc(self, max_bytes: int | None = None) -> dict:
        """Evict least-recently-used results until the CAS fits `max_bytes`.

        Needs the lock exclusively (no build may be running on this store): a build
        holds blobs it has written but not yet recorded. Raises StoreError if busy.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError("cache is in use by a running build; gc not run") from None
            self._clean_leftovers()
            entries = []
            refs: dict[str, int] = {}
            for key in list(self.ac.iterkeys()):
                if key == "cas-bytes":
                    continue
                raw = self.ac.get(key)
                try:
                    result = parse_result(raw[0])
                except (BadResult, TypeError, ValueError):
                    self.ac.delete(key)
                    continue
                names = {os.path.basename(self.blob_path(f.digest, f.executable)) for f in result.files}
                names.update(d for d in (result.stdout, result.stderr) if d)
                entries.append((raw[1], key, names))
                for n in names:
                    refs[n] = refs.get(n, 0) + 1
            sizes = {}
            for shard in os.scandir(self.cas):
                for entry in os.scandir(shard.path):
                    sizes[entry.name] = (entry.path, entry.stat().st_size)
            removed_blobs = removed_bytes = 0

            def drop(name):
                nonlocal removed_blobs, removed_bytes
                path, size = sizes.pop(name)
                os.unlink(path)
                removed_blobs += 1
                removed_bytes += size

            for name in [n for n in sizes if n not in refs]:
                drop(name)
            total = sum(s for _, s in sizes.values())
            evicted = 0
            for used, key, names in sorted(entries):
                if total <= limit:
                    break
                self.ac.delete(key)
                evicted += 1
                for n in names:
                    refs[n] -= 1
                    if refs[n] == 0 and n in sizes:
                        total -= sizes[n][1]
                        drop(n)
            self.ac.set("cas-bytes", total)
            return {"evicted_entries": evicted, "removed_blobs": removed_blobs,
                    "removed_bytes": removed_bytes, "bytes": total, "max_bytes": limit}
        finally:
            os.close(fd)

