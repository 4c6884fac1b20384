"""The resident server: a process that has imported what a build needs and forks a child
per `buildgraph build` (client.py says which server, and the protocol).

Each child builds in the client's directory, environment, umask and descriptors, and reads
the workspace's state and the cache from disk as a fresh process does, so the build and its
output are the same as without the server. What it saves is the start-up: at 1,000 nodes a
one-leaf change spends ~60-100 ms of its ~0.22 s importing. And the decoding of the state
files: each child says which workspace's state it read (a pipe), and while no request waits
the server decodes those files again where they changed; the next child takes a decoded
copy only while its file still has the stat signature it had then (resident.py).

Safe to kill at any time: a running build is the child's, not the server's, and the next
client that finds no server builds in its own process and starts another. One server per
context (the lock file beside the socket, which holds its pid); it exits once idle for
$BUILDGRAPH_SERVER_IDLE seconds (default 3 hours, as Bazel's), or within CHECK_SECONDS of
its context changing (buildgraph edited or upgraded, a package installed) or its socket
going away. `buildgraph shutdown` stops the user's servers.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import io
import marshal
import os
import select
import signal
import socket
import sys
import threading
import time

from buildgraph import client, mountns

CHECK_SECONDS = 2.0
IDLE_SECONDS = 3 * 3600
# What a build imports beyond buildgraph.cli, lazily or not (a first build, a leaf change, one that parses
# the workspace again, listed from sys.modules): imported here once instead of in every build.
PRELOAD = ("buildgraph.cli", "buildgraph.operations", "buildgraph.engine", "buildgraph.scheduler",
           "buildgraph.sandbox", "buildgraph.sandbox_etc", "buildgraph.workspace", "buildgraph.yamlsource",
           "buildgraph.noop", "buildgraph.state", "buildgraph.ui", "buildgraph.status", "buildgraph.explain",
           "buildgraph.hostpkgs", "buildgraph.toolchains", "buildgraph.toolstore", "buildgraph.compile_cache",
           "buildgraph.jobserver", "buildgraph.recipes", "buildgraph.sources", "buildgraph.rcfile",
           "buildgraph.store.local", "buildgraph.store.index", "buildgraph.packedmap", "buildgraph.globs",
           "buildgraph.compat", "buildgraph.netns", "buildgraph.sandboxer", "yaml", "base64", "hashlib",
           "sqlite3", "pickle", "ctypes", "subprocess", "queue", "random", "shlex", "tempfile", "bz2", "lzma")
_HIGH_FD = 100   # received descriptors wait above the numbers they are moved to


def main(args: list[str]) -> int:
    where, name = args[0], args[1]
    lock = os.open(f"{where}/{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:   # this context's server is up (or starting)
        return 0
    os.ftruncate(lock, 0)   # from now on: `shutdown` stops a server still importing too
    os.write(lock, f"{os.getpid()}\n".encode())
    if client.context() != name:   # not the context the client computed: serve nobody
        return 0
    for module in PRELOAD:
        importlib.import_module(module)
    importlib.import_module("buildgraph.cli").parser()   # built once: every command starts with it
    if client.context() != name:   # edited while it was imported
        return 0
    path = f"{where}/{name}.sock"
    try:
        os.unlink(path)   # a killed server's
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    mine = os.stat(path).st_ino
    idle = float(os.environ.get("BUILDGRAPH_SERVER_IDLE") or IDLE_SECONDS)
    gc.freeze()   # what is loaded now is never collected: children do not copy it to scan it
    listener.setblocking(False)
    reports, report_end = os.pipe()   # each child writes there the state it used (resident.py)
    os.set_blocking(reports, False)
    os.set_blocking(report_end, False)
    children: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener, reports], [], [], CHECK_SECONDS)
            if not ready:
                _reap(children)
                if not _still_serving(path, mine, name) or (not children and time.monotonic() - last > idle):
                    return 0
                continue
            if listener not in ready:   # nobody waits: decode what the last build left
                _hold(reports)
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            last = time.monotonic()
            _reap(children)
            try:
                pid = os.fork()
            except OSError:
                conn.close()
                continue
            if pid == 0:
                os.close(lock)
                os.close(reports)
                listener.close()
                _child(conn, report_end)   # never returns
            children.add(pid)
            conn.close()
    finally:
        try:
            if os.stat(path).st_ino == mine:
                os.unlink(path)
                os.unlink(f"{where}/{name}.lock")
        except OSError:
            pass


def stop_all(where: str) -> list[int]:
    """SIGTERM every server in `where`: the pid in each lock file still locked (an unlocked one
    is a dead server's, and its pid may be another process's by now: its files are removed).
    The pids stopped."""
    stopped = []
    for entry in os.scandir(where):
        if not entry.name.endswith(".lock"):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False   # nobody holds it
        except OSError:
            held = True
        text = os.read(fd, 32) if held else b""
        os.close(fd)
        if not held:   # a dead server's files
            for leftover in (entry.path, entry.path.removesuffix(".lock") + ".sock"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
        pid = int(text) if text.strip().isdigit() else 0
        if pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
            except OSError:
                pass
    return stopped


def _hold(reports: int) -> None:
    """Decode the state files of the workspace the last report names, for the children to come
    (resident.py). The collector stays off while they are made, as a build's is, and leaves
    them out of every collection after (a child that scanned them would copy their pages).
    Decoding them makes no cycles (Session's load relies on that too), so what they replace
    goes as soon as it is dropped."""
    from buildgraph import resident
    from buildgraph.state import RESIDENT

    try:
        lines = os.read(reports, 1 << 16).decode(errors="replace").splitlines()
    except OSError:
        return
    if not lines or not os.path.isabs(lines[-1]):
        return
    gc.disable()
    try:
        resident.hold(lines[-1], RESIDENT)
    finally:
        gc.freeze()
        gc.enable()


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _still_serving(path: str, mine: int, name: str) -> bool:
    try:
        return os.stat(path).st_ino == mine and client.context() == name
    except OSError:
        return False


def _receive(conn: socket.socket) -> tuple[tuple, list[int]]:
    """The client's request and its descriptors (client.py)."""
    data, ancillary, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(16 * 4))
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
    if len(data) < 4:
        raise OSError("short request")
    size = int.from_bytes(data[:4], "big")
    data = data[4:]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("short request")
        data += chunk
    return marshal.loads(data), fds


