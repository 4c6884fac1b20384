"""Local store first, then a remote cache; remote hits fill the local store.

`fetch` (called from the scheduler's lookup threads) asks the remote for an action
result, validates it, downloads the blobs the local store lacks — each checked against
its SHA-256 and size before it is used — and records the result locally. `upload` (after
an action ran) queues the result for background upload: FindMissingBlobs (HEAD over
HTTP) first, then the missing blobs, then the ActionResult; the build waits for uploads
only at its end (`wait`). `--remote-read-only` never writes.

Faults never fail a build that can run locally. A remote that is down, times out or
answers errors is reported once and then left alone for the rest of the build; a
corrupt blob or a poisoned/garbage result is a miss for that action (counted as
rejected, warned once), and the action runs locally.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import xxhash

from buildgraph.action import Action, ActionResult, BadResult, OutputFile, OutputSymlink, check_declared
from buildgraph.errors import StoreError
from buildgraph.store.local import LocalStore
from buildgraph.store.remote import (RDigest, RemoteError, RemoteOptions, action_digest, decode_duration,
                                     decode_result, duration_digest, encode_duration, encode_result)

_SMALL = 1 << 20   # blobs up to this size are fetched in batches


class BlobMismatch(Exception):
    """A downloaded blob did not hash to the digest it was asked for."""


@dataclass
class RemoteCounters:
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    uploads: int = 0
    errors: int = 0


class RemoteLayer:
    def __init__(self, local: LocalStore, remote, options: RemoteOptions, warn, scope: str = ""):
        """`scope`: the workspace's name, which named duration records are kept under."""
        self.local, self.remote, self.options = local, remote, options
        self.scope = scope
        self.warn = warn
        self.counters = RemoteCounters()
        self.healthy = True
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._uploads = ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="bg-upload")
        self._pending: list[Future] = []

    # ------------------------------------------------------------ faults

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        self.warn(message)

    def _down(self, exc: Exception) -> None:
        with self._lock:
            self.counters.errors += 1
            self.healthy = False
        self._warn_once("down", f"warning: remote cache {self.remote.name} failed ({exc}); "
                                "continuing with the local cache only for this build")

    def _count(self, **deltas) -> None:
        with self._lock:
            for name, value in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    # ------------------------------------------------------------ reads

    def fetch(self, action: Action) -> ActionResult | None:
        """The result of `action` from the remote, now also in the local store; None on a miss."""
        if not self.healthy:
            return None
        try:
            data = self.remote.get_action_result(action_digest(action.key_bytes))
            if data is None:
                self._count(misses=1)
                return None
            result = self.accept(data, action)
        except (BadResult, BlobMismatch) as exc:
            self._count(rejected=1, misses=1)
            self._warn_once("rejected", f"warning: rejected a remote cache entry for {action.node}: {exc}; "
                                        "building it locally")
            return None
        except RemoteError as exc:
            self._down(exc)
            return None
        except Exception as exc:  # a remote answering nonsense must not break the build
            self._down(RemoteError(f"{type(exc).__name__}: {exc}"))
            return None
        if result is None:
            self._count(misses=1)
            return None
        self._count(hits=1)
        return self.local.put_result(action.key, result)

    def accept(self, data: bytes, action: Action) -> ActionResult | None:
        """A remote ActionResult for `action` in local terms, its blobs downloaded and verified;
        None if the remote lost a blob. BadResult (or BlobMismatch) unless it is well formed,
        safe as a whole tree, and holds exactly the action's declared outputs."""
        remote_result = decode_result(data)
        check_declared(action.outs, [p for p, _, _ in remote_result.files], [p for p, _ in remote_result.symlinks])
        return self._localize(remote_result, action)

    def _localize(self, rr, action: Action) -> ActionResult | None:
        """Download what the local store lacks; the result in local (xxh3) terms, or None if
        the remote lost a blob it references."""
        local_of: dict[RDigest, str] = {}
        todo = []
        for d in rr.blobs():
            known = self.local.xxh3_for_sha256(d.hash)
            if known is not None and (self.local.has_blob(known) or self.local.has_blob(known, True)):
                local_of[d] = known
            else:
                todo.append(d)
        small = [d for d in todo if d.size <= _SMALL]
        if small:
            got = self.remote.read_blobs(small)
            for d in small:
                if d not in got:
                    return None
                local_of[d] = self._ingest_bytes(d, got[d])
        large = [d for d in todo if d.size > _SMALL]
        if large:  # in parallel: one connection per transfer thread
            with ThreadPoolExecutor(max_workers=min(len(large), max(1, self.options.jobs))) as pool:
                for d, digest in zip(large, pool.map(self._download, large)):
                    if digest is None:
                        return None
                    local_of[d] = digest
        files = []
        for path, d, exe in rr.files:
            digest = local_of[d]
            if not self.local.has_blob(digest, exe):   # wanted with the other mode bit
                if self.local.put_file_copy(self.local.blob_path(digest, not exe), exe) != digest:
                    raise BlobMismatch(f"local blob {digest} is damaged")
            files.append(OutputFile(path, digest, d.size, exe))
        return ActionResult(files=tuple(sorted(files, key=lambda f: f.path)),
                            symlinks=tuple(OutputSymlink(p, t) for p, t in sorted(rr.symlinks)),
                            stdout=local_of.get(rr.stdout) if rr.stdout else None,
                            stderr=local_of.get(rr.stderr) if rr.stderr else None, duration=rr.duration)

    def _ingest_bytes(self, d: RDigest, data: bytes) -> str:
        if len(data) != d.size or hashlib.sha256(data).hexdigest() != d.hash:
            raise BlobMismatch(f"blob {d.hash[:16]}… does not match its digest")
        self._count(bytes_down=len(data))
        digest = self.local.put_bytes(data)
        self.local.remember_sha256(digest, d.hash)
        return digest

    def _download(self, d: RDigest) -> str | None:
        """Stream a large blob to a temp file, hashing as it comes; verify; ingest."""
        tmp = self.local.temp_path()
        sha, xxh, size = hashlib.sha256(), xxhash.xxh3_128(), 0
        try:
            with open(tmp, "wb") as f:
                def sink(chunk):
                    nonlocal size
                    sha.update(chunk)
                    xxh.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                found = self.remote.download_blob(d, sink)
            if not found:
                return None
            if size != d.size or sha.hexdigest() != d.hash:
                raise BlobMismatch(f"blob {d.hash[:16]}… does not match its digest")
            self._count(bytes_down=size)
            digest = self.local.ingest(tmp, xxh.hexdigest(), False)
            self.local.remember_sha256(digest, d.hash)
            return digest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ------------------------------------------------------------ writes

    def upload(self, action: Action, result: ActionResult) -> None:
        """Queue `result` for upload in the background (nothing in read-only mode)."""
        if self.options.read_only or not self.healthy:
            return
        self._pending.append(self._uploads.submit(self._upload, action, result))

    def _upload(self, action: Action, result: ActionResult) -> None:
        if not self.healthy:
            return
        try:
            data, sent = upload_result(self.local, self.remote, result)
            self.remote.update_action_result(action_digest(action.key_bytes), data)
            self._count(uploads=1, bytes_up=sent)
            if result.duration > 0:
                self.remote.update_action_result(duration_digest(self.scope, action.node),
                                                 encode_duration(result.duration))
        except StoreError as exc:   # a damaged local blob: this result is not shared
            self._warn_once("damaged", f"warning: {exc}; {action.node}'s result was not uploaded")
        except RemoteError as exc:
            self._down(exc)
        except Exception as exc:  # never let an upload problem fail the build
            self._down(RemoteError(f"{type(exc).__name__}: {exc}"))

    def durations(self, nodes: list[str]) -> dict[str, float]:
        """How long each of `nodes` last ran anywhere that shares this remote (the named
        records `upload` keeps), for those that have one. Read in parallel; a remote that
        fails here is left alone for the build, as everywhere."""
        if not nodes or not self.healthy:
            return {}

        def one(node: str) -> float | None:
            data = self.remote.get_action_result(duration_digest(self.scope, node))
            return decode_duration(data) if data else None

        found = {}
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.jobs), thread_name_prefix="bg-duration")
        try:
            futures = {pool.submit(one, node): node for node in nodes}
            # Only a hint for the order: a slow remote gets a few seconds, not its timeout.
            finished, _ = wait(futures, timeout=min(self.options.timeout, 5.0))
            for future in finished:
                seconds = future.result()
                if seconds is not None:
                    found[futures[future]] = seconds
        except RemoteError as exc:
            self._down(exc)
        except Exception as exc:  # a remote answering nonsense must not break the build
            self._down(RemoteError(f"{type(exc).__name__}: {exc}"))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return found

    def wait(self) -> None:
        """Wait for queued uploads (each bounded by the remote's timeouts)."""
        wait(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        """Stop using the remote now: requests in flight end, queued uploads are dropped."""
        self.healthy = False
        for f in self._pending:
            f.cancel()
        self.remote.abort()

    def close(self) -> None:
        if self.healthy:
            self.wait()
        self._uploads.shutdown(wait=True, cancel_futures=True)
        self.remote.close()


def upload_result(local: LocalStore, remote, result: ActionResult) -> tuple[bytes, int]:
    """Upload the outputs and logs of `result` that `remote` lacks (FindMissingBlobs first).

    Every blob that is sent is re-hashed against its local name first (StoreError if it
    was damaged: nothing is uploaded for this result), so the remote never receives bytes
    under a name they do not have. Returns the REAPI ActionResult bytes that describe them
    and the number of bytes sent; storing those bytes (UpdateActionResult, or an Execute
    response) is the caller's part.
    """
    files, blobs, checked = [], {}, set()

    def remote_digest(digest: str, exe: bool, size: int) -> RDigest:
        sha = local.sha256_for(digest)
        if sha is None:   # read now, checked against the name; not read again to upload it
            sha = local.verified_sha256(digest, exe)
            checked.add(digest)
        blobs[RDigest(sha, size)] = (digest, exe)
        return RDigest(sha, size)

    for f in result.files:
        files.append((f.path, remote_digest(f.digest, f.executable, f.size), f.executable))
    logs = [remote_digest(d, False, os.path.getsize(local.blob_path(d))) if d else None
            for d in (result.stdout, result.stderr)]
    missing = remote.find_missing(sorted(blobs, key=lambda d: d.hash))
    pairs = []
    for d in missing:
        digest, exe = blobs[d]
        if digest not in checked and local.verified_sha256(digest, exe) != d.hash:
            raise StoreError(f"blob {digest}: its SHA-256 changed since it was recorded; not uploaded")
        pairs.append((d, local.blob_path(digest, exe)))
    if hasattr(remote, "upload_blobs"):
        remote.upload_blobs(pairs)
    else:
        for d, path in pairs:
            remote.upload_blob(d, path)
    data = encode_result(files, [(s.path, s.target) for s in result.symlinks], logs[0], logs[1], result.exit_code,
                         result.duration)
    return data, sum(d.size for d in missing)
