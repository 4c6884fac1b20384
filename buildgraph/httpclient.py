"""The HTTP client for source downloads, artifact repositories and package indexes.

Built on urllib3 (imported on first use: a no-op build loads no HTTP or TLS module):
  - proxies as curl and pip read them: $https_proxy, $http_proxy, $no_proxy (any case);
  - retries of connection errors, cut-off bodies, 429 and 5xx answers with exponential
    backoff, waiting what a Retry-After header asks (seconds or a date, up to MAX_WAIT);
    a 4xx is an answer, not retried;
  - uploads stream the file in 1 MiB blocks (never read whole into memory), opened again
    for each attempt;
  - downloads stream to the destination, and one cut short resumes where it stopped with a
    Range request (a server that ignores Range sends it all again; the file starts over);
  - a request may have a deadline for the whole exchange, not only for each socket read (a
    server dripping a byte a second passes every read's timeout forever), and `abort` ends
    every request in flight (Ctrl-C): both shut the connection's socket down from another
    thread, which ends whatever read or write is blocked on it. Neither is retried.
"""

from __future__ import annotations

import email.utils
import heapq
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

BLOCK = 1 << 20
MAX_WAIT = 60.0           # the longest Retry-After honoured; longer asks are waited this long
_TRANSIENT = (429, 500, 502, 503, 504)


class HttpError(OSError):
    """A request failed: an HTTP answer that is not success (`status`), or the server could
    not be reached or kept failing (`status` None). An OSError, as urllib's errors were."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Response:
    status: int
    headers: dict = field(default_factory=dict)   # lower-case names
    data: bytes = b""
    url: str = ""


def _answer(resp, data: bytes, url: str) -> Response:
    return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data, url)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (RFC 9110: delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _redirects_only(redirects: int = 5):
    """urllib3's retries limited to following redirects: the retrying is ours (`_exchange`)."""
    import urllib3

    return urllib3.Retry(total=redirects, connect=0, read=0, status=0, other=0, redirect=redirects,
                         respect_retry_after_header=False, raise_on_status=False, raise_on_redirect=False)


class _InFlight:
    """One attempt of a request and the connection it is using, so that its deadline or an
    abort can shut that connection's socket down from another thread."""

    def __init__(self):
        self.conn = None
        self.ended: str | None = None    # why it was ended: "deadline" or "aborted"
        self.over = False                # the attempt is over: nothing left to end
        self._lock = threading.Lock()

    def attach(self, conn) -> None:
        with self._lock:
            self.conn, ended = conn, self.ended
        if ended:
            _shut(conn)

    def end(self, why: str) -> None:
        with self._lock:
            self.ended = self.ended or why
            conn = self.conn
        if conn is not None:
            _shut(conn)


class _Watchdog:
    """One thread for every deadline (a timer thread per request would cost more than a
    request to a nearby cache): ends each attempt still in flight when its time comes."""

    def __init__(self):
        self._due: list[tuple[float, int, _InFlight]] = []   # a heap by time
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, flight: _InFlight, seconds: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + seconds, id(flight), flight))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bg-http-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            expired = []
            with self._wake:
                while not expired:
                    now = time.monotonic()
                    while self._due and (self._due[0][2].over or self._due[0][0] <= now):
                        flight = heapq.heappop(self._due)[2]
                        if not flight.over:
                            expired.append(flight)
                    if not expired:
                        self._wake.wait(self._due[0][0] - now if self._due else None)
            for flight in expired:
                flight.end("deadline")


_watchdog = _Watchdog()


def _shut(conn) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_this_thread = threading.local()   # `.flight`: the attempt this thread is making, if any


