"""What a build shows and writes: progress, failures, the event log and a trace.

Reporters receive begin/started/finished/end. On a terminal the progress is a
rich live display; otherwise one plain line per node that ran, was restored or
failed (up-to-date nodes are counted, not listed). `--log-json` writes one JSON
object per node; `--profile` writes a Chrome trace (chrome://tracing, Perfetto).
"""

from __future__ import annotations

import json
import re
import sys
import time

from buildgraph.status import Status

_LABEL = {Status.RAN: "ran", Status.CACHED: "cached", Status.UP_TO_DATE: "up-to-date",
          Status.FAILED: "FAILED", Status.SKIPPED: "skipped", Status.CANCELLED: "cancelled"}


def _detail(o) -> str:
    """What follows a finished node's name: how long it ran, that it came from the remote,
    or which failure it was skipped after."""
    if o.status is Status.RAN:
        return f" ({o.duration:.2f}s)"
    if o.remote:
        return " (remote)"
    return f" ({o.error})" if o.status is Status.SKIPPED and o.error else ""


class PlainReporter:
    # How long a restored node's line may wait in the buffer, so that a restore of 10,000
    # nodes writes a few times a second, not 10,000 times (0.2 s of writes). Every other
    # line flushes, and so does `idle`: nothing waits while the build waits for an action.
    FLUSH_EVERY = 0.25

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.total = self.count = 0
        self.flushed = time.monotonic()

    def begin(self, total: int, jobs: int) -> None:
        self.total, self.count = total, 0
        self.flushed = time.monotonic()

    def started(self, name: str) -> None:
        pass

    def idle(self) -> None:
        """The build waits for running actions: what was printed is shown now."""
        self.stream.flush()

    def finished(self, o) -> None:
        self.count += 1
        if o.status is Status.UP_TO_DATE:
            return
        print(f"[{self.count}/{self.total}] {_LABEL[o.status]} {o.name}{_detail(o)}", file=self.stream)
        if o.status is Status.FAILED:
            for line in failure_lines(o):
                print(line, file=self.stream)
        now = time.monotonic()
        if o.status is not Status.CACHED or now - self.flushed > self.FLUSH_EVERY:
            self.stream.flush()
            self.flushed = now

    def say(self, lines: list[str]) -> None:
        print("\n".join(lines), file=self.stream, flush=True)

    def end(self) -> None:
        self.stream.flush()


class RichReporter(PlainReporter):
    """A live progress bar listing the running nodes; finished ones print above it. rich is
    imported when the first node starts or is restored: a build that finds everything up to
    date never loads it."""

    def begin(self, total: int, jobs: int) -> None:
        super().begin(total, jobs)
        self.progress = None
        self.running: dict[str, float] = {}

    def _live(self):
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(file=self.stream)
            self.progress = Progress(TextColumn("[bold]building"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.description}"),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task("", total=self.total, completed=self.count)
            self.progress.start()
        return self.progress

    def started(self, name: str) -> None:
        self._live()
        self.running[name] = time.monotonic()
        self._describe()

    def _describe(self) -> None:
        names = sorted(self.running, key=self.running.get)
        self.progress.update(self.task, description=", ".join(names[:4]) + (" …" if len(names) > 4 else ""))

    def finished(self, o) -> None:
        self.count += 1
        if o.status is Status.UP_TO_DATE and self.progress is None:
            return
        self._live()
        self.running.pop(o.name, None)
        self.progress.update(self.task, completed=self.count)
        self._describe()
        if o.status is Status.UP_TO_DATE:
            return
        style = {Status.RAN: "green", Status.CACHED: "cyan", Status.FAILED: "bold red",
                 Status.SKIPPED: "yellow", Status.CANCELLED: "yellow"}[o.status]
        self.console.print(f"[{style}]{_LABEL[o.status]:>9}[/] {o.name}{_detail(o)}", highlight=False)
        if o.status is Status.FAILED:
            for line in failure_lines(o):
                self.console.print(line, markup=False, highlight=False)

    def say(self, lines: list[str]) -> None:
        self._live()
        for line in lines:
            self.console.print(line, markup=False, highlight=False)

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()


_LOCATED = re.compile(r"[^\s:]+:\d+: ")


def failure_lines(o) -> list[str]:
    """What a failure shows: the error, the command that failed, and the log's tail."""
    # An error that names its FILE:LINE starts the line with it, where editors look.
    lines = [f"  {o.error}" if _LOCATED.match(o.error or "") else f"  error: {o.error}"]
    if o.command:
        lines.append(f"  command: {o.command}")
    lines.extend(f"  | {line}" for line in o.log.rstrip().splitlines()[-40:])
    return lines


def subcommand_lines(name: str, action, mode: str) -> list[str]:
    """What -s prints as an action starts (Bazel's SUBCOMMAND): where it runs, its environment
    and its commands, as `sh -e` in $WORK runs them."""
    import shlex

    lines = [f"SUBCOMMAND: {name} [key {action.key[:12]}, sandbox {mode}]"]
    if action.commands[:1] and action.commands[0].startswith("builtin:"):
        return lines + [f"  ({action.commands[0]}: runs inside buildgraph; its spec is in the key)"]
    lines.append("  env -i " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(action.env)) + " sh -e")
    lines.extend(f"  $ {cmd}" for cmd in action.commands)
    return lines


