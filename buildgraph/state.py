"""Per-workspace state under <workspace>/.buildgraph/: an accelerator, never the truth.

state.marshal and config.pickle hold what makes a no-op build cheap and what `why`
compares against:
  stat cache      path -> ((dev, ino, size, mtime_ns, ctime_ns), digest)
  resolutions     toolchain and glob results, each with the stat signature it
                  was computed under
  config          (config.pickle) the parsed workspace (its targets unpickled one by
                  one, as read: packedmap.py), the configured graph and the
                  engine's TargetIndex, keyed by the stat signatures of every
                  workspace file (no YAML parsing on a no-op); written only when
                  it changed, kept by `clean`
  nodes           node -> NodeRecord of its last successful build (key, output
                  digest, duration, what the key was computed from); kept by `clean`
  materialized    node -> (output digest, ((relpath, stat signature), ...))
                  of out/<node>: what was written there, to notice any edit
Each is written atomically (temp file + rename) at the end of a build that changed
any of it (a no-op build writes nothing); last-build.json beside it holds the
counters of the last build, for `cache stats`; inputs.sqlite holds each node's
input digests by kind (marshal), read only by `plan`, `why` and manifests, and
written in one statement per build for the nodes recorded (a 10,000-node restore
writes them in ~0.1 s, where a diskcache entry each took 0.85 s). If the state is lost
or unreadable the next build starts from an empty state and the cache answers instead.
A build holds .buildgraph/lock exclusively, so two builds of one workspace take turns
instead of racing on out/.
"""

from __future__ import annotations

import json
import marshal
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import __version__, resident
from buildgraph.fsutil import lock_exclusive, write_atomic
from buildgraph.noop import RECORD as NOOP_RECORD

STATE_VERSION = (7, __version__)
STATE = "state.marshal"   # everything in State but its config
CONFIG = "config.pickle"   # the parsed workspace, its graph and TargetIndex (State.config)
INPUTS = "inputs.sqlite"   # node -> its last input digests (marshal)
SPARE_HINT = "spare-hint.pickle"   # the mount set of the last build's first sandbox (Sandbox.prime)
# What the build server keeps decoded between builds (resident.py), each as it is decoded.
RESIDENT = ((NOOP_RECORD, marshal.loads), (STATE, marshal.loads), (CONFIG, pickle.loads))


@dataclass
class NodeRecord:
    key: str
    output_digest: str
    duration: float
    # What the key was computed from, short of computing it (Engine.unchanged): the build's
    # global token, the sources, a path source's identity, the dependencies' outputs.
    inputs: tuple | None = None


@dataclass
class State:
    stat_cache: dict = field(default_factory=dict)
    resolutions: dict = field(default_factory=dict)
    config: tuple | None = None
    nodes: dict = field(default_factory=dict)
    materialized: dict = field(default_factory=dict)


