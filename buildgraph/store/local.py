"""The local store: action cache (AC) and content-addressed storage (CAS) on disk.

Layout of the cache directory (design note)
-------------------------------------------
  cas/<d[:2]>/<d>     a blob, named by its xxh3-128 digest, mode 0444
  cas/<d[:2]>/<d>.x   the same content as an executable, mode 0555 (hardlinks share
                      modes, so a blob wanted both ways is stored twice)
  index.sqlite        action key -> (ActionResult JSON, last-used time); the counter
                      "cas-bytes" (approximate CAS size); SHA-256 <-> xxh3 of blobs that
                      crossed the remote boundary (store/index.py)
  tmp/                blobs being written; they appear in cas/ by link(2), atomically
  sandbox/            action sandboxes: on the same filesystem, so outputs enter the
                      CAS by rename, without copying
  etc/<name>/         the /etc bwrap sandboxes see, one per state of the host's files
                      (sandbox_etc.py); `cache gc` removes them
  quarantine/         blobs found not to match their name (kept for inspection)
  hostpkgs/           the Debian packages of host tools with the state of the dpkg database
                      they were read from (Engine.packages): one small file per set of tools
  failed/<node>/      the sandbox of a node's last failed action (work/, out/), kept for
                      inspection until the node fails again or `cache gc`
  lock                flock: builds hold it shared, gc, repair and clean exclusive

Why blobs are files in a sharded directory and not values in a database: outputs move
in by rename (no copy); diskcache would copy every blob once on the way in and hand
back paths it may delete under us. Measured in bench/cas_layout.py (README).

The store's bytes are never the user's bytes. A blob's inode is never handed to
anything a user or a tool can write: outputs are materialized into out/ by reflink or
copy (fsutil.copy_new), and only a read-only bind mount (bwrap) ever sees a hardlink.
Invariants that keep the store trustworthy after a crash, a kill -9, a stray edit:
  - a blob path only ever holds complete content of its digest (written elsewhere,
    fsynced, then linked in); when a writer finds the name taken, it re-hashes the
    existing blob and replaces it if it was damaged (so new content is never deduped
    onto corrupt bytes);
  - a blob is re-hashed against its name before it leaves the machine (uploads);
  - an AC entry is written only after every blob it names exists, is validated as a
    whole tree when read (parse_result), and is write-once: a later, different result
    for the same key is reported as not reproducible and not stored;
  - a hit is served only if every blob is still present; a corrupt or poisoned entry
    is deleted and treated as a miss;
  - `verify` re-hashes every blob; `verify --repair` quarantines the bad ones and
    drops every entry naming them.
Leftovers in tmp/ and sandbox/ are removed by the next process that takes the lock
exclusively.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildgraph.action import ActionResult, BadResult, OutputFile, OutputSymlink, parse_result
from buildgraph.digest import bytes_digest, copy_hashed, file_digest, file_digests
from buildgraph.errors import StoreError
from buildgraph.fsutil import copy_new, force_remove, put_entries, walk_tree
from buildgraph.store.index import StoreIndex

DEFAULT_MAX_BYTES = 10 * 1024 ** 3
_USED_RESOLUTION = 3600.0  # refresh an entry's last-used time at most hourly
_BATCH_SECONDS = 1.0       # how long a new action cache entry may wait for its commit
INDEX = "index.sqlite"
# Removed by the next exclusive lock: earlier versions' diskcache directories, and where
# they built the sandboxer (now locations.programs_dir()).
LEGACY = ("ac", "sha256", "sandboxer")


@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    bytes_in: int = 0
    rejected: int = 0
    quarantined: int = 0


class LocalStore:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.cas = self.root / "cas"
        self.tmp = self.root / "tmp"
        self.sandboxes = self.root / "sandbox"
        self.etc = self.root / "etc"   # made when a bwrap sandbox first needs one
        try:
            for d in (self.cas, self.tmp, self.sandboxes):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use cache directory {self.root}: {exc}") from None
        self._index = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._bytes_counted = 0
        self.counters = StoreCounters()
        self._batch: dict | None = None   # key -> AC value not yet committed (see begin_batch)
        self._batch_since = 0.0
        self._touched: dict = {}   # key -> its new last-used time, written at `commit`

    # ------------------------------------------------------------ locking

    @property
    def index(self) -> StoreIndex:
        if self._index is None:
            self._index = StoreIndex(str(self.root / INDEX))
        return self._index

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
        self.commit()
        self._count_bytes()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._index is not None:
            self._index.close()
            self._index = None

    def _clean_leftovers(self) -> None:
        for d in (self.tmp, self.sandboxes):
            for entry in os.scandir(d):
                force_remove(entry.path)
        for name in LEGACY:
            force_remove(str(self.root / name))

    def remove_failed(self) -> int:
        """Remove the sandboxes kept from failed actions; returns how many there were."""
        failed = self.root / "failed"
        names = os.listdir(failed) if failed.is_dir() else []
        force_remove(failed)
        return len(names)

    # ------------------------------------------------------------ CAS

    def blob_path(self, digest: str, executable: bool = False) -> str:
        return f"{self.cas}/{digest[:2]}/{digest}{'.x' if executable else ''}"

    def has_blob(self, digest: str, executable: bool = False) -> bool:
        return os.path.exists(self.blob_path(digest, executable))

    def ingest(self, path: str, digest: str, executable: bool) -> str:
        """Move a finished file (on this filesystem, hashed to `digest` by the caller, held by
        no live process) into the CAS; returns the digest stored. A file with another name
        (which may still change) is copied in instead, and the copy is what is hashed."""
        if os.stat(path).st_nlink > 1:
            digest = self.put_file_copy(path, executable)
            os.unlink(path)
            return digest
        os.chmod(path, 0o555 if executable else 0o444)
        self._link_in(path, self.blob_path(digest, executable), os.path.getsize(path), digest)
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = bytes_digest(data)
        final = self.blob_path(digest)
        tmp = self._tmp_name()
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o444)
        self._link_in(tmp, final, len(data), digest)
        return digest

    def put_tree_copy(self, base: str, duration: float = 0.0) -> ActionResult:
        """The files and symlinks under `base`, copied into the CAS, as an ActionResult."""
        files, links, _ = walk_tree(base)
        return ActionResult(
            files=tuple(OutputFile(rel, self.put_file_copy(path, exe), os.path.getsize(path), exe)
                        for rel, path, exe in files),
            symlinks=tuple(OutputSymlink(rel, target) for rel, target in links), duration=duration)

    def put_file_copy(self, path: str, executable: bool = False) -> str:
        """Copy a file into the CAS (it stays where it is, and whoever holds it may go on
        writing it); returns the digest of the copy, which is what was stored."""
        tmp = self._tmp_name()
        digest = copy_hashed(path, tmp, 0o555 if executable else 0o444)
        self._link_in(tmp, self.blob_path(digest, executable), os.path.getsize(tmp), digest)
        return digest

    def temp_path(self) -> str:
        """A fresh path in tmp/, on the CAS's filesystem (ingest moves it in without copying)."""
        return self._tmp_name()

    def remember_sha256(self, digest: str, sha256: str) -> None:
        self.index.remember_sha256(digest, sha256)

    def sha256_for(self, digest: str) -> str | None:
        return self.index.sha256_for(digest)

    def xxh3_for_sha256(self, sha256: str) -> str | None:
        return self.index.xxh3_for(sha256)

    def verified_sha256(self, digest: str, executable: bool) -> str:
        """The SHA-256 of a blob, read now and checked against its name: what leaves the
        machine is what the name says. A damaged blob is quarantined (StoreError)."""
        path = self.blob_path(digest, executable)
        xxh, sha = file_digests(path)
        if xxh != digest:
            self.quarantine(path)
            raise StoreError(f"blob {digest} in {self.cas} does not match its name (damaged); quarantined")
        self.remember_sha256(digest, sha)
        return sha

    def _tmp_name(self) -> str:
        return f"{self.tmp}/{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"

    def _link_in(self, tmp: str, final: str, size: int, digest: str) -> None:
        """Give the complete file `tmp` (content hashing to `digest`) the name `final`.

        fsync before the name appears, so a power cut cannot leave a named but empty blob.
        If the name is taken, the existing blob is re-hashed: equal content is kept (the
        first writer wins), damaged content is quarantined and replaced by ours.
        """
        if self._batch is None:   # in a batch, commit() syncs them all at once
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            for _ in range(2):   # a second try only after quarantining a damaged blob
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    if file_digest(final) == digest:
                        return
                    self.quarantine(final)
                    continue
                with self._lock:
                    self.counters.bytes_in += size
                return
        finally:
            os.unlink(tmp)

    def quarantine(self, path: str) -> None:
        """Move a damaged blob out of the CAS (kept under quarantine/ for inspection)."""
        qdir = self.root / "quarantine"
        qdir.mkdir(exist_ok=True)
        try:
            os.replace(path, f"{qdir}/{os.path.basename(path)}-{time.time_ns()}")
        except FileNotFoundError:
            return   # another process moved it first
        with self._lock:
            self.counters.quarantined += 1

    def copy_out(self, digest: str, executable: bool, dest: str) -> None:
        """Put a blob at `dest` as a file of its own (reflink, else copy), writable by its
        owner: an edit of `dest` can never reach the store."""
        copy_new(self.blob_path(digest, executable), dest, 0o755 if executable else 0o644)

    def entries(self, result: ActionResult, link: bool = False, read_only: bool = False) -> tuple:
        """`result`'s outputs as fsutil.put_entries takes them: symlinks as recorded, files
        hardlinked when `link` (only where nothing can write: a read-only mount), else copies
        of their own, writable by their owner unless `read_only`."""
        files = []
        for f in result.files:
            blob = self.blob_path(f.digest, f.executable)
            mode = 0o755 if f.executable else 0o644
            files.append(("h", f.path, blob) if link else ("f", f.path, blob, mode & 0o555 if read_only else mode))
        return (*files, *(("l", s.path, s.target) for s in result.symlinks))

    def lay_out(self, result: ActionResult, base: str, link: bool = False) -> None:
        """Put `result`'s outputs under the existing directory `base` (entries)."""
        put_entries(base, self.entries(result, link=link))

    # ------------------------------------------------------------ AC

    def get_result(self, key: str, count: bool = True) -> ActionResult | None:
        """The cached result for `key` if it is valid and all its blobs are present.

        `count`: whether this lookup is a reuse check (counted as a hit or miss in the
        build's statistics) rather than a fetch of a result already known to exist.
        """
        counters = self.counters if count else StoreCounters()
        pending = self._batch
        raw = pending.get(key) if pending else None
        raw = raw or self.index.get(key)
        if raw is None:
            counters.misses += 1
            return None
        try:
            data, used = raw
            result = parse_result(data)
        except (BadResult, TypeError, ValueError):
            self.index.delete(key)
            self.counters.rejected += 1
            counters.misses += 1
            return None
        if not all(self.has_blob(f.digest, f.executable) for f in result.files):
            self.index.delete(key)  # a blob vanished (gc, manual deletion): not a hit
            counters.misses += 1
            return None
        if time.time() - used > _USED_RESOLUTION:
            if self._batch is None:
                self.index.touch(key, time.time())
            else:   # with the batch: a restore of 10,000 day-old entries is one transaction
                with self._lock:
                    self._touched[key] = time.time()
        counters.hits += 1
        return result

    def put_result(self, key: str, result: ActionResult) -> ActionResult:
        """Record `result` for `key`, write-once: if a valid result is recorded already, it is
        kept and returned (the caller reports a different one as not reproducible)."""
        for f in result.files:
            if not self.has_blob(f.digest, f.executable):
                raise StoreError(f"refusing to record {key}: blob {f.digest} is missing")
        value = (result.to_json(), time.time())
        if self._batch is not None:
            existing = self.get_result(key, count=False)
            if existing is not None:
                return existing
            with self._lock:
                self._batch_since = self._batch_since or time.monotonic()
                self._batch[key] = value
            self.commit(due=_BATCH_SECONDS)
            return result
        if self.index.add(key, *value):
            return result
        existing = self.get_result(key, count=False)   # drops an entry that is no longer valid
        if existing is not None:
            return existing
        self.index.set(key, *value)
        return result

    def drop_result(self, key: str) -> None:
        """Forget the entry for `key` (it could not be materialized)."""
        if self._batch:
            self._batch.pop(key, None)
        self.index.delete(key)

    def begin_batch(self) -> None:
        """Until `commit`: blobs enter the CAS without an fsync each, and new action cache
        entries wait in memory (get_result sees them). `commit` makes every blob durable with
        one syncfs of the cache's filesystem, then writes the entries in one transaction, as
        git's batched fsync does for objects and refs. A crash before it loses entries, never
        their trust: no entry on disk names a blob that may not be. An fsync per blob and a
        sqlite commit per entry cost 0.75 ms and 0.35 ms per action (200 one-command actions)."""
        self._batch = {}

    def commit(self, due: float | None = None) -> None:
        """Commit the entries waiting, and the last-used times refreshed; with `due`, only once
        the oldest new entry has waited that long."""
        with self._lock:   # outside a batch both are empty: nothing to do
            if not self._batch and not self._touched:
                return
            if due is not None and time.monotonic() - self._batch_since < due:
                return
            pending, touched, self._batch, self._touched, self._batch_since = self._batch, self._touched, {}, {}, 0.0
        if pending:
            _syncfs(str(self.root))
        with self.index.transaction():
            for key, value in pending.items():
                self.index.add(key, *value)   # another build's result first: theirs stays (write-once)
            for key, used in touched.items():
                self.index.touch(key, used)   # if not dropped meanwhile

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
        entries = len(self.index)
        return {"directory": str(self.root), "action_entries": entries, "blobs": blobs,
                "bytes": size, "max_bytes": self.max_bytes}

    def _count_bytes(self) -> None:
        """Add the bytes this process stored to the shared counter (one sqlite write per build)."""
        new = self.counters.bytes_in - self._bytes_counted
        if new:
            self.index.add_to_counter("cas-bytes", new)
            self._bytes_counted += new

    def over_limit(self) -> bool:
        self._count_bytes()
        return self.index.counter("cas-bytes") > self.max_bytes

    def gc(self, max_bytes: int | None = None) -> dict:
        """Evict least-recently-used results until the CAS fits `max_bytes`.

        Needs the lock exclusively (no build may be running on this store): a build
        holds blobs it has written but not yet recorded. Raises StoreError if busy.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        with self.exclusive("gc"):
            self._clean_leftovers()
            self.remove_failed()
            force_remove(self.etc)   # copies of host files, made again when used
            entries = []
            refs: dict[str, int] = {}
            for key, used, result in self._entries(drop_invalid=True):
                names = _blob_names(result)
                entries.append((used, key, names))
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
                self.index.delete(key)
                evicted += 1
                for n in names:
                    refs[n] -= 1
                    if refs[n] == 0 and n in sizes:
                        total -= sizes[n][1]
                        drop(n)
            self.index.set_counter("cas-bytes", total)
            return {"evicted_entries": evicted, "removed_blobs": removed_blobs,
                    "removed_bytes": removed_bytes, "bytes": total, "max_bytes": limit}

    def verify(self, repair: bool = False) -> dict:
        """Re-hash every blob against its name and check every action cache entry.

        Returns {"blobs": how many were checked, "damaged": [blob names], "entries": [(key,
        reason)]}: entries that do not parse, name a damaged blob or a missing one. With
        `repair` (the lock taken exclusively: StoreError while a build runs) damaged blobs
        are quarantined and those entries dropped, so every later hit is right.
        """
        from contextlib import nullcontext

        with self.exclusive("repair") if repair else nullcontext():
            checked, damaged = 0, set()
            for shard in os.scandir(self.cas):
                for entry in os.scandir(shard.path):
                    checked += 1
                    try:
                        ok = file_digest(entry.path) == entry.name.removesuffix(".x")
                    except OSError:
                        ok = False
                    if not ok:
                        damaged.add(entry.name)
                        if repair:
                            self.quarantine(entry.path)
            bad_entries = []
            for key, _, result in self._entries(drop_invalid=repair, report=bad_entries):
                names = _blob_names(result)
                reason = None
                if names & damaged:
                    reason = f"names a damaged blob ({sorted(names & damaged)[0]})"
                elif not all(os.path.exists(f"{self.cas}/{n[:2]}/{n}") for n in names):
                    reason = "names a missing blob"
                if reason:
                    bad_entries.append((key, reason))
                    if repair:
                        self.index.delete(key)
            if repair:
                for name in damaged:
                    self.index.forget_sha256(name.removesuffix(".x"))
            return {"blobs": checked, "damaged": sorted(damaged), "entries": bad_entries}

    def _entries(self, drop_invalid: bool, report: list | None = None):
        """(key, last used, result) of every valid AC entry; invalid ones are dropped
        (`drop_invalid`) and/or listed in `report` as (key, reason)."""
        for key, data, used in self.index.rows():
            try:
                result = parse_result(data)
            except (BadResult, TypeError, ValueError) as exc:
                if report is not None:
                    report.append((key, f"invalid ({exc})"))
                if drop_invalid:
                    self.index.delete(key)
                continue
            yield key, used, result

    @contextmanager
    def exclusive(self, what: str):
        """Hold the cache lock exclusively (no build running on this store), or StoreError."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"cache {self.root} is in use by a running build; {what} not run") from None
            yield
        finally:
            os.close(fd)


def _syncfs(path: str) -> None:
    """Flush the filesystem holding `path` to disk (syncfs(2); sync(2) where it is missing)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _blob_names(result: ActionResult) -> set[str]:
    """The CAS file names (digest, plus .x for executables) a result refers to."""
    names = {f.digest + (".x" if f.executable else "") for f in result.files}
    names.update(d for d in (result.stdout, result.stderr) if d)
    return names

