"""What became of a node in a build (engine.py decides; ui.py shows and logs)."""

from __future__ import annotations

import enum
from collections import namedtuple


class Status(enum.Enum):
    UP_TO_DATE = "up-to-date"   # same key as the last build, outputs in place
    CACHED = "cached"           # restored from a store
    RAN = "ran"
    FAILED = "failed"
    SKIPPED = "skipped"         # a dependency failed
    CANCELLED = "cancelled"


# A node the no-op check (noop.py) found up to date, with the fields the event log and the
# trace read of a scheduler.NodeOutcome.
UpToDate = namedtuple("UpToDate", "name key status remote duration error start lane phases",
                      defaults=(Status.UP_TO_DATE, False, 0.0, None, 0.0, 0, ()))
