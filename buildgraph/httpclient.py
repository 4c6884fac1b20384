"""The HTTP client for source downloads, artifact repositories and package indexes.

Built on urllib3 (imported on first use: a no-op build loads no HTTP or TLS module):
  - proxies as curl and pip read them: $https_proxy, $http_proxy, $no_proxy (any case);
  - retries of connection errors, cut-off bodies, 429 and 5xx answers with exponential
    backoff, waiting what a Retry-After header asks (seconds or a date, up to MAX_WAIT);
    a 4xx is an answer, not retried;
  - uploads stream the file in 1 MiB blocks (never read whole into memory), opened again
    for each attempt;
  - downloads stream to the destination, and one cut short resumes where it stopped with a
    Range request (a server that ignores Range sends it all again; the file starts over).
"""

from __future__ import annotations

import email.utils
import os
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
    """urllib3's retries limited to following redirects: the retrying is ours (`_attempts`)."""
    import urllib3

    return urllib3.Retry(total=redirects, connect=0, read=0, status=0, other=0, redirect=redirects,
                         respect_retry_after_header=False, raise_on_status=False, raise_on_redirect=False)


def _proxy_for(url: str) -> str | None:
    import urllib.request

    parts = urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


class HttpClient:
    def __init__(self, *, timeout: float = 60.0, retries: int = 4, backoff: float = 0.5,
                 ca_file: str | None = None, headers: dict | None = None):
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ca_file = ca_file
        self.headers = dict(headers or {})
        self._managers: dict[str, object] = {}
        self._lock = threading.Lock()
        self.sleep = time.sleep   # tests observe the waits

    def _manager(self, url: str):
        import urllib3

        proxy = _proxy_for(url)
        with self._lock:
            manager = self._managers.get(proxy or "")
            if manager is None:
                options = dict(ca_certs=self.ca_file, blocksize=BLOCK, maxsize=8,
                               timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
                manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                self._managers[proxy or ""] = manager
            return manager

    def _attempts(self, method: str, url: str, send):
        """The urllib3 response of the first send(manager) that neither failed to connect nor
        was answered 429 or 5xx; retried with backoff, or as long as Retry-After asks."""
        import urllib3

        delay = self.backoff
        for attempt in range(self.retries + 1):
            wait = delay
            try:
                resp = send(self._manager(url))
                if resp.status not in _TRANSIENT:
                    return resp
                asked = retry_after(resp.headers.get("Retry-After"))
                wait = min(asked, MAX_WAIT) if asked is not None else delay
                problem = f"HTTP {resp.status} {resp.reason or ''}".strip()
                resp.drain_conn()
                resp.release_conn()
                if attempt == self.retries:
                    raise HttpError(f"{method} {url}: {problem}", resp.status)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if isinstance(exc, HttpError):
                    raise
                if attempt == self.retries:
                    raise HttpError(f"{method} {url}: {exc}") from None
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        """One request with a small body both ways (a page, a checksum, an API call)."""
        import urllib3

        headers = {**self.headers, **(headers or {})}

        def send(manager):
            return manager.request(method, url, body=body, headers=headers, preload_content=False,
                                   retries=_redirects_only())

        resp = self._attempts(method, url, send)
        try:
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise HttpError(f"{method} {url}: {exc}") from None
        finally:
            resp.release_conn()
        if resp.status >= 400:
            raise HttpError(f"{method} {url}: HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
        # where it was answered from, after redirects (urllib3 may give only the path)
        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data,
                        urljoin(url, resp.geturl() or url))

    def upload(self, url: str, path: Path, method: str = "PUT", headers: dict | None = None) -> Response:
        """Send a file as the body, streamed, opened again for each attempt."""
        size = os.path.getsize(path)
        headers = {**self.headers, "Content-Length": str(size), **(headers or {})}
        files = []

        def send(manager):
            f = open(path, "rb")
            files.append(f)
            return manager.urlopen(method, url, body=f, headers=headers, preload_content=False,
                                   retries=_redirects_only(0), chunked=False)

        try:
            resp = self._attempts(method, url, send)
            resp.drain_conn()
            resp.release_conn()
        finally:
            for f in files:
                f.close()
        if resp.status >= 400:
            raise HttpError(f"{method} {url}: HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, b"", url)

    def download(self, url: str, dest: Path, headers: dict | None = None) -> int:
        """Stream `url` into `dest`; a transfer cut short resumes with Range. Returns the size."""
        import urllib3

        headers = {**self.headers, **(headers or {})}
        delay = self.backoff
        with open(dest, "wb") as out:
            for attempt in range(self.retries + 1):
                have = out.tell()
                asked = {**headers, "Range": f"bytes={have}-"} if have else headers

                def send(manager):
                    return manager.request("GET", url, headers=asked, preload_content=False,
                                           retries=_redirects_only())
                resp = self._attempts("GET", url, send)
                try:
                    if resp.status >= 400 and resp.status != 416:
                        raise HttpError(f"GET {url}: HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
                    if resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                        out.seek(0)   # the whole file again (a server that ignores Range, or 416)
                        out.truncate()
                        if resp.status == 416:
                            continue
                    while chunk := resp.read1(BLOCK):   # what arrived: kept if the rest does not
                        out.write(chunk)
                    return out.tell()
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if isinstance(exc, HttpError) or attempt == self.retries:
                        raise HttpError(f"GET {url}: {exc}", getattr(exc, "status", None)) from None
                finally:
                    resp.release_conn()
                self.sleep(delay)
                delay *= 2
        raise HttpError(f"GET {url}: cut off {self.retries + 1} times")


_shared: HttpClient | None = None


def client() -> HttpClient:
    """The process's client for plain downloads (one connection pool per proxy)."""
    global _shared
    if _shared is None:
        _shared = HttpClient()
    return _shared
