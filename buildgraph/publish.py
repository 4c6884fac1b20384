"""Publishing: the last stage of a release, and the only one that holds credentials.

`buildgraph publish NODE... --to pypi:URL | maven:URL` ships artifacts that are already built
and audited. Their results are restored from the caches (the local one, or a remote one read
only); nothing is built: an artifact that is in no cache fails the command, naming it. So a CI
layout can build and test on ordinary machines with a read-write remote cache, and publish
from a restricted machine that restores and uploads.

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


class PublishError(BuildgraphError):
    """Nothing, or not everything, was published; the message says what and why."""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    source: str = "none"             # where they came from, for messages (never the values)

    def scrub(self, text: str) -> str:
        """`text` with the password (and anything that embeds it) replaced."""
        return text.replace(self.password, "****") if self.password else text

    def basic_auth(self) -> dict[str, str]:
        import base64

        if self.username is None or self.password is None:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


def credentials(url: str, user_var: str, password_var: str) -> Credentials:
    """The credentials for `url`: $user_var/$password_var, else the netrc entry for its host
    ($NETRC or ~/.netrc), else the keyring's (if the keyring package is installed)."""
    if os.environ.get(password_var):
        return Credentials(os.environ.get(user_var, "__token__"), os.environ[password_var], f"${password_var}")
    host = urlsplit(url).hostname or ""
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if os.path.isfile(path):
        try:
            found = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise PublishError(f"cannot read {path}: {exc}") from None
        if found:
            return Credentials(found[0], found[2], f"netrc ({path})")
    try:
        import keyring
        cred = keyring.get_credential(url, None)
    except Exception:   # no keyring package, or no backend on this machine: not an error
        cred = None
    if cred is not None and cred.password:
        return Credentials(cred.username, cred.password, "keyring")
    return Credentials()


@dataclass(frozen=True)
class Restored:
    node: str
    out: Path                        # its outputs (dist/, wheel/ ...), as the build left them
    target: object                   # workspace.Target
    assignment: dict[str, str]


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
    return [Restored(n, session.engine.out_dir(n), session.ws.targets[session.graph.nodes[n].target],
                     dict(session.graph.nodes[n].assignment)) for n in names]


def parse_destination(text: str) -> tuple[str, str]:
    """pypi:URL or maven:URL -> (kind, url)."""
    kind, sep, url = text.partition(":")
    if not sep or kind not in ("pypi", "maven") or not url.startswith(("http://", "https://", "file://")):
        raise UsageError(f"--to {text!r}: expected pypi:URL or maven:URL (http, https or file)")
    return kind, url
