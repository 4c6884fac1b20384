"""The `buildgraph` command's entry point: hands a build to the resident server (server.py)
when one is up for this exact context, else runs it in this process and starts one.

The server saves each build the interpreter's imports (~60-100 ms: most of a one-leaf
change at 1,000 nodes) and the decoding of the state files it last saw (resident.py: each
used only while its file is unchanged), so what a build does and prints is the same either
way. This module imports only built-in modules: it runs before every command.

Which server: the socket's name is a digest of everything that could make a forked copy
of the server differ from a fresh process of this command (context()): the interpreter,
its flags, sys.path and the environment it reads at start-up, buildgraph's own files and
the stat of every sys.path entry (an upgraded package moves its directory), the user, the
namespaces, the cgroup, the resource limits, the CPUs and the niceness. Another context
gets another server. Only `build` goes to a server; BUILDGRAPH_SERVER=0 turns it off.

The protocol, on a unix socket in a directory only this user can open (server_dir()):
  client -> server   one message with the request (argv, environment, umask, start time)
                     and four descriptors, stdin, stdout, stderr and the working
                     directory, plus the make jobserver's, if any (SCM_RIGHTS)
  server             forks; the child answers "ready" and waits for "go", so a client
                     that gave up (READY_SECONDS) never gets a second build behind its back
  client -> child    "go", then one byte per signal it receives (INT, TERM, HUP, QUIT),
                     which the child raises in itself; the client's end closing, the client
                     killed, is SIGINT: the build stops as after Ctrl-C
  child -> client    its exit code (4 bytes) when the command returns; an end without one
                     means the child was killed, and the client says so (exit 1)
"""

from __future__ import annotations

import marshal
import os
import sys

