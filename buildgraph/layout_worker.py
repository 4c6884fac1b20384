"""Laying out restored outputs in two processes beside the build's own.

A restore after `clean` is two kinds of work of about the same size: deciding what each
node needs (keys, action-cache reads: Python, in the build's process) and laying its
outputs out in out/ (a directory and a copy per file: system calls). The second goes to
worker processes, so the work shares the machine's cores: at 10,000 nodes on this
project's 2-core machine (README, "Benchmarks") the build's process had spent half of a
4.2 s restore in mkdir, open and copy_file_range. A thread cannot do it: every system call
would wait for the build's busy thread to let go of the GIL (tried: 7.4 s).

The laying out is itself a pipeline of two stages, `dirs | files`: the first makes each
out/<node>, the second fills it. Every mkdir in out/ holds out/'s lock, and on ext4 one
made with out/'s hint scans the block groups for a place to spread it to
(fsutil.make_top_dir; SpreadRuns): on this machine's disk that was most of a restore's
laying out, so one process does only that while the other copies the files in, each
under its own node's lock.

The workers only make directories that are not there yet (out/<node> after `clean`, or
for a new node); a node whose directory exists is answered EXISTS and replaced by the
build itself, atomically (Engine.materialize). The build records a node as laid out only
once the last stage has answered with its listing, so a killed build or worker leaves at
worst a directory the next build replaces.

Protocol, on each stage's stdin and stdout: length-prefixed marshal batches.
  build -> dirs     [(out, name, entries), ...]  entries as fsutil.put_entries takes them
  dirs -> files     [(out, name, entries, None (made) | EXISTS | error message), ...]
  files -> build    [(name, listing | EXISTS | error message), ...], one batch per batch
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
from buildgraph.fsutil import (TOPDIR, force_remove, inode_flags, make_top_dir, os_error_text, put_entries,
                               set_inode_flags)

EXISTS = 0   # the answer for a directory that was already there
BATCH = 64   # nodes per message: one write and one wake-up of the workers each
SPREAD_RUN = 4   # node directories the first stage makes in a run (SpreadRuns)
_HEADER = struct.Struct("<I")


def make_new_dir(top: str, name: str) -> bool:
    """Make the directory `top`/`name`; False if it was there."""
    directory = f"{top}/{name}"
    try:
        os.mkdir(directory)
    except FileExistsError:
        return False
    except FileNotFoundError:   # the first node, or one named a/b
        make_top_dir(top)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            os.mkdir(directory)
        except FileExistsError:
            return False
    return True


def fill_new_dir(directory: str, entries) -> tuple:
    """Put `entries` in the new, empty `directory`; the listing (path, stat signature) of
    what was laid out. On an error the directory is removed."""
    try:
        put_entries(directory, entries)
        return tuple((e[1], stat_signature(os.lstat(f"{directory}/{e[1]}"))) for e in entries)
    except OSError:
        force_remove(directory)
        raise


def lay_out_new(top: str, name: str, entries) -> tuple | None:
    """Make the directory `top`/`name` (None if it exists) holding `entries`; its listing."""
    return fill_new_dir(f"{top}/{name}", entries) if make_new_dir(top, name) else None


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


class SpreadRuns:
    """How the first stage makes the node directories of out/: in runs of SPREAD_RUN, the
    first of a run with out/'s hint on (fsutil.make_top_dir), the rest with it off. ext4
    places a directory made under the hint by scanning every block group for the best one,
    and one made without it in the group of its parent's last new one: the run's first.
    The scan is what the hint costs: on this VM's disk (2,000 block groups, without
    flex_bg) ~100 us a directory, 63% of the first stage's samples in a 10,000-node
    restore. The run is short because the hint is there for a disk without a journal
    (make_top_dir): a new inode scans past each one its group freed in the last minute,
    and a group takes a run of directories and their files at a time, so the longer the
    run the longer that scan. CPU samples of the three processes in such a restore, 3
    rounds: 3768-4868 with every directory spread, 2483-3295 in runs of 4, 2663-3524 of 8,
    3636-4413 of 16, 3957-4872 of 32. The hint is on again at the end of each batch, for
    the directories a build makes itself; a stage killed in between leaves it off until the
    next one's batch. Nothing is changed where the filesystem has no inode flags, or lets
    this process change none."""

    def __init__(self):
        self._top: str | None = None
        self._fd = -1
        self._flags: int | None = None   # out/'s other flags; None: the hint is not ours to set
        self._on = True
        self._made = 0

    def before_mkdir(self, top: str) -> None:
        """Set the hint for the next directory made in `top`."""
        if top != self._top:
            self.close()
            try:
                self._fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:   # not there yet: the first node makes it
                return
            self._top = top
            flags = inode_flags(self._fd)
            if flags is not None:
                self._flags, self._on = flags & ~TOPDIR, bool(flags & TOPDIR)
        if self._flags is not None:
            self._set(self._made % SPREAD_RUN == 0)
            self._made += 1

    def settle(self) -> None:
        """The hint on again, as make_top_dir left it."""
        if self._flags is not None:
            self._set(True)

    def close(self) -> None:
        self.settle()
        if self._fd >= 0:
            os.close(self._fd)
        self._top, self._fd, self._flags = None, -1, None

    def _set(self, on: bool) -> None:
        if on != self._on:
            try:
                set_inode_flags(self._fd, self._flags | (TOPDIR if on else 0))
            except OSError:   # not this process's to change: each directory made as it comes
                self._flags = None
                return
            self._on = on


def make_dirs(batch, runs: SpreadRuns) -> list:
    """The first stage's work on a batch: each (top, name, entries) with None (made), EXISTS
    or an error message."""
    done = []
    for top, name, entries in batch:
        runs.before_mkdir(top)
        try:
            made = None if make_new_dir(top, name) else EXISTS
        except OSError as exc:
            made = os_error_text(exc)
        done.append((top, name, entries, made))
    runs.settle()
    return done


def _filled(top: str, name: str, entries, made):
    if made is not None:   # EXISTS, or the first stage's error
        return name, made
    try:
        return name, fill_new_dir(f"{top}/{name}", entries)
    except OSError as exc:
        return name, os_error_text(exc)


def serve(stage: str, jobs: int = 0, answers: int = 1) -> None:
    """A stage of the pipeline (`dirs` or `files`): each batch read from `jobs` done and
    passed on to `answers`, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the build stops it (LayoutWorker.close)
    if stage == "dirs":
        runs = SpreadRuns()
        work = lambda batch: make_dirs(batch, runs)   # noqa: E731
    else:
        work = lambda batch: [_filled(*job) for job in batch]   # noqa: E731
    while (batch := _message(jobs)) is not None:
        data = _framed(work(batch))
        try:
            while data:
                data = data[os.write(answers, data):]
        except BrokenPipeError:   # the next stage is gone: the build sees it and lays out the rest itself
            return


