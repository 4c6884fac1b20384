"""Local digests: xxh3-128 of files, trees and canonical encodings.

xxh3-128 is the fast local digest (file change detection, action keys). Remote
protocols speak SHA-256; that is computed at the remote boundary, not here.

File digests are cached by (dev, inode, size, mtime_ns, ctime_ns) in a
`StatCache`, so a no-op build stats files but hashes none. The cache is a plain
dict persisted in the workspace state (state.py).
"""

from __future__ import annotations

import json
import os
import time

import xxhash

_CHUNK = 1 << 20


def bytes_digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_digest(path: str | os.PathLike) -> str:
    """xxh3-128 hex digest of a file's content."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: str | os.PathLike) -> tuple[str, str]:
    """(xxh3-128, SHA-256) of a file, read once: a local name checked as its remote one is made."""
    import hashlib

    xxh, sha = xxhash.xxh3_128(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            xxh.update(chunk)
            sha.update(chunk)
    return xxh.hexdigest(), sha.hexdigest()


def copy_hashed(src: str, dest: str, mode: int) -> str:
    """Copy `src` to a new file `dest` of exactly `mode`, returning the xxh3-128 of the bytes copied:
    what lands at `dest` is exactly what was hashed."""
    h = xxhash.xxh3_128()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)   # exactly `mode`, not what the umask leaves of it
        with open(src, "rb") as fin:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                os.write(fd, chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def canonical(obj) -> bytes:
    """The canonical encoding of a JSON-able value.

    MUST: keys sorted, no insignificant whitespace, UTF-8, lists in the order
    given (callers sort where order is not meaningful). Two equal values encode to
    identical bytes on every machine.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def value_digest(obj) -> str:
    return bytes_digest(canonical(obj))


def stat_signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StatCache:
    """Maps a path to its digest, trusted while its stat signature is unchanged."""

    def __init__(self, entries: dict | None = None):
        self.entries: dict[str, tuple] = entries if entries is not None else {}
        self.hashed = 0  # files actually read this run (a no-op build keeps this at 0)
        self.dirty = False

    def digest(self, path: str, st: os.stat_result | None = None) -> str:
        """Digest of `path`; raises OSError if it cannot be read."""
        if st is None:
            st = os.stat(path)
        sig = stat_signature(st)
        hit = self.entries.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        digest = file_digest(path)
        self.hashed += 1
        if not is_racy(st):
            self.entries[path] = (sig, digest)
            self.dirty = True
        return digest


def is_racy(st: os.stat_result, now_ns: int | None = None) -> bool:
    """Whether something read now could change again without its stat signature moving.

    A file (or directory) modified within the same clock tick as we read it could change
    without its mtime or ctime moving ("racy" entries, as git calls them): nothing read
    that young is remembered. The tick is the kernel's coarse clock (<= 10 ms) on
    filesystems with sub-second timestamps, and up to 2 s on those that store whole seconds.
    """
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    racy_ns = 2_000_000_000 if newest % 1_000_000_000 == 0 else 100_000_000
    return (now_ns if now_ns is not None else time.time_ns()) - newest <= racy_ns


def tree_digest(entries) -> str:
    """Digest of a file tree given as (relpath, digest, executable) triples.

    MUST: triples sorted by relpath; encoded as a compact JSON array of arrays.
    """
    return bytes_digest(json.dumps(sorted(entries), separators=(",", ":"), ensure_ascii=False).encode())


def sha256_file(path) -> str:
    """SHA-256 of a file, hex: the digest of the remote protocols, pins and artifact records."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
