"""Real cache servers for tests: nginx (WebDAV, the Bazel HTTP cache protocol) and
BuildGrid (REAPI CAS + ActionCache), each started in the test's own directory on a
free loopback port and stopped by PID.

BuildGrid runs from its own virtualenv (its dependencies pin versions that clash with
ours): $BUILDGRAPH_TEST_BUILDGRID names its `bgd`, default
$BUILDGRAPH_TEST_SERVERS/buildgrid/bin/bgd (default ~/.cache/buildgraph-test-servers),
which `.ci/setup --tests` installs.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from buildgraph.locations import user_cache_dir

SERVERS = Path(os.environ.get("BUILDGRAPH_TEST_SERVERS") or user_cache_dir() / "buildgraph-test-servers")
BGD = Path(os.environ.get("BUILDGRAPH_TEST_BUILDGRID") or SERVERS / "buildgrid" / "bin" / "bgd")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {seconds}s:\n{log.read_text()[-2000:]}")


class Server:
    kind = ""
    url = ""
    proc: subprocess.Popen

    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """Stop it hard, as a crash would: SIGKILL to its whole process group (nginx's
        workers would otherwise go on serving after their master died)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        """Stop it by PID (SIGTERM to the server process; it stops its own workers)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # anything left of its process group


class NginxServer(Server):
    """nginx with WebDAV PUT: GET/PUT/HEAD /ac/<sha256> and /cas/<sha256>."""

    kind = "nginx"

    def __init__(self, root: Path, basic_auth: tuple[str, str] | None = None, tls: tuple[Path, Path] | None = None):
        self.root = root
        self.data = root / "data"
        for d in ("data", "logs", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        auth = ""
        if basic_auth:
            user, password = basic_auth
            hashed = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True, text=True,
                                    check=True).stdout.strip()
            (root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f'auth_basic "cache"; auth_basic_user_file {root}/htpasswd;'
        conf = f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
user root;
events {{ worker_connections 256; }}
http {{
    access_log {root}/logs/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.data};
        client_max_body_size 0;
        location / {{
            {auth}
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""
        if tls:
            cert, key = tls
            conf = conf.replace(f"listen 127.0.0.1:{self.port};",
                                f"listen 127.0.0.1:{self.port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};")
        (root / "nginx.conf").write_text(conf)
        log = root / "logs" / "stderr.log"
        self.proc = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, log)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def blobs(self) -> list[Path]:
        return sorted((self.data / "cas").glob("*")) if (self.data / "cas").is_dir() else []

    def blob_path(self, sha256: str) -> Path:
        return self.data / "cas" / sha256

    def stored(self) -> int:
        return sum(1 for p in self.data.rglob("*") if p.is_file())

    def put_action_result(self, action_digest: dict, data: bytes) -> None:
        path = self.data / "ac" / action_digest["hash"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get_action_result(self, action_digest: dict) -> bytes | None:
        path = self.data / "ac" / action_digest["hash"]
        return path.read_bytes() if path.exists() else None


def buildgrid_config(port: int, cas_dir: Path | None, dsn: str | None, keepalive: int = 5) -> str:
    """A BuildGrid config: CAS + ByteStream + ActionCache (disk storage when `cas_dir`, else
    memory), and with `dsn` also the SQL scheduler with the Execution and Bots services."""
    storage = f"  - !disk-storage &cas\n    path: {cas_dir}" if cas_dir else "  - !lru-storage &cas\n    size: 512M"
    execution = ""
    if dsn:
        execution = f"""connections:
  - !sql-connection &sql
    connection-string: {dsn}
    pool-size: 5
    pool-timeout: 30
    max-overflow: 10
schedulers:
  - !sql-scheduler &sched
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: {keepalive}
    poll-interval: 0.05
    bot-poll-interval: 0.05
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily, ISA]
      wildcard-property-keys: [toolchain]
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.2
        bot-assignment-strategy: !assign-by-capacity