def make_reporter(stream=None):
    stream = stream or sys.stdout
    if stream.isatty():
        return RichReporter(stream)
    return PlainReporter(stream)


def write_event_log(path: str, outcomes) -> None:
    """One JSON object per line and node: name, key, status, cached, remote, duration, error."""
    with open(path, "w") as f:
        for o in outcomes:
            f.write(json.dumps({"node": o.name, "key": o.key, "status": o.status.value,
                                "cached": o.status in (Status.CACHED, Status.UP_TO_DATE), "remote": o.remote,
                                "duration": round(o.duration, 6), "error": o.error}) + "\n")


def write_chrome_trace(path: str, outcomes) -> None:
    """A Chrome trace (chrome://tracing, Perfetto): a span for the whole build on the "build"
    track, which also marks each node restored or found up to date (an instant event); each
    action that ran or failed on the track of its -j slot, with its phases inside it (stage,
    run, collect, store). Times are seconds since the build's scheduling began."""
    outcomes = list(outcomes)
    ran = [o for o in outcomes if o.status in (Status.RAN, Status.FAILED)]
    end = max([0.0] + [o.start + o.duration for o in outcomes])
    us = 1e6
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "buildgraph build"}},
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "build"}},
              {"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": 0, "args": {"sort_index": -1}}]
    events += [{"ph": "M", "name": "thread_name", "pid": 1, "tid": lane + 1, "args": {"name": f"slot {lane + 1}"}}
               for lane in sorted({o.lane for o in ran})]
    events.append({"name": f"build ({len(outcomes)} nodes)", "cat": "build", "ph": "X", "pid": 1, "tid": 0,
                   "ts": 0, "dur": max(1, int(end * us)),
                   "args": {s.value: sum(1 for o in outcomes if o.status is s) for s in Status}})
    for o in outcomes:
        if o.status in (Status.RAN, Status.FAILED):
            events.append({"name": o.name, "cat": o.status.value, "ph": "X", "pid": 1, "tid": o.lane + 1,
                           "ts": int(o.start * us), "dur": max(1, int(o.duration * us)),
                           "args": {"key": o.key, **({"error": o.error} if o.error else {})}})
            events += [{"name": phase, "cat": "phase", "ph": "X", "pid": 1, "tid": o.lane + 1,
                        "ts": int(began * us), "dur": max(1, int(seconds * us))} for phase, began, seconds in o.phases]
        else:
            events.append({"name": o.name, "cat": o.status.value, "ph": "i", "s": "t", "pid": 1, "tid": 0,
                           "ts": int(o.start * us), "args": {"key": o.key, "status": o.status.value,
                                                             **({"remote": True} if o.remote else {})}})
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
