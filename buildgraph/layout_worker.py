"""Laying out restored outputs in a second process, beside the build's own.

A restore after `clean` is two kinds of work of about the same size: deciding what each
node needs (keys, action-cache reads: Python, in the build's process) and laying its
outputs out in out/ (a directory and a copy per file: system calls). The second goes to
this worker, so the two share the machine's cores: at 10,000 nodes on this project's
2-core machine (README, "Benchmarks") the build's process had spent half of a 4.2 s
restore in mkdir, open and copy_file_range. A thread cannot do it: every system call
would wait for the build's busy thread to let go of the GIL (tried: 7.4 s).

The worker only makes directories that are not there yet (out/<node> after `clean`, or
for a new node); a node whose directory exists is answered EXISTS and replaced by the
build itself, atomically (Engine.materialize). The build records a node as laid out only
once the worker has answered with its listing, so a killed build or worker leaves at
worst a directory the next build replaces.

Protocol, on the worker's stdin and stdout: length-prefixed marshal batches.
  build -> worker   [(out, name, entries), ...]  entries as fsutil.put_entries takes them
  worker -> build   [(name, listing | EXISTS | error message), ...], one batch per batch
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import struct
import subprocess
import sys

from buildgraph.digest import stat_signature
from buildgraph.fsutil import force_remove, make_top_dir, put_entries

EXISTS = 0   # the answer for a directory that was already there
BATCH = 64   # nodes per message: one write and one wake-up of the worker each
_HEADER = struct.Struct("<I")


def lay_out_new(top: str, name: str, entries) -> tuple | None:
    """Make the directory `top`/`name` (None if it exists) holding `entries`; the listing
    (path, stat signature) of what was laid out. On an error the directory is removed."""
    directory = f"{top}/{name}"
    try:
        os.mkdir(directory)
    except FileExistsError:
        return None
    except FileNotFoundError:   # the first node, or one named a/b
        make_top_dir(top)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            os.mkdir(directory)
        except FileExistsError:
            return None
    try:
        put_entries(directory, entries)
        return tuple((e[1], stat_signature(os.lstat(f"{directory}/{e[1]}"))) for e in entries)
    except OSError:
        force_remove(directory)
        raise


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _message(fd: int):
    header = _read_exactly(fd, _HEADER.size)
    body = header and _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if body is None else marshal.loads(body)


def _framed(value) -> bytes:
    body = marshal.dumps(value)
    return _HEADER.pack(len(body)) + body


def serve(jobs: int = 0, answers: int = 1) -> None:
    """The worker: lay out each batch read from `jobs`, answer on `answers`, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the build stops it (LayoutWorker.close)
    while (batch := _message(jobs)) is not None:
        replies = []
        for top, name, entries in batch:
            try:
                listing = lay_out_new(top, name, entries)
                replies.append((name, EXISTS if listing is None else listing))
            except OSError as exc:
                replies.append((name, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"))
        data = _framed(replies)
        while data:
            data = data[os.write(answers, data):]


class LayoutWorker:
    """The build's side: submit nodes, collect answers. Writes never block on a full pipe
    while the worker waits to write its answers: both are served by one select loop."""

    def __init__(self):
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                "from buildgraph.layout_worker import serve; serve()")
        # -I: none of the user's PYTHON* variables (nor PYTHONPATH: hence the path above)
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self._jobs, self._answers = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._jobs, False)
        os.set_blocking(self._answers, False)
        self._batch: list = []
        self._unsent = b""
        self._received = b""
        self._outstanding = 0   # batches sent and not yet answered

    def submit(self, top: str, name: str, entries: tuple) -> list:
        """Queue a node (its directory: `top`/`name`); the answers that have arrived meanwhile."""
        self._batch.append((top, name, entries))
        if len(self._batch) < BATCH:
            return []
        return self._exchange(wait=False)

    def finish(self) -> list:
        """Every remaining answer, waiting for the worker."""
        return self._exchange(wait=True)

    def close(self) -> None:
        """Stop the worker (idle or not)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()

    def _exchange(self, wait: bool) -> list:
        if self._batch:
            self._unsent += _framed(self._batch)
            self._outstanding += 1
            self._batch = []
        answers: list = []
        while self._unsent or (wait and self._outstanding):
            writable = [self._jobs] if self._unsent else []
            ready_r, ready_w, _ = select.select([self._answers], writable, [])
            if ready_w:
                self._unsent = self._unsent[os.write(self._jobs, self._unsent):]
            if ready_r:
                answers += self._read_answers()
            if not wait and not self._unsent:
                break
        if not wait:
            answers += self._read_answers()
        return answers

    def _read_answers(self) -> list:
        try:
            chunk = os.read(self._answers, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            raise OSError(f"the layout worker ended unexpectedly (exit code {self.proc.poll()})")
        self._received += chunk
        answers = []
        while len(self._received) >= _HEADER.size:
            size = _HEADER.unpack_from(self._received)[0]
            if len(self._received) < _HEADER.size + size:
                break
            answers += marshal.loads(self._received[_HEADER.size:_HEADER.size + size])
            self._received = self._received[_HEADER.size + size:]
            self._outstanding -= 1
        return answers