READY_SECONDS = 10.0   # how long a client waits for a server's child before building itself
FORWARDED = (2, 15, 1, 3)   # SIGINT, SIGTERM, SIGHUP, SIGQUIT
_CONTEXT_ENV = ("PYTHON", "LC_", "LANG")   # what the interpreter reads of the environment at start
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def server_dir() -> str | None:
    """$BUILDGRAPH_SERVER_DIR, else $XDG_RUNTIME_DIR/buildgraph, else /tmp/buildgraph-<uid>:
    created 0700; None unless it is this user's alone (a socket there is trusted)."""
    path = os.environ.get("BUILDGRAPH_SERVER_DIR")
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = f"{runtime}/buildgraph" if runtime else f"/tmp/buildgraph-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or (st.st_mode & 0o170000) != 0o040000:
        return None
    return path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def code_signature() -> tuple:
    """buildgraph's own modules, by stat: a buildgraph changed in place (same version string)
    must neither reuse a graph it configured, nor call a build a no-op by its old rules, nor
    be served by a server that imported the old code. Here, not in signatures.py, because
    the client imports nothing but built-in modules."""
    out = []
    for sub in ("", "store"):
        d = os.path.join(_PACKAGE, sub)
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                st = os.stat(os.path.join(d, name))
                out.append((sub, name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def peer_is_us(sock) -> bool:
    """Whether the process at the other end of unix socket `sock` runs as this user."""
    cred = sock.getsockopt(1, 17, 12)   # SOL_SOCKET, SO_PEERCRED: struct ucred (pid, uid, gid)
    return int.from_bytes(cred[4:8], sys.byteorder) == os.getuid()


def context() -> str:
    """The digest naming the server that may run this process's command (module docstring)."""
    from _blake2 import blake2b

    paths = []
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
            paths.append((entry, st.st_ino, st.st_mtime_ns))
        except OSError:
            paths.append((entry, None))
    namespaces = []
    for ns in ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup"):
        try:
            namespaces.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            namespaces.append(None)
    root = os.stat("/")
    facts = (sys.executable, sys.version, tuple(sys.flags), tuple(sys.path), paths, _PACKAGE, code_signature(),
             sorted((k, v) for k, v in os.environ.items() if k.startswith(_CONTEXT_ENV)),
             os.getuid(), os.getgid(), sorted(os.getgroups()), namespaces, (root.st_dev, root.st_ino),
             _read("/proc/self/cgroup"), _read("/proc/self/limits"), sorted(os.sched_getaffinity(0)),
             os.getpriority(os.PRIO_PROCESS, 0))
    return blake2b(marshal.dumps(repr(facts)), digest_size=16).hexdigest()


def process_start() -> float | None:
    """This process's start on CLOCK_BOOTTIME (the kernel's, to its tick), as cli.process_seconds reads it."""
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _jobserver_fds() -> list[int] | None:
    """The descriptors a make jobserver in MAKEFLAGS names (a child of ours must hold the same
    numbers), [] when it names none; None when they are not open here (make withheld them)."""
    flags = os.environ.get("MAKEFLAGS", "")
    for word in flags.split():
        for prefix in ("--jobserver-auth=", "--jobserver-fds="):
            if word.startswith(prefix) and not word[len(prefix):].startswith("fifo:"):
                try:
                    fds = [int(x) for x in word[len(prefix):].split(",")]
                    for fd in fds:
                        os.fstat(fd)
                    return fds
                except (ValueError, OSError):
                    return None
    return []


def _served(argv: list[str]) -> int | None:
    """Run `argv` in a child of this context's server: its exit code, or None when there is no
    server to run it (then one is started for the next command)."""
    import _socket

    if os.environ.get("BUILDGRAPH_SERVER") == "0" or not argv or argv[0] != "build":
        return None
    where = server_dir()
    jobserver = _jobserver_fds()
    if where is None or jobserver is None:
        return None
    name = context()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(f"{where}/{name}.sock")
        if not peer_is_us(sock):
            raise OSError("not this user's server")
    except OSError:
        sock.close()
        _start_server(where, name)
        return None
    try:
        return _run_in_child(sock, argv, jobserver)
    finally:
        sock.close()


def _run_in_child(sock, argv: list[str], jobserver: list[int]) -> int | None:
    import _signal   # not `signal`: it imports enum, ~7 ms of every command's start here
    import _socket

    umask = os.umask(0o022)
    os.umask(umask)
    request = marshal.dumps((sys.argv[0], argv, dict(os.environ), umask, process_start(), jobserver))
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fds = [0, 1, 2, cwd, *jobserver]
        for fd in fds:
            os.fstat(fd)   # a closed stdin or stdout: build here, where the error is the usual one
        sock.sendmsg([len(request).to_bytes(4, "big") + request],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))])
    except OSError:
        return None
    finally:
        os.close(cwd)
    sock.settimeout(READY_SECONDS)
    try:
        if sock.recv(1) != b"r":
            return None
        sock.settimeout(None)
    except OSError:   # no child within READY_SECONDS: it builds nothing once we close
        return None
    forwarded: list[int] = []

    def forward(signum, frame):
        forwarded.append(signum)
        try:
            sock.sendall(bytes([signum]))
        except OSError:
            pass
    before = {sig: _signal.signal(sig, forward) for sig in FORWARDED}
    try:
        sock.sendall(b"g")
        code = b""
        while len(code) < 4:
            chunk = sock.recv(4 - len(code))
            if not chunk:
                break
            code += chunk
    except OSError:
        code = b""
    finally:
        for sig, handler in before.items():
            _signal.signal(sig, handler)
    if len(code) == 4:
        return int.from_bytes(code, "big", signed=True)
    if forwarded:   # it died of what we passed on: so do we, as without a server
        _signal.signal(forwarded[-1], _signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    print("buildgraph: the build process ended without an exit code (killed?)", file=sys.stderr)
    return 1


def _start_server(where: str, name: str) -> None:
    """Start this context's server in the background, detached (it exits when idle)."""
    import subprocess

    try:
        # sys.path as this process has it, before buildgraph is imported: the same code
        subprocess.Popen([sys.executable, "-c", "import marshal, sys; sys.path[:] = marshal.loads(bytes.fromhex(sys.argv[3]));"
                          " from buildgraph import server; sys.exit(server.main(sys.argv[1:]))",
                          where, name, marshal.dumps(sys.path).hex()], cwd="/", stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env=os.environ)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    return _run(argv)[0]


def command() -> None:
    """The `buildgraph` command (bin/buildgraph, __main__.py): main(), and exit. A served
    build's client has nothing left to tear down: it leaves without the interpreter's
    finalization (~2 ms here)."""
    code, served = _run(None)
    if not served:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code & 0xFF)


def _run(argv: list[str] | None) -> tuple[int, bool]:
    """The command's exit code, and whether a server's child ran it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _served(argv)
    except KeyboardInterrupt:   # before a child took the build: nothing ran
        print("buildgraph: interrupted", file=sys.stderr)
        return 130, False
    if code is not None:
        return code, True
    from buildgraph import cli

    return cli.main(argv), False
