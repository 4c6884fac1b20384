"""The HTTP client of downloads, artifact repositories, indexes and the remote cache, against a
loopback server that misbehaves on purpose: Retry-After, bodies cut short, a proxy, streamed
uploads, a server that drips or never answers."""

import http.server
import subprocess
import sys
import threading
import time

import pytest
from servers import HostileServer, drip, silent

from buildgraph.httpclient import HttpClient, HttpError, retry_after

BODY = bytes(range(256)) * 4096   # 1 MiB


class Server:
    """ThreadingHTTPServer on 127.0.0.1; `seen` lists (method, path, Range, proxied) of every request."""

    def __init__(self, flaky_answers=1, honour_range=True, cuts=1):
        self.seen, self.uploads = [], {}
        self.flaky_left, self.cut_left, self.honour_range = flaky_answers, cuts, honour_range
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxied = self.path.startswith("http://")
                path = "/" + self.path.split("/", 3)[3] if proxied else self.path
                outer.seen.append(("GET", path, self.headers.get("Range"), proxied))
                if path == "/flaky" and outer.flaky_left:
                    outer.flaky_left -= 1
                    return self.answer(503, b"busy", {"Retry-After": "1"})
                if path.endswith("/cut"):
                    wanted = self.headers.get("Range")
                    if wanted and outer.honour_range:
                        start = int(wanted.split("=")[1].rstrip("-"))
                        return self.answer(206, BODY[start:], {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"})
                    if outer.cut_left:   # half the body, then the connection drops
                        outer.cut_left -= 1
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(BODY)))
                        self.end_headers()
                        self.wfile.write(BODY[:len(BODY) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    return self.answer(200, BODY)
                if path in outer.uploads:
                    return self.answer(200, outer.uploads[path])
                found = path in ("/ok", "/flaky")
                return self.answer(200 if found else 404, b"ok" if found else b"no")

            def do_PUT(self):
                length = int(self.headers["Content-Length"])
                outer.seen.append(("PUT", self.path, self.headers.get("Transfer-Encoding"), False))
                data = bytearray()
                while len(data) < length:
                    data += self.rfile.read(min(65536, length - len(data)))
                outer.uploads[self.path] = bytes(data)
                self.answer(201, b"")

            def answer(self, status, body, headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def quick_client(**kw) -> tuple[HttpClient, list]:
    client = HttpClient(timeout=5, **kw)
    waits = []
    client.sleep = waits.append
    return client, waits


def test_retry_after_is_honoured_and_a_4xx_is_not_retried(server):
    client, waits = quick_client()
    assert client.request("GET", f"{server.url}/flaky").data == b"ok"
    assert waits == [1.0]   # what the server asked, not the backoff's 0.5 s
    with pytest.raises(HttpError) as info:
        client.request("GET", f"{server.url}/missing")
    assert info.value.status == 404 and waits == [1.0]
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("soon") is None


def test_an_error_answers_body_is_not_read_as_the_next_answer(server):
    # A kept-alive connection: what a refusal sent must be read off before the next request.
    client, waits = quick_client()
    for _ in range(20):
        with pytest.raises(HttpError):
            client.request("GET", f"{server.url}/missing")
        assert client.request("GET", f"{server.url}/ok").data == b"ok"
    assert waits == [] and len(server.seen) == 40


def test_a_download_cut_short_resumes_where_it_stopped(server, tmp_path):
    client, _ = quick_client()
    assert client.download(f"{server.url}/cut", tmp_path / "f") == len(BODY)
    assert (tmp_path / "f").read_bytes() == BODY
    ranges = [r for m, p, r, _ in server.seen if p == "/cut"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0, ranges


def test_a_server_ignoring_range_sends_it_all_again(tmp_path):
    server = Server(honour_range=False)
    try:
        client, _ = quick_client()
        client.download(f"{server.url}/cut", tmp_path / "f")
        assert (tmp_path / "f").read_bytes() == BODY
    finally:
        server.stop()


def test_one_budget_of_attempts_covers_refusals_and_cut_bodies(tmp_path):
    server = Server(honour_range=False, cuts=100)
    try:
        client, waits = quick_client(retries=2)
        with pytest.raises(HttpError):
            client.download(f"{server.url}/cut", tmp_path / "f")
        assert len([p for _, p, _, _ in server.seen if p == "/cut"]) == 3 and waits == [0.5, 1.0]
    finally:
        server.stop()


def test_a_stream_that_cannot_start_over_is_never_delivered_twice():
    # The remote cache streams a blob into a hash and a file: a server that answers a resume
    # with the whole body again must fail the request, not append a second copy.
    server = Server(honour_range=False)
    try:
        client, _ = quick_client()
        got = bytearray()
        with pytest.raises(HttpError, match="does not resume"):
            client.stream(f"{server.url}/cut", got.extend)
        assert bytes(got) == BODY[:len(got)] and 0 < len(got) < len(BODY)
    finally:
        server.stop()


def test_the_remote_cache_resumes_a_blob_cut_short(server):
    from buildgraph.store.http import HttpCache
    from buildgraph.store.remote import RDigest, RemoteOptions
    got = bytearray()
    assert HttpCache(RemoteOptions(url=server.url)).download_blob(RDigest("cut", len(BODY)), got.extend)
    assert bytes(got) == BODY
    assert [r is not None for _, p, r, _ in server.seen] == [False, True]


def test_a_deadline_ends_a_dripping_answer_and_is_not_retried():
    # Each byte arrives well within the read timeout: only the whole-request deadline ends it.
    dripping = HostileServer(drip)
    try:
        client, waits = quick_client()
        t = time.monotonic()
        with pytest.raises(HttpError, match=r"timed out \(not done within 1.5s\)"):
            client.stream(f"http://127.0.0.1:{dripping.port}/blob", lambda chunk: None, deadline=1.5)
        assert time.monotonic() - t < 30 and waits == []   # a hang guard, not a timing
    finally:
        dripping.close()


def aborted_while_asking(client, url: str, threads: int = 1) -> list[str]:
    """The errors of `threads` requests to `url` when `client` is aborted half a second in;
    every thread must have ended (a liveness bound, far below any wait the server asks)."""
    errors = []

    def ask():
        try:
            client.request("GET", url)
        except HttpError as exc:
            errors.append(str(exc))
    running = [threading.Thread(target=ask) for _ in range(threads)]
    for t in running:
        t.start()
    time.sleep(0.5)
    client.abort()
    for t in running:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in running)
    return errors


def test_abort_ends_requests_in_flight_and_refuses_new_ones():
    hanging = HostileServer(silent)
    try:
        client, _ = quick_client(retry_timeouts=False)
        client.timeout = 600
        errors = aborted_while_asking(client, f"http://127.0.0.1:{hanging.port}/ac/x", threads=3)
        assert len(errors) == 3 and all(e.endswith("aborted") for e in errors), errors
        with pytest.raises(HttpError, match="aborted"):
            client.request("GET", f"http://127.0.0.1:{hanging.port}/ac/y")
    finally:
        hanging.close()


def test_abort_ends_the_wait_before_a_retry():
    # A server asking to be retried in 30 s: Ctrl-C must not wait for that.
    def busy(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n")
        stop.wait()
    refusing = HostileServer(busy)
    try:
        errors = aborted_while_asking(HttpClient(timeout=5, retries=2), f"http://127.0.0.1:{refusing.port}/ac/x")
        assert len(errors) == 1 and errors[0].endswith("aborted"), errors
    finally:
        refusing.close()


def test_uploads_stream_a_file_with_its_length(server, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(BODY * 8)
    client, _ = quick_client()
    client.upload(f"{server.url}/up/big", big)
    assert server.uploads["/up/big"] == BODY * 8
    assert ("PUT", "/up/big", None, False) in server.seen    # Content-Length, not chunked


def test_requests_go_through_the_proxy_the_environment_names(server, monkeypatch):
    monkeypatch.setenv("http_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    client, _ = quick_client(retries=0)
    assert client.request("GET", "http://artifacts.invalid/ok").data == b"ok"
    assert server.seen[-1] == ("GET", "/ok", None, True)
    monkeypatch.setenv("no_proxy", "artifacts.invalid")
    with pytest.raises(HttpError):   # not proxied: the name does not resolve
        quick_client(retries=0)[0].request("GET", "http://artifacts.invalid/ok")


def test_a_noop_import_of_the_client_loads_no_http_or_tls():
    # The module is imported where a download starts; importing it loads neither.
    code = ("import sys, buildgraph.httpclient, buildgraph.sources, buildgraph.repository, buildgraph.publish; "
            "print(sorted(m for m in ('urllib3', 'http.client', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
