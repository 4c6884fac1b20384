"""The remote-cache boundary: what crosses it and how it is named there.

Locally, actions are keyed and blobs named by xxh3-128. Remote protocols (the Bazel
HTTP cache, REAPI) name everything by SHA-256, and bazel-remote validates that, so
the mapping happens here and nowhere else:

  action digest   SHA-256 of the action's canonical key bytes (`Action.key_bytes`, the
                  same bytes whose xxh3 is the local key), with their length as size.
                  An AC entry is therefore found by anyone who computes the same key.
  blob digest     SHA-256 of the blob's content and its size. The local store remembers
                  the SHA-256 of each blob it uploads or downloads (LocalStore.sha256_of).
  AC value        a serialized REAPI v2 ActionResult: output_files (path, digest,
                  is_executable), output_symlinks, stdout/stderr digests, exit code.

`decode_result` validates what comes back: a result that does not parse, names an
absolute path, a path or symlink leaving the output root, a tree that cannot be written
as a whole (`action.check_tree`), an output directory, or a malformed digest is rejected
(BadResult) — the caller treats it as a miss, and also rejects a result whose paths are
not exactly the node's declared outputs (`action.check_declared`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from buildgraph.action import BadResult, check_relpath, check_symlink, check_tree


class RemoteError(Exception):
    """The remote could not be used (down, timed out, refused, answered nonsense)."""


@dataclass(frozen=True)
class RDigest:
    hash: str   # SHA-256, lowercase hex
    size: int

    def check(self) -> "RDigest":
        if len(self.hash) != 64 or any(c not in "0123456789abcdef" for c in self.hash) or self.size < 0:
            raise BadResult(f"bad remote digest {self.hash!r}/{self.size}")
        return self


def sha256_bytes(data: bytes) -> RDigest:
    return RDigest(hashlib.sha256(data).hexdigest(), len(data))


def action_digest(key_bytes: bytes) -> RDigest:
    return sha256_bytes(key_bytes)


@dataclass
class RemoteOptions:
    url: str
    read_only: bool = False
    instance_name: str = ""
    headers: tuple[tuple[str, str], ...] = ()   # credentials live here: never printed, never keyed
    ca_file: str | None = None
    timeout: float = 10.0
    retries: int = 2
    jobs: int = 8


def redact(url: str) -> str:
    """The URL as it may be printed: no user or password."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return parts._replace(netloc=f"***@{host}").geturl()
    return url


def netrc_login(host: str) -> tuple[str, str] | None:
    """(login, password) for `host` in the netrc file ($BUILDGRAPH_NETRC, else $NETRC, else
    ~/.netrc); None if there is no such file or entry."""
    import netrc

    path = os.environ.get("BUILDGRAPH_NETRC") or os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return (found[0], found[2] or "") if found else None


def basic_auth(user: str, password: str) -> str:
    """An Authorization header's value for HTTP basic auth."""
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def credentials(url: str) -> tuple[tuple[str, str], ...]:
    """Headers for `url` from the environment and a netrc file.

    BUILDGRAPH_REMOTE_HEADERS: lines of `Name: value` (e.g. an Authorization bearer token).
    A netrc entry for the host (see netrc_login) gives HTTP basic auth.
    Userinfo in the URL itself also gives basic auth.
    """
    headers = []
    for line in os.environ.get("BUILDGRAPH_REMOTE_HEADERS", "").splitlines():
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    parts = urlsplit(url)
    user, password = parts.username, parts.password
    if user is None:
        user, password = netrc_login(parts.hostname or "") or (None, None)
    if user is not None and not any(n.lower() == "authorization" for n, _ in headers):
        headers.append(("Authorization", basic_auth(user, password or "")))
    return tuple(headers)


# ---------------------------------------------------------------- ActionResult <-> REAPI

def reapi():
    """The REAPI v2 message module (imported only when a remote is configured)."""
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2

    return remote_execution_pb2


@dataclass
class RemoteResult:
    """A validated remote ActionResult, still in remote (SHA-256) terms."""

    files: list[tuple[str, RDigest, bool]] = field(default_factory=list)   # path, digest, executable
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    stdout: RDigest | None = None
    stderr: RDigest | None = None
    exit_code: int = 0
    duration: float = 0.0   # how long the action ran where it ran (scheduling, never correctness)

    def blobs(self) -> list[RDigest]:
        found = {d for _, d, _ in self.files}
        found.update(d for d in (self.stdout, self.stderr) if d is not None)
        return sorted(found, key=lambda d: d.hash)


