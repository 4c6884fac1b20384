"""Publishing: the last stage of a release, and the only one that holds credentials.

`buildgraph publish NODE... --to pypi:URL | maven:URL` ships artifacts that are already built
and audited. Their results are restored from the caches (the local one, or a remote one read
only); nothing is built: an artifact that is in no cache fails the command, naming it. So a CI
layout can build and test on ordinary machines with a read-write remote cache, and publish
from a restricted machine that restores and uploads. pypi.py and maven.py do the uploading.

Credentials are looked up here only: the environment (the names the index's own client
reads), then a netrc file, then a keyring. They reach an upload client through its
environment, never its arguments, and every message is scrubbed of them; keys, logs, event
logs and manifests never see them (publishing writes none of those).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from buildgraph.errors import BuildgraphError, UsageError

# Where each destination's credentials are found first: the names its own client reads.
CREDENTIAL_VARS = {"pypi": ("TWINE_USERNAME", "TWINE_PASSWORD"), "maven": ("MAVEN_USERNAME", "MAVEN_PASSWORD")}


class PublishError(BuildgraphError):
    """Nothing, or not everything, was published; the message says what and why."""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None

    def scrub(self, text: str) -> str:
        """`text` with the password replaced."""
        return text.replace(self.password, "****") if self.password else text

    def request(self, url: str, method: str = "GET", data: bytes | None = None, headers=None):
        """An httpclient.Response, with these credentials (HTTP basic auth) where there are any;
        HttpError (an OSError, `status` set for an HTTP answer) when it fails. A file:// URL
        (a repository on disk) is read directly."""
        from buildgraph.httpclient import HttpError, Response, client
        from buildgraph.store.remote import basic_auth

        if url.startswith("file://"):
            path = Path(url[len("file://"):])
            if not path.is_file():
                raise HttpError(f"{url}: not found", 404)
            return Response(200, {"content-length": str(path.stat().st_size)},
                            b"" if method == "HEAD" else path.read_bytes(), url)
        auth = {"Authorization": basic_auth(self.username or "", self.password)} if self.password else {}
        return client().request(method, url, body=data, headers={**auth, **(headers or {})})


def credentials(url: str, kind: str) -> Credentials:
    """The credentials for `url`: the destination's variables, else the netrc entry for its
    host, else the keyring's (if the keyring package is installed and has a backend)."""
    from buildgraph.store.remote import netrc_login

    user_var, password_var = CREDENTIAL_VARS[kind]
    if os.environ.get(password_var):
        return Credentials(os.environ.get(user_var, "__token__"), os.environ[password_var])
    found = netrc_login(urlsplit(url).hostname or "")
    if found:
        return Credentials(*found)
    try:
        import keyring
        cred = keyring.get_credential(url, None)
    except Exception:   # no keyring package, or no backend on this machine: not an error
        cred = None
    return Credentials(cred.username, cred.password) if cred is not None and cred.password else Credentials()


@dataclass(frozen=True)
class Request:
    """What to publish, besides the artifacts and the destination."""

    nightly: str | None = None        # the nightly's date (YYYYMMDD); None: a release
    index_url: str | None = None      # pypi: its simple index (default: URL/simple/)
    group: str | None = None          # maven: the groupId
    prune_keep: int | None = None     # pypi: delete all but this many nightlies instead of uploading


@dataclass(frozen=True)
class Restored:
    node: str
    out: Path                        # its outputs (dist/, wheel/ ...), as the build left them
    target: object                   # workspace.Target


def restore(session, patterns: list[str]) -> list[Restored]:
    """The artifact nodes `patterns` name, their results restored from the caches; fails
    (naming them) if any is not built."""
    from buildgraph import operations, ui

    names: list[str] = []
    for pattern in patterns:
        found = session.graph.resolve(pattern)
        for name in found:
            if session.ws.targets[session.graph.nodes[name].target].kind != "artifact":
                raise UsageError(f"{name} is not an artifact node: publish ships artifacts (kind: artifact)")
        names += [n for n in found if n not in names]
    summary = operations.build(session, names, ui.make_reporter(sys.stderr))
    if not summary.ok:
        done = {o.name for o in summary.outcomes if not o.error}
        missing = [n for n in names if n not in done]
        below = [o.name for o in summary.outcomes if o.error and o.name not in names]
        raise PublishError(f"not built: {', '.join(missing)}" + (f" (nor {', '.join(below)})" if below else "")
                           + "; publish restores artifacts from the caches and never builds them: run "
                           f"`buildgraph build {' '.join(missing)}` first (or point --remote-cache at the "
                           "cache CI filled)")
    return [Restored(n, session.engine.out_dir(n), session.ws.targets[session.graph.nodes[n].target])
            for n in names]


def parse_destination(text: str) -> tuple[str, str]:
    """pypi:URL or maven:URL -> (kind, url)."""
    kind, sep, url = text.partition(":")
    if not sep or kind not in CREDENTIAL_VARS or not url.startswith(("http://", "https://", "file://")):
        raise UsageError(f"--to {text!r}: expected pypi:URL or maven:URL (http, https or file)")
    return kind, url


def publish(kind: str, restored: list[Restored], url: str, request: Request) -> list[str]:
    """Publish the restored artifacts to one destination; the lines that report it.
    PublishError, scrubbed of the credentials, if it fails."""
    from buildgraph import maven, pypi

    creds = credentials(url, kind)
    try:
        return (maven if kind == "maven" else pypi).publish_artifacts(restored, url, creds, request)
    except PublishError as exc:
        raise PublishError(creds.scrub(str(exc))) from None
