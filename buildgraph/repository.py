"""The artifact repository: push and pull artifacts under <commit>/<os>/<variant>/<linking>/.

Backends: a directory, an HTTP(S) WebDAV server (PUT/GET, e.g. nginx), and S3 (boto3).
A pull verifies every file against the SHA-256 recorded in the artifact's .meta before it
writes anything where the user asked; a mismatch is an error naming the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from buildgraph.digest import sha256_file
from buildgraph.errors import BuildgraphError, UsageError


class RepositoryError(BuildgraphError):
    """A push or pull could not be done, or what was pulled is not what was pushed."""


def resolve_commit(explicit: str | None, workspace: Path) -> str | None:
    """--git-sha, else $MXNET_SHA or $GIT_COMMIT, else `git rev-parse HEAD`, else None."""
    for value in (explicit, os.environ.get("MXNET_SHA"), os.environ.get("GIT_COMMIT")):
        if value:
            return value
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def working_tree(workspace: Path) -> str:
    """"clean" or "dirty" (a tracked file changed, or an untracked one not ignored: a build
    may read either) for a git checkout; "unknown" elsewhere."""
    try:
        proc = subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if proc.returncode != 0:
        return "unknown"
    return "dirty" if proc.stdout.strip() else "clean"


def os_id(release_file: str = "/etc/os-release") -> str:
    """ID+VERSION_ID from os-release, e.g. debian12."""
    fields = {}
    try:
        for line in Path(release_file).read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v.strip().strip('"')
    except OSError:
        return "unknown"
    return f"{fields.get('ID', 'unknown')}{fields.get('VERSION_ID', '').replace('.', '')}"


def read_meta(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def artifact_files(dist: Path) -> list[str]:
    return sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file())


# ---------------------------------------------------------------- backends

class DirectoryBackend:
    def __init__(self, root: str):
        self.root = Path(root)

    def put(self, key: str, source: Path) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    def get(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.root / key, dest)
        except FileNotFoundError:
            raise RepositoryError(f"{key}: not in the repository") from None


class WebDavBackend:
    def __init__(self, url: str, ca_file: str | None = None):
        from buildgraph.httpclient import HttpClient
        from buildgraph.store.remote import credentials

        self.base = url.rstrip("/")
        self.http = HttpClient(ca_file=ca_file, headers=dict(credentials(url)))

    def put(self, key: str, source: Path) -> None:
        try:
            self.http.upload(f"{self.base}/{key}", source)
        except OSError as exc:
            raise RepositoryError(f"PUT {key}: {exc}") from None

    def get(self, key: str, dest: Path) -> None:
        try:
            self.http.download(f"{self.base}/{key}", dest)
        except OSError as exc:
            raise RepositoryError(f"GET {key}: {exc}") from None


class S3Backend:
    """s3://bucket/prefix; endpoint from $BUILDGRAPH_S3_ENDPOINT (e.g. a moto server), credentials
    from the usual AWS environment variables."""

    def __init__(self, url: str):
        import boto3

        parts = urlsplit(url)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.client = boto3.client("s3", endpoint_url=os.environ.get("BUILDGRAPH_S3_ENDPOINT") or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, source: Path) -> None:
        self.client.upload_file(str(source), self.bucket, self._key(key))

    def get(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except Exception as exc:  # botocore's errors: report which key
            raise RepositoryError(f"{key}: {exc}") from None


def backend_for(url: str, ca_file: str | None = None):
    scheme = urlsplit(url).scheme
    if scheme in ("", "file"):
        return DirectoryBackend(url.removeprefix("file://"))
    if scheme in ("http", "https"):
        return WebDavBackend(url, ca_file)
    if scheme == "s3":
        return S3Backend(url)
    raise UsageError(f"unsupported artifact repository {url!r} (a directory, http(s):// or s3://)")


# ---------------------------------------------------------------- push / pull

def prefix_for(commit: str, os_name: str, variant: str, linking: str) -> str:
    return f"{commit}/{os_name}/{variant}/{linking}"


def push(dist: Path, url: str, git_sha: str | None = None, ca_file: str | None = None,
         allow_dirty: bool = False) -> str:
    """Upload an artifact's dist/ (the .meta last) under the commit its .meta records; returns
    the key prefix. `git_sha`, when given, must be that commit (or its abbreviation): filing
    an artifact under another commit than the one it names would make the repository lie.
    An artifact built from a dirty working tree is not what its commit makes: refused unless
    `allow_dirty`."""
    metas = list(dist.glob("*.meta"))
    if len(metas) != 1:
        raise RepositoryError(f"{dist} holds no artifact (.meta missing)")
    meta = read_meta(metas[0])
    commit = meta.get("commit", "unknown")
    if commit == "unknown":
        raise UsageError(f"{metas[0].name} records no commit (it was built outside a git checkout "
                         "without --git-sha); build it again with --git-sha COMMIT")
    if git_sha and not (len(git_sha) >= 4 and commit.startswith(git_sha)):
        raise UsageError(f"--git-sha {git_sha} is not the commit {metas[0].name} records ({commit}); "
                         f"build it again with --git-sha {git_sha} to push it as that commit")
    if meta.get("working_tree") == "dirty" and not allow_dirty:
        raise RepositoryError(f"{metas[0].name}: built from a working tree with uncommitted changes, so not "
                              f"what commit {commit[:12]} makes; commit and rebuild, or pass "
                              f"--allow-dirty")
    prefix = prefix_for(commit, meta["os"], meta["variant"], meta["linking"])
    backend = backend_for(url, ca_file)
    names = [n for n in artifact_files(dist) if not n.endswith(".meta")] + [metas[0].name]
    for name in names:
        backend.put(f"{prefix}/{name}", dist / name)
    return prefix


def pull(url: str, prefix: str, library: str, dest: Path, ca_file: str | None = None) -> list[str]:
    """Download an artifact into `dest`, verifying every file against its .meta; returns the files."""
    backend = backend_for(url, ca_file)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    backend.get(f"{prefix}/{library}.meta", staging / f"{library}.meta")
    meta = read_meta(staging / f"{library}.meta")
    files = [k[len("file."):-len(".sha256")] for k in meta if k.startswith("file.") and k.endswith(".sha256")]
    for name in files:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        backend.get(f"{prefix}/{name}", target)
        h = sha256_file(target)
        if h != meta[f"file.{name}.sha256"]:
            shutil.rmtree(staging, ignore_errors=True)
            raise RepositoryError(f"{prefix}/{name}: sha256 {h} does not match the .meta ({meta[f'file.{name}.sha256']}); "
                                  "nothing was written")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return sorted(files)
