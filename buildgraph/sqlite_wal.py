"""Opening a sqlite file that several processes share, in WAL mode.

sqlite waits through its busy timeout for most locks, but not for the switch to WAL:
while another connection holds a write transaction on a file still in rollback mode (a
build creating the cache's index while a second build opens it), `PRAGMA
journal_mode=WAL` answers "database is locked" at once. So the switch is retried here
until the same timeout has passed. On a file already in WAL mode it takes no lock.
"""

from __future__ import annotations

import sqlite3
import time

RETRY_EVERY = 0.01   # seconds; the other side holds its transaction for milliseconds


def open_wal(path, timeout: float, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to `path` in autocommit mode, WAL journal, synchronous=NORMAL (a crash
    may lose the last commits, never corrupt the file); waits up to `timeout` seconds for
    another process's lock."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")   # kept in the file: a no-op after the first
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_EVERY)
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db