"""
    services = "      - !execution\n        scheduler: *sched\n      - !bots\n        scheduler: *sched\n" if dsn else ""
    return f"""description: buildgraph test server
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
storages:
{storage}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 10000
    allow-updates: true
    cache-failed-actions: false
{execution}instances:
  - name: ""
    services:
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
      - !action-cache
        cache: *ac
{services}thread-pool-size: 16
"""


class BuildGridServer(Server):
    """BuildGrid 0.4.4: CAS + ByteStream + ActionCache with disk storage; with `dsn`, the
    Execution and Bots services too (SQL scheduler, in-memory CAS)."""

    kind = "buildgrid"

    def __init__(self, root: Path, dsn: str | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.cas = root / "cas"
        if dsn:
            subprocess.run([str(BGD), "migrate", "apply", dsn], check=True, capture_output=True)
        else:
            self.cas.mkdir(exist_ok=True)
        self.port = free_port()
        (root / "bgd.yml").write_text(buildgrid_config(self.port, None if dsn else self.cas, dsn))
        log = root / "bgd.log"
        self.proc = subprocess.Popen([str(BGD), "server", "start", "-v", "--pid-file", str(root / "bgd.pid"),
                                      str(root / "bgd.yml")], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(self.port, self.proc, log, seconds=60)
        self.url = f"grpc://127.0.0.1:{self.port}"
        self._ready()

    def _ready(self) -> None:
        """Wait until the services answer (the port opens before they are registered)."""
        deadline = time.time() + 30
        while True:
            try:
                self._stub("ActionCacheStub").GetActionResult(
                    self._pb().GetActionResultRequest(action_digest=self._pb().Digest(hash="0" * 64, size_bytes=1)),
                    timeout=2)
            except Exception as exc:  # NOT_FOUND means it is serving
                if "NOT_FOUND" in str(getattr(exc, "code", lambda: "")()) or time.time() > deadline:
                    return
                time.sleep(0.1)

    def _pb(self):
        from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2
        return remote_execution_pb2

    def _stub(self, name: str):
        import grpc
        from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc
        return getattr(remote_execution_pb2_grpc, name)(grpc.insecure_channel(f"127.0.0.1:{self.port}"))

    def blobs(self) -> list[Path]:
        return sorted(p for p in self.cas.rglob("*") if p.is_file())

    def blob_path(self, sha256: str) -> Path:
        return self.cas / "cas" / "objects" / sha256[:2] / sha256[2:]

    def stored(self) -> int:
        return len(self.blobs())

    def put_action_result(self, action_digest: dict, data: bytes) -> None:
        pb = self._pb()
        self._stub("ActionCacheStub").UpdateActionResult(pb.UpdateActionResultRequest(
            action_digest=pb.Digest(**action_digest), action_result=pb.ActionResult.FromString(data)), timeout=10)

    def get_action_result(self, action_digest: dict) -> bytes | None:
        import grpc
        pb = self._pb()
        try:
            return self._stub("ActionCacheStub").GetActionResult(pb.GetActionResultRequest(
                action_digest=pb.Digest(**action_digest)), timeout=10).SerializeToString()
        except grpc.RpcError:
            return None


def make_tls(root: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    root.mkdir(parents=True, exist_ok=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=buildgraph test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "cert.csr")
    (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "cert.pem")
    return root / "ca.pem", root / "cert.pem", root / "key.pem"


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class MotoS3Server(Server):
    """moto's standalone server: the S3 API on loopback (for the artifact repository)."""

    kind = "moto"

    def __init__(self, root: Path):
        import sys
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = root / "moto.log"
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, log)
        self.url = f"http://127.0.0.1:{self.port}"


class PypiServer(Server):
    """pypiserver: a Python package index (simple API, upload API, removal) on loopback; uploads
    and removals need the user in its htpasswd file, listing and downloads need nothing."""

    kind = "pypiserver"

    def __init__(self, root: Path, user: str, password: str):
        import sys
        from passlib.apache import HtpasswdFile

        root.mkdir(parents=True, exist_ok=True)
        (root / "packages").mkdir(exist_ok=True)
        htpasswd = HtpasswdFile(str(root / "htpasswd"), new=True)
        htpasswd.set_password(user, password)
        htpasswd.save()
        self.port = free_port()
        log = root / "pypiserver.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(self.port),
             "-P", str(root / "htpasswd"), "-a", "update", "--hash-algo", "sha256", str(root / "packages")],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, log)
        self.url = f"http://127.0.0.1:{self.port}"
        self.packages = root / "packages"


PG_USER = "bgpg"   # PostgreSQL refuses to run as root; .ci/setup --tests creates this user


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise FileNotFoundError(name)


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster (initdb in the test's directory, trust auth, loopback)."""

    kind = "postgres"

    def __init__(self, root: Path):
        import tempfile
        # Its own directory in /tmp: pytest's temp root is 0700 (root only), and PostgreSQL
        # runs as an unprivileged user that must reach its data directory.
        root = Path(tempfile.mkdtemp(prefix="bg-pg-"))
        shutil.chown(root, PG_USER)
        self.root, self.port = root, free_port()
        run = ["runuser", "-u", PG_USER, "--"]
        subprocess.run(run + [_pg_bin("initdb"), "-D", str(root / "data"), "-U", "bgd", "--auth=trust"],
                       check=True, capture_output=True)
        log = root / "pg.log"
        self.proc = subprocess.Popen(run + [_pg_bin("postgres"), "-D", str(root / "data"), "-h", "127.0.0.1",
                                            "-p", str(self.port), "-k", str(root)],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, log)
        for _ in range(50):
            if subprocess.run(run + [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "bgd",
                                     "bgd"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        self.dsn = f"postgresql+psycopg2://bgd@127.0.0.1:{self.port}/bgd"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


class WorkerProcess(Server):
    """A `buildgraph worker` process with its own store."""

    kind = "worker"

    def __init__(self, root: Path, server_url: str, toolchain_dir: Path | None = None, slots: int = 1):
        import sys
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "worker.log"
        cmd = [sys.executable, "-m", "buildgraph", "worker", "--server", server_url, "--slots", str(slots),
               "--cache-dir", str(root / "cache")]
        if toolchain_dir:
            cmd += ["--toolchain-dir", str(toolchain_dir)]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        deadline = time.time() + 30
        while "serving" not in self.log.read_text() and time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.1)

    def ran(self) -> list[str]:
        return [line.split("running ", 1)[1].split(" (")[0] for line in self.log.read_text().splitlines()
                if "] running " in line]


class HostileServer:
    """A loopback port whose every connection goes to `handle(conn, stop)` on a thread of its
    own: a remote that hangs, drips, or otherwise misbehaves. `close` stops it."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self._handle = handle
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self._handle(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def silent(conn, stop) -> None:
    """Accept and never answer: a remote that hangs."""
    stop.wait()


def drip(conn, stop) -> None:
    """An HTTP answer at one byte every half second, forever."""
    conn.recv(65536)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000:
        if stop.is_set():
            return
        conn.send(bytes([byte]))
        time.sleep(0.5)