class LayoutWorker:
    """The build's side: start the pipeline, submit nodes, collect answers. Writes never block
    on a full pipe while the last stage waits to write its answers: both are served by one
    select loop."""

    def __init__(self):
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        def stage(name: str, stdin) -> subprocess.Popen:
            code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                    f"from buildgraph.layout_worker import serve; serve({name!r})")
            # -I: none of the user's PYTHON* variables (nor PYTHONPATH: hence the path above)
            return subprocess.Popen([sys.executable, "-I", "-c", code], stdin=stdin, stdout=subprocess.PIPE,
                                    bufsize=0)
        self.procs: list[subprocess.Popen] = []
        try:
            self.procs.append(stage("dirs", subprocess.PIPE))
            self.procs.append(stage("files", self.procs[0].stdout))
        except OSError:
            self.close()
            raise
        self.procs[0].stdout.close()   # the second stage's alone: its end is the first's broken pipe
        self._jobs, self._answers = self.procs[0].stdin.fileno(), self.procs[1].stdout.fileno()
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
        """Every remaining answer, waiting for the workers."""
        return self._exchange(wait=True)

    def close(self) -> None:
        """Stop the workers (idle or not)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

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
            raise OSError("a layout worker ended unexpectedly (exit codes "
                          f"{', '.join(str(p.poll()) for p in self.procs)})")
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
