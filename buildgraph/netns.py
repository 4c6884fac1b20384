"""Empty network namespaces, made once per build and each lent to one sandbox at a time.

bwrap's --unshare-net makes a network namespace for every action and the kernel tears it
down after: 1.7 ms of CPU per action here, a third of what starting bwrap costs. Where this
process may make network namespaces itself (root: CAP_SYS_ADMIN), it makes them once, each
with its loopback up as bwrap's are, and starts each bwrap inside a free one: the action is
still off the network and alone in its namespace (no other running action shares it; the
one before it has ended with its pid namespace, and without capabilities none could change
the namespace). A thread enters a namespace only around starting a process (setns affects
the calling thread alone) and goes back to the host's before anything else runs on it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class NetnsPool:
    """Namespaces as open fds: free ones in `_free`, made when none is (at most one per
    sandbox alive at once: the running actions and their spares)."""

    def __init__(self, host: int):
        self._host = host   # this thread's namespace when made: every thread's, the host's
        self._free: list[int] = []
        self._lock = threading.Lock()

    @classmethod
    def make(cls) -> NetnsPool | None:
        """A pool with one namespace in it, or None where this process may not make one."""
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        pool = cls(host)
        try:
            pool._free.append(pool._new())
        except OSError:
            pool.close()
            return None
        return pool

    def _new(self) -> int:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # lo up, as bwrap has it
                request = struct.pack("16sH", b"lo", 0)
                flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
                fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(self._host)

    def take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._new()

    def give(self, fd: int) -> None:
        """`fd`'s namespace back, once the sandbox in it has ended."""
        with self._lock:
            self._free.append(fd)

    @contextmanager
    def entered(self, fd: int):
        """This thread in `fd`'s namespace: for starting the process that lives in it."""
        _setns(fd)
        try:
            yield
        finally:
            _setns(self._host)

    def close(self) -> None:
        with self._lock:
            fds, self._free = self._free, []
        for fd in fds + [self._host]:
            os.close(fd)
