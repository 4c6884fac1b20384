"""Bazel HTTP remote cache client: GET/PUT/HEAD <prefix>/ac/<sha256> and <prefix>/cas/<sha256>
(and the compile cache's entries, <prefix>/compile-cache/<namespace>/<key>).

Works with bazel-remote and with any WebDAV server that stores what is PUT (nginx with
`dav_methods PUT`). The transport is the shared HTTP client (httpclient.py): keep-alive
connections, bodies streamed in 1 MiB blocks both ways, connection errors and 5xx answers
retried with backoff, a blob cut short resumed with Range (never delivered twice). A
timeout is not retried (a slow server would only make the build slower), and every
failure surfaces as RemoteError for the layer above to decide.

`--remote-timeout` bounds each read and is also a deadline for the whole request (plus one
second per MiB of a blob's size): a server that drips a byte a second would pass every
read's timeout forever. `abort` ends every request in flight at once (Ctrl-C).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from buildgraph.httpclient import HttpClient, HttpError
from buildgraph.store.remote import RDigest, RemoteError, RemoteOptions, redact


class HttpCache:
    def __init__(self, options: RemoteOptions):
        parts = urlsplit(options.url)
        self.options = options
        # credentials in the URL travel as a header (remote.credentials), never in the URL
        self.base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"
        self.name = redact(options.url)
        self.client = HttpClient(timeout=options.timeout, retries=options.retries, backoff=0.2,
                                 ca_file=options.ca_file, headers=dict(options.headers), retry_timeouts=False,
                                 connections=max(16, 3 * options.jobs))   # lookups, downloads, uploads

    def _call(self, path: str, blob_size: int, send):
        """`send(url, deadline)` on <prefix><path>, by the client; None when the server has no
        such entry (404)."""
        try:
            return send(self.base + path, self.options.timeout + blob_size / (1 << 20))
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise RemoteError(str(exc)) from None

    def _stream(self, path: str, sink, blob_size: int = 0) -> bool:
        """GET into `sink(chunk)`; False if the server does not have it."""
        return self._call(path, blob_size, lambda url, deadline: self.client.stream(
            url, sink, deadline=deadline)) is not None

    def _read(self, path: str, blob_size: int = 0) -> bytes | None:
        parts: list[bytes] = []
        return b"".join(parts) if self._stream(path, parts.append, blob_size) else None

    def _put(self, path: str, data: bytes) -> None:
        self._call(path, len(data), lambda url, deadline: self.client.request("PUT", url, data, deadline=deadline))

    # ------------------------------------------------------------ cache protocol

    def get_action_result(self, digest: RDigest) -> bytes | None:
        return self._read(f"/ac/{digest.hash}")

    def update_action_result(self, digest: RDigest, data: bytes) -> None:
        self._put(f"/ac/{digest.hash}", data)

    def find_missing(self, digests: list[RDigest]) -> list[RDigest]:
        def head(url, deadline):
            return self.client.request("HEAD", url, deadline=deadline)
        return [d for d in digests if self._call(f"/cas/{d.hash}", 0, head) is None]

    def upload_blob(self, digest: RDigest, path: str) -> None:
        self._call(f"/cas/{digest.hash}", digest.size,
                   lambda url, deadline: self.client.upload(url, Path(path), deadline=deadline))

    def download_blob(self, digest: RDigest, sink) -> bool:
        """Stream a blob into `sink(chunk)`; False if the server does not have it."""
        return self._stream(f"/cas/{digest.hash}", sink, digest.size)

    def read_blobs(self, digests: list[RDigest]) -> dict[RDigest, bytes]:
        found = {d: self._read(f"/cas/{d.hash}", d.size) for d in digests}
        return {d: data for d, data in found.items() if data is not None}

    def get_compile_entry(self, namespace: str, key: str) -> bytes | None:
        """A compile cache entry (compile_cache.py): <prefix>/compile-cache/<namespace>/<key>."""
        return self._read(f"/compile-cache/{namespace}/{key}")

    def put_compile_entry(self, namespace: str, key: str, data: bytes) -> None:
        self._put(f"/compile-cache/{namespace}/{key}", data)

    def abort(self) -> None:
        """End every request in flight now (their threads get RemoteError) and refuse new ones."""
        self.client.abort()

    def close(self) -> None:
        self.client.close()