def duration_digest(scope: str, node: str) -> RDigest:
    """Where the remote keeps how long `node` of workspace `scope` last took to run, whatever
    its key: an AC entry of its own, so a fresh machine schedules a node whose key changed
    by its real size. A remote can lie here only about scheduling order, never outputs."""
    return sha256_bytes(f"buildgraph duration\0{scope}\0{node}".encode())


def encode_duration(duration: float) -> bytes:
    """An empty ActionResult carrying only a duration (what `duration_digest` names)."""
    return encode_result([], [], None, None, 0, duration)


def encode_result(files, symlinks, stdout: RDigest | None, stderr: RDigest | None, exit_code: int,
                  duration: float = 0.0) -> bytes:
    """A serialized REAPI ActionResult. `files`: (path, RDigest, executable). The duration
    travels as the execution's start and end (from the epoch: the bytes stay deterministic)."""
    pb = reapi()
    result = pb.ActionResult(exit_code=exit_code)
    for path, digest, exe in sorted(files):
        result.output_files.add(path=path, digest=pb.Digest(hash=digest.hash, size_bytes=digest.size),
                                is_executable=exe)
    for path, target in sorted(symlinks):
        result.output_symlinks.add(path=path, target=target)
    if stdout is not None:
        result.stdout_digest.CopyFrom(pb.Digest(hash=stdout.hash, size_bytes=stdout.size))
    if stderr is not None:
        result.stderr_digest.CopyFrom(pb.Digest(hash=stderr.hash, size_bytes=stderr.size))
    result.execution_metadata.worker = "buildgraph"
    if duration > 0:
        result.execution_metadata.execution_start_timestamp.FromNanoseconds(0)
        result.execution_metadata.execution_completed_timestamp.FromNanoseconds(int(duration * 1e9))
    return result.SerializeToString(deterministic=True)


def result_duration(result) -> float:
    """Seconds between a parsed ActionResult's execution start and end (0 if unrecorded or absurd)."""
    meta = result.execution_metadata
    if not (meta.HasField("execution_start_timestamp") and meta.HasField("execution_completed_timestamp")):
        return 0.0
    seconds = (meta.execution_completed_timestamp.ToNanoseconds() - meta.execution_start_timestamp.ToNanoseconds()) / 1e9
    return seconds if 0 < seconds < 7 * 86400 else 0.0


def decode_duration(data: bytes) -> float | None:
    """The duration in a record `encode_duration` made; None if it does not parse."""
    from google.protobuf.message import DecodeError

    try:
        return result_duration(reapi().ActionResult.FromString(data)) or None
    except (DecodeError, ValueError):
        return None


def decode_result(data: bytes) -> RemoteResult:
    """Parse and validate a remote ActionResult; BadResult if it must not be used."""
    pb = reapi()
    from google.protobuf.message import DecodeError

    try:
        result = pb.ActionResult.FromString(data)
    except (DecodeError, ValueError) as exc:
        raise BadResult(f"remote action result does not parse: {exc}") from None
    if result.output_directories or result.output_directory_symlinks:
        raise BadResult("remote action result has output directories (buildgraph records files)")
    out = RemoteResult(exit_code=result.exit_code, duration=result_duration(result))
    if result.exit_code != 0:
        raise BadResult(f"remote action result records a failure (exit code {result.exit_code})")
    for f in result.output_files:
        out.files.append((check_relpath(f.path), RDigest(f.digest.hash, f.digest.size_bytes).check(),
                          bool(f.is_executable)))
    for s in list(result.output_symlinks) + list(result.output_file_symlinks):
        out.symlinks.append((check_relpath(s.path), check_symlink(s.path, s.target)))
    if result.HasField("stdout_digest") and result.stdout_digest.hash:
        out.stdout = RDigest(result.stdout_digest.hash, result.stdout_digest.size_bytes).check()
    if result.HasField("stderr_digest") and result.stderr_digest.hash:
        out.stderr = RDigest(result.stderr_digest.hash, result.stderr_digest.size_bytes).check()
    check_tree([p for p, _, _ in out.files], dict(out.symlinks))
    if len(out.symlinks) != len(dict(out.symlinks)):
        raise BadResult("remote action result names a symlink twice")
    return out


def open_remote(options: RemoteOptions):
    """The client for `options.url`: http(s):// → Bazel HTTP cache, grpc(s):// → REAPI."""
    scheme = urlsplit(options.url).scheme
    if scheme in ("http", "https"):
        from buildgraph.store.http import HttpCache
        return HttpCache(options)
    if scheme in ("grpc", "grpcs"):
        from buildgraph.store.reapi import ReapiCache
        return ReapiCache(options)
    from buildgraph.errors import UsageError
    raise UsageError(f"--remote-cache: unsupported scheme {scheme!r} in {redact(options.url)} "
                     "(use http, https, grpc or grpcs)")
