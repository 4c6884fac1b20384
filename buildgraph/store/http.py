"""Bazel HTTP remote cache client: GET/PUT/HEAD <prefix>/ac/<sha256> and <prefix>/cas/<sha256>
(and the compile cache's entries, <prefix>/compile-cache/<namespace>/<key>).

Works with bazel-remote and with any WebDAV server that stores what is PUT (nginx with
`dav_methods PUT`). One keep-alive connection per thread; bodies stream in 1 MiB blocks
in both directions. Connection errors and 5xx answers are retried with exponential
backoff; a timeout is not (a slow server would only make the build slower), and every
failure surfaces as RemoteError for the layer above to decide.

`--remote-timeout` is a deadline for the whole request (plus one second per MiB of a
blob's size), not for each socket read: a server that drips a byte a second would pass
every read's timeout forever. A watchdog shuts the connection's socket down at the
deadline, which ends whatever read or write is blocked on it; `abort` does the same to
every connection at once (Ctrl-C).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from buildgraph.store.remote import RDigest, RemoteError, RemoteOptions, redact

_BLOCK = 1 << 20


class _Transient(Exception):
    pass


class HttpCache:
    def __init__(self, options: RemoteOptions):
        parts = urlsplit(options.url)
        self.options = options
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.headers = dict(options.headers)
        self.name = redact(options.url)
        self._ssl = None
        if self.https:
            self._ssl = ssl.create_default_context(cafile=options.ca_file)
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._aborted = False

    # ------------------------------------------------------------ transport

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.options.timeout,
                                                   context=self._ssl, blocksize=_BLOCK)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.options.timeout,
                                                  blocksize=_BLOCK)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(self, method: str, path: str, body=None, size: int | None = None, sink=None,
                 blob_size: int = 0) -> int:
        """Send one request; returns the status (200/201/204/404). `sink(chunk)` gets a GET's body.
        The request must be done within the timeout plus a second per MiB of `blob_size`."""
        headers = dict(self.headers)
        if size is not None:
            headers["Content-Length"] = str(size)
        delay = 0.2
        delivered = False  # once part of a body went to `sink`, a retry would duplicate it
        allowed = self.options.timeout + blob_size / (1 << 20)
        for attempt in range(self.options.retries + 1):
            if self._aborted:
                raise RemoteError("aborted")
            expired = threading.Event()
            watchdog = None
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                conn = self._conn()
                if conn.sock is None:
                    conn.connect()
                watchdog = threading.Timer(allowed, _expire, (conn, expired))
                watchdog.daemon = True
                watchdog.start()
                conn.request(method, self.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                if resp.status in (200, 201, 204):
                    while chunk := resp.read1(_BLOCK):
                        if sink is not None:
                            delivered = True
                            sink(chunk)
                    # read1 never marks a Content-Length response finished; read() does, so the
                    # kept-alive connection takes the next request (else it fails, is retried
                    # after a back-off and reconnects: 200 ms a request).
                    resp.read()
                    return resp.status
                resp.read()
                if resp.status == 404:
                    return 404
                if resp.status >= 500 or resp.status == 429:
                    raise _Transient(f"HTTP {resp.status}")
                raise RemoteError(f"{method} {path}: HTTP {resp.status} {resp.reason}")
            except (socket.timeout, TimeoutError) as exc:
                self._drop()
                raise RemoteError(f"{method} {path}: timed out after {self.options.timeout:g}s") from exc
            except (_Transient, OSError, http.client.HTTPException) as exc:
                self._drop()
                if self._aborted:
                    raise RemoteError("aborted") from None
                if expired.is_set():
                    raise RemoteError(f"{method} {path}: timed out (not done within {allowed:g}s)") from None
                if attempt == self.options.retries or delivered:
                    raise RemoteError(f"{method} {path}: {exc}") from None
                time.sleep(delay)
                delay *= 2
            finally:
                if watchdog is not None:
                    watchdog.cancel()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ cache protocol

    def get_action_result(self, digest: RDigest) -> bytes | None:
        parts: list[bytes] = []
        status = self._request("GET", f"/ac/{digest.hash}", sink=parts.append)
        return None if status == 404 else b"".join(parts)

    def update_action_result(self, digest: RDigest, data: bytes) -> None:
        self._request("PUT", f"/ac/{digest.hash}", body=data, size=len(data))

    def find_missing(self, digests: list[RDigest]) -> list[RDigest]:
        return [d for d in digests if self._request("HEAD", f"/cas/{d.hash}") == 404]

    def upload_blob(self, digest: RDigest, path: str) -> None:
        with open(path, "rb") as f:
            self._request("PUT", f"/cas/{digest.hash}", body=f, size=digest.size, blob_size=digest.size)

    def download_blob(self, digest: RDigest, sink) -> bool:
        """Stream a blob into `sink(chunk)`; False if the server does not have it."""
        return self._request("GET", f"/cas/{digest.hash}", sink=sink, blob_size=digest.size) != 404

    def read_blobs(self, digests: list[RDigest]) -> dict[RDigest, bytes]:
        out = {}
        for d in digests:
            parts: list[bytes] = []
            if self.download_blob(d, parts.append):
                out[d] = b"".join(parts)
        return out

    def get_compile_entry(self, namespace: str, key: str) -> bytes | None:
        """A compile cache entry (compile_cache.py): <prefix>/compile-cache/<namespace>/<key>."""
        parts: list[bytes] = []
        status = self._request("GET", f"/compile-cache/{namespace}/{key}", sink=parts.append)
        return None if status == 404 else b"".join(parts)

    def put_compile_entry(self, namespace: str, key: str, data: bytes) -> None:
        self._request("PUT", f"/compile-cache/{namespace}/{key}", body=data, size=len(data), blob_size=len(data))

    def abort(self) -> None:
        """End every request in flight now (their threads get RemoteError) and refuse new ones."""
        self._aborted = True
        with self._lock:
            for conn in self._all:
                _expire(conn, None)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _expire(conn: http.client.HTTPConnection, flag: threading.Event | None) -> None:
    """Shut the connection's socket down: a read or write blocked on it returns at once."""
    if flag is not None:
        flag.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
