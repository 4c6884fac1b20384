"""A GNU make jobserver shared by every running action.

buildgraph is the jobserver's owner: a named fifo holds one token per slot (-j N).
The scheduler takes a node's `weight` in tokens before starting it and puts them
back when it ends; a make, cmake --build or ninja inside the action is a client
that takes further tokens for its own parallel jobs. So all nested builds share
the N slots instead of each running N compilers.

Two client forms, both backed by the same fifo:
  pipe  MAKEFLAGS=" -jN --jobserver-auth=R,W" with inherited fds (GNU make >= 4.2;
        Debian 12's make 4.3 reads only this form);
  fifo  MAKEFLAGS=" -jN --jobserver-auth=fifo:PATH" (GNU make >= 4.4, ninja >= 1.13).
Children get their own blocking descriptors; ours is non-blocking so the
scheduler can poll for a token while it waits for actions to finish.

The fifo lives in the store's tmp/ directory, not in /tmp: a build killed before
`close` leaves it where the store's leftover sweep removes it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile


class Jobserver:
    def __init__(self, slots: int, directory: str):
        self.slots = slots
        self._dir = tempfile.mkdtemp(prefix="jobserver-", dir=directory)
        self.fifo = os.path.join(self._dir, "fifo")
        os.mkfifo(self.fifo, 0o600)
        self._r = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._w = os.open(self.fifo, os.O_WRONLY)
        child_r = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(child_r, fcntl.F_SETFL, fcntl.fcntl(child_r, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        self.child_fds = (child_r, os.open(self.fifo, os.O_WRONLY))
        for fd in self.child_fds:
            os.set_inheritable(fd, True)
        os.write(self._w, b"+" * slots)

    def try_acquire(self, count: int) -> bytes:
        """Take up to `count` tokens without blocking; returns the tokens taken."""
        try:
            return os.read(self._r, count)
        except BlockingIOError:
            return b""

    def release(self, tokens: bytes) -> None:
        """Return tokens exactly as read (make writes back the byte it read)."""
        if tokens:
            os.write(self._w, tokens)

    def makeflags(self, form: str, fifo_path: str | None = None) -> str:
        if form == "fifo":
            return f" -j{self.slots} --jobserver-auth=fifo:{fifo_path or self.fifo}"
        r, w = self.child_fds
        return f" -j{self.slots} --jobserver-auth={r},{w}"

    def close(self) -> None:
        for fd in (self._r, self._w, *self.child_fds):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.fifo)
            os.rmdir(self._dir)
        except OSError:
            pass
