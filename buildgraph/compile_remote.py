"""The compile cache's remote: ccache's redis+unix storage served by buildgraph, backed by the
HTTP remote cache.

ccache speaks to a redis-protocol server on a unix socket (one per namespace) whose directory is
bound into the sandbox, so the sandbox keeps no network; the server answers GET from
<prefix>/compile-cache/<namespace>/<key> on the HTTP remote (store/http.py) and uploads what
SET gives it there. Imported only by a build whose remote can carry the compile cache.
"""

from __future__ import annotations

import queue
import shutil
import socketserver
import tempfile
import threading


class RemoteProxy:
    """A redis-protocol server on unix sockets (one per namespace) that ccache's redis+unix
    storage talks to, backed by the HTTP remote cache. Lookups are answered synchronously;
    stores are acknowledged at once and uploaded by a background thread, drained at close."""

    def __init__(self, remote, warn=None, read_only: bool = False):
        self.remote, self.read_only = remote, read_only
        self.warn = warn or (lambda message: None)
        self.down = False
        self.hits = self.misses = self.uploads = 0
        self._dir: str | None = None
        self._servers: dict[str, socketserver.BaseServer] = {}
        self._lock = threading.Lock()
        self._uploads: queue.Queue = queue.Queue()
        self._uploader: threading.Thread | None = None

    def serve(self, ns: str) -> str:
        """Start serving namespace `ns` (once); returns the directory holding the sockets."""
        with self._lock:
            if self._dir is None:
                # Short: a unix socket's path has at most 107 bytes.
                self._dir = tempfile.mkdtemp(prefix="bg-cc-")
            if ns not in self._servers:
                server = _Server(f"{self._dir}/{ns}.sock", _Handler)
                server.proxy, server.ns = self, ns
                threading.Thread(target=server.serve_forever, name=f"compile-cache-{ns[:8]}", daemon=True).start()
                self._servers[ns] = server
            if self._uploader is None and not self.read_only:
                self._uploader = threading.Thread(target=self._upload_loop, name="compile-cache-uploads", daemon=True)
                self._uploader.start()
            return self._dir

    def get(self, ns: str, key: str) -> bytes | None:
        if self.down:
            return None
        try:
            data = self.remote.get_compile_entry(ns, key)
        except Exception as exc:   # noqa: BLE001 — any failure of the remote: compile locally
            self._drop(exc)
            return None
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, ns: str, key: str, data: bytes) -> None:
        if not self.down and not self.read_only:
            self._uploads.put((ns, key, data))

    def _upload_loop(self) -> None:
        while (item := self._uploads.get()) is not None:
            if not self.down:
                try:
                    self.remote.put_compile_entry(*item)
                    self.uploads += 1
                except Exception as exc:   # noqa: BLE001
                    self._drop(exc)

    def _drop(self, exc: Exception) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
        self.warn(f"warning: remote compile cache unusable ({exc}); compiling locally for the rest of this build")

    def close(self) -> None:
        if self._uploader is not None:
            self._uploads.put(None)
            self._uploader.join()
            self._uploader = None
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    proxy: RemoteProxy
    ns: str


class _Handler(socketserver.StreamRequestHandler):
    """The part of the redis protocol ccache uses: GET, SET (and EXISTS, PING, AUTH, SELECT)."""

    def handle(self) -> None:
        proxy, ns = self.server.proxy, self.server.ns
        while (command := self._read_command()) is not None:
            op = command[0].upper() if command else b""
            key = command[1].decode("ascii", "replace").removeprefix("ccache:") if len(command) > 1 else ""
            if op == b"GET" and _valid_key(key):
                data = proxy.get(ns, key)
                self.wfile.write(b"$-1\r\n" if data is None else b"$%d\r\n%s\r\n" % (len(data), data))
            elif op == b"SET" and len(command) >= 3 and _valid_key(key):
                proxy.put(ns, key, command[2])
                self.wfile.write(b"+OK\r\n")
            elif op == b"EXISTS":
                self.wfile.write(b":0\r\n")   # "store it": a duplicate upload costs less than a lookup
            elif op in (b"PING", b"AUTH", b"SELECT", b"CLIENT", b"HELLO"):
                self.wfile.write(b"+OK\r\n")
            else:
                self.wfile.write(b"-ERR unsupported\r\n")
            self.wfile.flush()

    def _read_command(self) -> list[bytes] | None:
        line = self.rfile.readline()
        if not line.startswith(b"*"):
            return None
        args = []
        try:
            for _ in range(int(line[1:])):
                header = self.rfile.readline()
                if not header.startswith(b"$"):
                    return None
                size = int(header[1:])
                args.append(self.rfile.read(size + 2)[:size])
        except ValueError:
            return None
        return args


def _valid_key(key: str) -> bool:
    """ccache's keys are base32hex digests: nothing that could leave the namespace's path."""
    return 0 < len(key) <= 128 and key.isalnum()
