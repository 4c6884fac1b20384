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

    def _exchange(self, method: str, url: str, headers, consume, body=None):
        """Send the request (`body()` makes its body for each attempt) and return `consume`'s
        reading of a successful answer. One loop retries all that is worth retrying:
        connection errors, a body cut short (a download resumes: `headers()` is asked again),
        429 and 5xx after what Retry-After asks, else with exponential backoff."""
        import urllib3

        delay = self.backoff
        for attempt in range(self.retries + 1):
            wait, resp = delay, None
            try:
                resp = self._manager(url).urlopen(
                    method, url, body=body() if body else None, headers={**self.headers, **headers()},
                    preload_content=False, retries=_redirects_only(0 if body else 5), chunked=False)
                if resp.status not in _TRANSIENT:
                    if not 200 <= resp.status < 300:   # a redirect left unfollowed is no success either
                        raise HttpError(f"{method} {url}: HTTP {resp.status} {resp.reason or ''}".strip(),
                                        resp.status)
                    return consume(resp)
                asked = retry_after(resp.headers.get("Retry-After"))
                wait = min(asked, MAX_WAIT) if asked is not None else delay
                problem = HttpError(f"{method} {url}: HTTP {resp.status} {resp.reason or ''}".strip(), resp.status)
            except HttpError:
                raise
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = HttpError(f"{method} {url}: {exc}")
            finally:
                if resp is not None:   # unread bytes left on a kept-alive connection would be
                    resp.drain_conn()  # read as the next answer's: drained first, then pooled
                    resp.release_conn()
            if attempt == self.retries:
                raise problem
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        """One request with a small body both ways (a page, a checksum, an API call)."""
        def consume(resp) -> Response:
            # where it was answered from, after redirects (urllib3 may give only the path)
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read(),
                            urljoin(url, resp.geturl() or url))
        return self._exchange(method, url, lambda: headers or {}, consume, body and (lambda: body))

    def upload(self, url: str, path: Path, method: str = "PUT", headers: dict | None = None) -> Response:
        """Send a file as the body, streamed in blocks, opened again for each attempt."""
        files = []

        def body():
            files.append(open(path, "rb"))
            return files[-1]

        def consume(resp) -> Response:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, b"", url)
        try:
            return self._exchange(method, url, lambda: {"Content-Length": str(os.path.getsize(path)),
                                                        **(headers or {})}, consume, body)
        finally:
            for f in files:
                f.close()

    def download(self, url: str, dest: Path, headers: dict | None = None) -> int:
        """Stream `url` into `dest`; a transfer cut short resumes with Range. Returns the size."""
        with open(dest, "wb") as out:
            def asked() -> dict:
                have = out.tell()
                return {**(headers or {}), **({"Range": f"bytes={have}-"} if have else {})}

            def consume(resp) -> int:
                have = out.tell()
                if resp.status != 206 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    out.seek(0)   # the whole file (a server that ignores Range sends it all again)
                    out.truncate()
                while chunk := resp.read1(BLOCK):   # what arrived is kept if the rest does not
                    out.write(chunk)
                return out.tell()
            return self._exchange("GET", url, asked, consume)


_shared: HttpClient | None = None


def client() -> HttpClient:
    """The process's client for plain downloads (one connection pool per proxy)."""
    global _shared
    if _shared is None:
        _shared = HttpClient()
    return _shared