def _child(conn: socket.socket, report_end: int) -> None:
    """Become the client's process and run its command (client.py's protocol); then tell the
    server which workspace's state it used."""
    code = 1
    try:
        conn.settimeout(None)
        if not client.peer_is_us(conn):
            os._exit(1)
        fd = fcntl.fcntl(conn.detach(), fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
        conn = socket.socket(fileno=fd)
        (argv0, argv, env, umask, started, jobserver), fds = _receive(conn)
        high = [fcntl.fcntl(f, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for f in fds]
        for f in fds:
            os.close(f)
        for target, f in zip([0, 1, 2], high):
            os.dup2(f, target)
        os.fchdir(high[3])
        for target, f in zip(jobserver, high[4:]):
            os.dup2(f, target)
        for f in high:
            os.close(f)
        os.environ.clear()
        os.environ.update(env)
        os.umask(umask)
        sys.argv = [argv0, *argv]
        _reopen_stdio()
        conn.sendall(b"r")
        if conn.recv(1) != b"g":   # the client gave up waiting: it builds itself
            os._exit(0)
    except Exception:   # the client builds in its own process when there is no "r"
        os._exit(1)
    mountns.allow()   # this process lives for this build
    done = threading.Event()
    threading.Thread(target=_forward_signals, args=(conn, done), name="bg-client", daemon=True).start()
    try:
        from buildgraph import cli

        cli.PROCESS_START = started
        code = _exit_code(cli.main, argv)
        _report(report_end)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        done.set()
        conn.sendall((code & 0xFFFFFFFF).to_bytes(4, "big"))
    except BaseException:
        pass
    finally:
        os._exit(code & 0xFF)


def _report(report_end: int) -> None:
    from buildgraph import resident

    for used in resident.used_dirs:
        try:
            os.write(report_end, f"{used}\n".encode())
        except OSError:   # the pipe is full: the server has enough to read
            pass


def _exit_code(run, argv) -> int:
    """What the interpreter would exit with after `run(argv)`: as `sys.exit(main())` does."""
    try:
        result = run(argv)
    except SystemExit as exc:
        result = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    if result is None:
        return 0
    if isinstance(result, int):
        return result
    print(result, file=sys.stderr)
    return 1


def _forward_signals(conn: socket.socket, done: threading.Event) -> None:
    """Raise in the main thread each signal the client forwards; SIGINT when it goes away."""
    main = threading.main_thread().ident
    while True:
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        if done.is_set():
            return
        signal.pthread_kill(main, data[0] if data else signal.SIGINT)
        if not data:
            return


def _reopen_stdio() -> None:
    """sys.stdin, stdout and stderr on the client's descriptors, made as the interpreter makes
    them at start: the encoding (the context fixes it), line buffering where it is a terminal."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = io.open(fd, "rb" if fd == 0 else "wb", closefd=False)
        new = io.TextIOWrapper(raw, encoding=old.encoding, errors=old.errors,
                               line_buffering=fd == 2 or (fd == 1 and os.isatty(fd)),
                               write_through=fd != 0 and old.write_through)   # -u, PYTHONUNBUFFERED
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)