class StateDir:
    """The .buildgraph directory of one workspace."""

    def __init__(self, root: Path):
        self.dir = root / ".buildgraph"
        self.out = self.dir / "out"
        self.trash = self.dir / "trash"   # replaced outputs being removed (Engine.materialize)
        self.logs = self.dir / "logs"
        self._lock_fd: int | None = None
        self._inputs_db = None

    def lock(self, wait_message=None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_exclusive(self.dir / "lock", wait_message)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> State:
        state = self._read_state()
        # The parsed workspace is a file of its own: rewritten only when the workspace changed,
        # and kept by `clean` (it is checked against the files it was parsed from before use).
        config = self._load(CONFIG, pickle.loads)
        if isinstance(config, tuple) and len(config) == 5 and config[0] == STATE_VERSION:
            state.config = config[1:]
        return state

    def _read_state(self) -> State:
        """The state as saved (without its config), or an empty one."""
        saved = self._load(STATE, marshal.loads)
        try:
            version, stat_cache, resolutions, nodes, materialized = saved
            if version == STATE_VERSION:
                return State(stat_cache=stat_cache, resolutions=resolutions, materialized=materialized,
                             nodes={name: NodeRecord(*record) for name, record in nodes.items()})
        except (TypeError, ValueError, AttributeError):   # not what save wrote (or nothing)
            pass
        return State()

    def _load(self, name: str, decode):
        try:
            return resident.read(str(self.dir), name, decode)[0]   # with the collector off: Session loads it
        except FileNotFoundError:
            return None
        except Exception as exc:  # any unreadable state is discarded: it is only a cache
            print(f"buildgraph: ignoring unreadable {name} ({exc.__class__.__name__})", file=sys.stderr)
            return None

    def save(self, state: State, config: bool = True) -> None:
        """Write the state; and the parsed workspace too if `config` (it changed)."""
        self.drop_noop()   # it described the state being replaced
        if config and state.config is not None:
            self._write(CONFIG, pickle.dumps((STATE_VERSION, *state.config), protocol=pickle.HIGHEST_PROTOCOL))
        # marshal, not pickle: every value is a plain tuple, dict or string, and at 10,000 nodes
        # marshal writes the state in a third of pickle's time and reads it in half.
        self._write(STATE, marshal.dumps((STATE_VERSION, state.stat_cache, state.resolutions,
                                          {name: (r.key, r.output_digest, r.duration, r.inputs)
                                           for name, r in state.nodes.items()}, state.materialized)))

    def save_noop(self, record: bytes) -> None:
        """The no-op record (noop.py) of the state as saved now."""
        self._write(NOOP_RECORD, record)

    def clear(self) -> None:
        """Remove the outputs, logs and build records (`clean`). What only caches facts stays,
        each checked before use: the parsed workspace (against the signatures of the files it
        was parsed from), the stat cache and resolutions (against each file's stat signature),
        and each node's key with what it was computed from and its input digests (used only
        while those inputs are equal: Engine.unchanged). So a build after `clean` restores
        from the cache without hashing a source or computing a key again."""
        import shutil
        import sqlite3

        kept = self._read_state()
        for d in (self.out, self.trash, self.logs, self.dir / "inputs"):   # inputs/: earlier versions' diskcache
            shutil.rmtree(d, ignore_errors=True)
        for name in (STATE, "last-build.json", NOOP_RECORD, "state.pickle"):   # state.pickle: earlier versions'
            (self.dir / name).unlink(missing_ok=True)
        try:
            db = self._inputs(create=False)
            if db is not None:   # autocommit (open_wal): the statement commits itself
                db.execute("DELETE FROM outcomes")
        except sqlite3.Error:   # unreadable: nothing in it is worth keeping
            self.close_inputs()
            for name in (INPUTS, INPUTS + "-wal", INPUTS + "-shm"):
                (self.dir / name).unlink(missing_ok=True)
        nodes = {name: r for name, r in kept.nodes.items() if r.inputs is not None}
        if kept.stat_cache or kept.resolutions or nodes:
            self.save(State(stat_cache=kept.stat_cache, resolutions=kept.resolutions, nodes=nodes), config=False)

    def drop_noop(self) -> None:
        try:
            os.unlink(self.dir / NOOP_RECORD)
        except FileNotFoundError:
            pass

    def _inputs(self, create: bool):
        if self._inputs_db is None and (create or (self.dir / INPUTS).exists()):
            from .sqlite_wal import open_wal

            self.dir.mkdir(parents=True, exist_ok=True)
            db = open_wal(self.dir / INPUTS, timeout=5)
            db.execute("CREATE TABLE IF NOT EXISTS inputs (node TEXT PRIMARY KEY, value BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS outcomes (node TEXT PRIMARY KEY, status TEXT NOT NULL)")
            self._inputs_db = db
        return self._inputs_db

    def read_inputs(self, name: str) -> dict | None:
        """The input digests of `name`'s last build, or None."""
        import sqlite3

        try:
            db = self._inputs(create=False)
            row = db.execute("SELECT value FROM inputs WHERE node = ?", (name,)).fetchone() if db else None
            return marshal.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError, EOFError, TypeError):   # only an explanation is lost
            return None

    def write_records(self, inputs: dict[str, dict | None], outcomes: dict[str, str]) -> None:
        """Record the input digests of the nodes recorded this build (None: as recorded already),
        and each node's outcome when it was not up to date (ran, cached, failed, skipped,
        cancelled): its last one."""
        db = self._inputs(create=True)
        with db:   # one transaction
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO inputs VALUES (?, ?)",
                           ((name, marshal.dumps(value)) for name, value in inputs.items() if value is not None))
            db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?, ?)", outcomes.items())

    def read_outcomes(self) -> dict[str, str]:
        """Node -> its last outcome other than up to date (what `graph` colours by)."""
        import sqlite3

        try:
            db = self._inputs(create=False)
            return dict(db.execute("SELECT node, status FROM outcomes").fetchall()) if db else {}
        except sqlite3.Error:
            return {}

    def close_inputs(self) -> None:
        if self._inputs_db is not None:
            self._inputs_db.close()
            self._inputs_db = None

    def close(self) -> None:
        self.close_inputs()
        self.unlock()

    def save_last_build(self, counters: dict) -> None:
        self._write("last-build.json", json.dumps(counters, indent=1).encode())

    def spare_hint(self):
        """The mount set the last build that ran an action under bwrap started its first
        sandbox for (Sandbox.first_mount_set), or None."""
        return self._load(SPARE_HINT, pickle.loads)

    def save_spare_hint(self, mount_set) -> None:
        self._write(SPARE_HINT, pickle.dumps(mount_set, protocol=pickle.HIGHEST_PROTOCOL))

    def last_build(self) -> dict:
        try:
            return json.loads((self.dir / "last-build.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / name, data)
