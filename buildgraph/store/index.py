"""The local store's index: one sqlite file, <cache>/index.sqlite, beside cas/.

  results   key -> (result JSON, last-used time): the action cache. Write-once by
            convention (LocalStore.put_result), so `add` is the usual write.
  counters  name -> integer: "cas-bytes", the approximate size of cas/
  sha256    xxh3 digest <-> SHA-256 of blobs that crossed the remote boundary, so a blob
            is hashed with SHA-256 at most once

WAL with synchronous=NORMAL: a crash or power cut may lose the last commits, never
corrupt the file or reorder them (the store makes blobs durable before it commits the
entries naming them). Builds sharing the cache write to it concurrently; a writer waits
up to a minute for another's transaction. One connection serves every thread of a
process, one statement or transaction at a time.

Our own schema rather than diskcache's (which held these in ac/ and sha256/ before): a
lookup is one indexed SELECT of two columns, 5.0 µs against diskcache's 9.1-9.8 µs (its
values are pickled, its rows carry expiry and tag columns); opening takes 0.3 ms against
1.4-2.3 ms, and importing diskcache cost every build ~5 ms more than sqlite3 alone
(10,000 entries of a real cache; README, "Benchmarks").
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from ..sqlite_wal import open_wal

SCHEMA_VERSION = 1   # PRAGMA user_version: 0 is a new file
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, result BLOB NOT NULL, used REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sha256 (xxh3 TEXT PRIMARY KEY, sha256 TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sha256_by_sha256 ON sha256 (sha256)",
)


class StoreIndex:
    def __init__(self, path: str):
        db = open_wal(path, timeout=60, check_same_thread=False)
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with _transaction(db):   # IF NOT EXISTS: another process may have made it first
                    for statement in SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self._db = db
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self):
        """Everything done inside is one transaction (and no other thread's statement)."""
        with self._lock, _transaction(self._db):
            yield

    def _one(self, sql: str, args: tuple):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _do(self, sql: str, args: tuple) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # ------------------------------------------------------------ results

    def get(self, key: str) -> tuple[bytes, float] | None:
        """(result JSON, last-used time) of `key`, or None."""
        return self._one("SELECT result, used FROM results WHERE key = ?", (key,))

    def add(self, key: str, result: bytes, used: float) -> bool:
        """Record `key` unless it is recorded already; whether it was added."""
        return self._do("INSERT OR IGNORE INTO results VALUES (?, ?, ?)", (key, result, used)) == 1

    def set(self, key: str, result: bytes, used: float) -> None:
        self._do("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", (key, result, used))

    def touch(self, key: str, used: float) -> None:
        """Set the last-used time of `key`, if it is still recorded."""
        self._do("UPDATE results SET used = ? WHERE key = ?", (used, key))

    def delete(self, key: str) -> None:
        self._do("DELETE FROM results WHERE key = ?", (key,))

    def rows(self) -> list[tuple[str, bytes, float]]:
        """(key, result JSON, last-used time) of every entry, as they are now (gc, verify)."""
        with self._lock:
            return self._db.execute("SELECT key, result, used FROM results").fetchall()

    def __len__(self) -> int:
        return self._one("SELECT count(*) FROM results", ())[0]

    # ------------------------------------------------------------ counters

    def counter(self, name: str) -> int:
        row = self._one("SELECT value FROM counters WHERE name = ?", (name,))
        return row[0] if row else 0

    def add_to_counter(self, name: str, amount: int) -> None:
        self._do("INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
                 (name, amount, amount))

    def set_counter(self, name: str, value: int) -> None:
        self._do("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, value))

    # ------------------------------------------------------------ SHA-256

    def remember_sha256(self, xxh3: str, sha256: str) -> None:
        self._do("INSERT OR REPLACE INTO sha256 VALUES (?, ?)", (xxh3, sha256))

    def sha256_for(self, xxh3: str) -> str | None:
        row = self._one("SELECT sha256 FROM sha256 WHERE xxh3 = ?", (xxh3,))
        return row[0] if row else None

    def xxh3_for(self, sha256: str) -> str | None:
        row = self._one("SELECT xxh3 FROM sha256 WHERE sha256 = ?", (sha256,))
        return row[0] if row else None

    def forget_sha256(self, xxh3: str) -> None:
        self._do("DELETE FROM sha256 WHERE xxh3 = ?", (xxh3,))


@contextmanager
def _transaction(db):
    db.execute("BEGIN IMMEDIATE")   # the write lock now: no deadlock upgrading a read later
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