def _tracked_pools() -> dict:
    """urllib3's connection pools whose connections tell the calling thread's attempt which
    connection it got (urllib3 hands them out inside `urlopen`, out of our sight)."""
    import urllib3

    def tracked(base):
        def attach(conn):
            flight = getattr(_this_thread, "flight", None)
            if flight is not None:
                flight.attach(conn)

        class Tracked(base):
            def connect(self):
                attach(self)
                return super().connect()

            def request(self, *args, **kwargs):
                attach(self)
                return super().request(*args, **kwargs)
        return Tracked

    return {scheme: type(pool.__name__, (pool,), {"ConnectionCls": tracked(pool.ConnectionCls)})
            for scheme, pool in (("http", urllib3.HTTPConnectionPool), ("https", urllib3.HTTPSConnectionPool))}


def _proxy_for(scheme: str, host: str) -> str | None:
    import urllib.request

    if urllib.request.proxy_bypass_environment(host):
        return None
    return urllib.request.getproxies_environment().get(scheme)


class HttpClient:
    """`timeout` bounds each connect and each read; `retry_timeouts` False gives up on the
    first (a remote cache: a slow server would only make the build slower); `connections`
    is how many idle connections each host keeps (one per thread that uses it)."""

    def __init__(self, *, timeout: float = 60.0, retries: int = 4, backoff: float = 0.5,
                 ca_file: str | None = None, headers: dict | None = None, retry_timeouts: bool = True,
                 connections: int = 16):
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ca_file = ca_file
        self.headers = dict(headers or {})
        self.retry_timeouts, self.connections = retry_timeouts, connections
        self._managers: dict[str, object] = {}
        self._proxies: dict[tuple[str, str], str | None] = {}   # the environment, read once per host
        self._lock = threading.Lock()
        self._flights: set[_InFlight] = set()
        self._aborted = threading.Event()
        self.sleep = self._aborted.wait   # a wait before a retry ends at an abort; tests observe the waits

    def _manager(self, url: str):
        import urllib3

        parts = urlsplit(url)
        where = (parts.scheme, parts.hostname or "")
        proxy = self._proxies.get(where, "?")
        if proxy == "?":
            proxy = self._proxies[where] = _proxy_for(*where)
        with self._lock:
            manager = self._managers.get(proxy or "")
            if manager is None:
                options = dict(ca_certs=self.ca_file, blocksize=BLOCK, maxsize=self.connections,
                               timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
                manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                manager.pool_classes_by_scheme = _tracked_pools()
                self._managers[proxy or ""] = manager
            return manager

    def _begin(self, deadline: float | None) -> _InFlight:
        flight = _InFlight()
        with self._lock:
            if self._aborted.is_set():
                flight.ended = "aborted"
            self._flights.add(flight)
        _this_thread.flight = flight
        if deadline is not None:
            _watchdog.watch(flight, deadline)
        return flight

    def _end(self, flight: _InFlight) -> None:
        flight.over = True
        _this_thread.flight = None
        with self._lock:
            self._flights.discard(flight)

    def abort(self) -> None:
        """End every request in flight now (each raises HttpError) and refuse new ones."""
        with self._lock:
            self._aborted.set()
            flights = list(self._flights)
        for flight in flights:
            flight.end("aborted")

    def close(self) -> None:
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.clear()

    def _exchange(self, method: str, url: str, headers, consume, body=None, deadline: float | None = None):
        """Send the request (`body()` makes its body for each attempt) and return `consume`'s
        reading of a successful answer, each attempt done within `deadline` seconds if given.
        One loop retries all that is worth retrying: connection errors, a body cut short (a
        download resumes: `headers()` is asked again), 429 and 5xx after what Retry-After
        asks, else with exponential backoff."""
        import urllib3

        delay = self.backoff
        for attempt in range(self.retries + 1):
            wait, resp, read = delay, None, False
            flight = self._begin(deadline)
            try:
                if flight.ended:
                    raise HttpError(f"{method} {url}: aborted")
                resp = self._manager(url).urlopen(
                    method, url, body=body() if body else None, headers={**self.headers, **headers()},
                    preload_content=False, retries=_redirects_only(0 if body else 5), chunked=False)
                if resp.status not in _TRANSIENT and 200 <= resp.status < 300:
                    result = consume(resp)
                    read = True
                    return result
                # unread bytes left on a kept-alive connection would be read as the next
                # answer's: drained (within the deadline) before the connection is pooled
                resp.drain_conn()
                read = True
                problem = HttpError(f"{method} {url}: HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
                if resp.status not in _TRANSIENT:   # a redirect left unfollowed is no success either
                    raise problem
                asked = retry_after(resp.headers.get("Retry-After"))
                wait = min(asked, MAX_WAIT) if asked is not None else delay
            except HttpError:
                raise
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if flight.ended == "aborted":
                    raise HttpError(f"{method} {url}: aborted") from None
                if flight.ended:
                    raise HttpError(f"{method} {url}: timed out (not done within {deadline:g}s)") from None
                cause = getattr(exc, "reason", None) or exc   # urlopen wraps it in MaxRetryError
                if isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError)) and not self.retry_timeouts:
                    raise HttpError(f"{method} {url}: timed out after {self.timeout:g}s") from None
                problem = HttpError(f"{method} {url}: {exc}")
            finally:
                self._end(flight)
                if resp is not None:
                    if not read:   # cut off, aborted or refused by `consume`: not reusable
                        resp.close()
                    resp.release_conn()
            if attempt == self.retries:
                raise problem
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None,
                deadline: float | None = None) -> Response:
        """One request with a small body both ways (a page, a checksum, an API call)."""
        def consume(resp) -> Response:
            # where it was answered from, after redirects (urllib3 may give only the path)
            return _answer(resp, resp.read(), urljoin(url, resp.geturl() or url))
        return self._exchange(method, url, lambda: headers or {}, consume, body and (lambda: body), deadline)

    def upload(self, url: str, path: Path, method: str = "PUT", headers: dict | None = None,
               deadline: float | None = None) -> Response:
        """Send a file as the body, streamed in blocks, opened again for each attempt."""
        files = []

        def body():
            files.append(open(path, "rb"))
            return files[-1]

        try:
            return self._exchange(method, url, lambda: {"Content-Length": str(os.path.getsize(path)),
                                                        **(headers or {})},
                                  lambda resp: _answer(resp, b"", url), body, deadline)
        finally:
            for f in files:
                f.close()

    def stream(self, url: str, sink, *, restart=None, headers: dict | None = None,
               deadline: float | None = None) -> int:
        """GET `url` into `sink(chunk)`; returns how many bytes it got. A transfer cut short
        resumes with Range where it stopped. A server that sends the whole body again instead
        is followed only if `restart()` can take back what `sink` got; else that is an error,
        never a body delivered twice."""
        got = 0

        def asked() -> dict:
            return {**(headers or {}), **({"Range": f"bytes={got}-"} if got else {})}

        def consume(resp) -> int:
            nonlocal got
            if got and not (resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {got}-")):
                if restart is None:
                    raise HttpError(f"GET {url}: cut off after {got} bytes, and the server does not resume")
                restart()
                got = 0
            while chunk := resp.read1(BLOCK):   # what arrived is kept if the rest does not
                sink(chunk)
                got += len(chunk)
            return got
        return self._exchange("GET", url, asked, consume, deadline=deadline)

    def download(self, url: str, dest: Path, headers: dict | None = None) -> int:
        """Stream `url` into `dest`; a transfer cut short resumes with Range. Returns the size."""
        with open(dest, "wb") as out:
            def restart() -> None:
                out.seek(0)
                out.truncate()
            return self.stream(url, out.write, restart=restart, headers=headers)


_shared: HttpClient | None = None


def client() -> HttpClient:
    """The process's client for plain downloads (one connection pool per proxy)."""
    global _shared
    if _shared is None:
        _shared = HttpClient()
    return _shared
