"""Publish wheels to a Python package index (PyPI, pypiserver, devpi ...).

What the index holds is read from its simple API (PEP 503: each file's link, with its
SHA-256 in the fragment); uploads go through twine (the upload API PyPI speaks). A release
file is immutable, as on PyPI: the same file name with the same bytes is already published
(skipped), with other bytes refused before anything is uploaded. Nightlies are PEP 440 dev
releases of the artifact's version, 1.9.0.devYYYYMMDDN: the wheel is rewritten with that
version (its payload untouched); an identical nightly of the same day is not uploaded again.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from buildgraph.artifact import write_wheel
from buildgraph.digest import sha256_file
from buildgraph.publish import Credentials, PublishError, Request, Restored
from buildgraph.sources import WheelName, wheel_stem


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.links.append((self._href, data.strip()))
            self._href = None


class Index:
    """One index: `upload_url` takes uploads; `simple_url` lists files."""

    def __init__(self, upload_url: str, creds: Credentials, simple_url: str | None = None):
        self.upload_url = upload_url.rstrip("/") + "/"
        simple_url = simple_url or urljoin(re.sub(r"legacy/?$", "", self.upload_url), "simple/")
        self.simple_url = simple_url.rstrip("/") + "/"
        self.creds = creds

    def files(self, project: str) -> dict[str, IndexFile]:
        """The files the index has for `project` (none if it does not know the project)."""
        url = f"{self.simple_url}{wheel_stem(project).replace('_', '-')}/"   # PEP 503
        try:
            resp = self.creds.request(url)
        except OSError as exc:
            if getattr(exc, "status", None) == 404:
                return {}
            raise PublishError(f"cannot read the index at {url}: {exc}") from None
        page, base = resp.data.decode("utf-8", "replace"), resp.url
        parser = _Links()
        parser.feed(page)
        out = {}
        for href, text in parser.links:
            link, _, fragment = href.partition("#")
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            out[text] = IndexFile(text, urljoin(base, link), digest)
        return out

    def sha256(self, f: IndexFile) -> str:
        if f.sha256:
            return f.sha256
        return hashlib.sha256(self.creds.request(f.url).data).hexdigest()

    def size(self, f: IndexFile) -> int:
        try:
            length = self.creds.request(f.url, method="HEAD").headers.get("content-length")
            if length is not None:
                return int(length)
        except (OSError, ValueError):
            pass
        return len(self.creds.request(f.url).data)

    def upload(self, paths: list[Path]) -> None:
        """Upload with twine; the credentials go through its environment."""
        try:
            import twine  # noqa: F401
        except ImportError:
            raise PublishError("publishing to an index uses twine: pip install 'buildgraph[publish]' "
                               "(bash .ci/setup installs it)") from None
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWINE_")}
        if self.creds.password is not None:
            env.update(TWINE_USERNAME=self.creds.username or "__token__", TWINE_PASSWORD=self.creds.password)
        proc = subprocess.run([sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
                               "--repository-url", self.upload_url, *map(str, paths)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise PublishError(f"twine could not upload to {self.upload_url}:\n{tail}")

    def remove(self, project: str, version: str) -> bool:
        """Delete one version, where the index offers it (pypiserver's remove_pkg); False where
        it does not (PyPI offers no deletion through its API)."""
        body = f":action=remove_pkg&name={project}&version={version}".encode()
        try:
            self.creds.request(self.upload_url, method="POST", data=body,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
            return True
        except OSError as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                raise PublishError(f"{self.upload_url}: deleting {project} {version} was refused "
                                   f"(HTTP {status}): check the credentials") from None
            if status is not None:
                return False
            raise PublishError(f"cannot reach {self.upload_url}: {exc}") from None


def dev_version(base: str, date: str, n: int) -> str:
    """A nightly's PEP 440 version: 1.9.0 built on 20261122, the 2nd that day -> 1.9.0.dev202611222."""
    return f"{base}.dev{date}{n}"


def _nightly_parts(version: str) -> tuple[str, str, int] | None:
    """1.9.0.dev202611222 -> ("1.9.0", "20261122", 2); None for a version that is no nightly."""
    m = re.fullmatch(r"(.+)\.dev(\d{8})(\d+)", version)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


def with_version(wheel: Path, version: str, out_dir: Path) -> Path:
    """The same wheel at another version: dist-info renamed, METADATA's Version and RECORD
    rewritten, every other file byte for byte (the artifact is not rebuilt)."""
    name = WheelName.parse(wheel.name)
    old_info, new_info = f"{name.project}-{name.version}.dist-info/", f"{name.project}-{version}.dist-info/"
    target = out_dir / wheel.name.replace(f"{name.project}-{name.version}-", f"{name.project}-{version}-", 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            data = z.read(info)
            arcname = new_info + info.filename[len(old_info):] if info.filename.startswith(old_info) else info.filename
            if arcname == f"{new_info}RECORD":
                continue
            if arcname == f"{new_info}METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), data, count=1)
            entries.append((arcname, data, info.external_attr >> 16))
    write_wheel(target, entries, new_info.rstrip("/"))
    return target


@dataclass
class Planned:
    node: str
    path: Path                 # the file to upload (the artifact's wheel, or its nightly form)
    already: bool              # the index has it, byte for byte


def plan(wheels: list[tuple[str, Path]], index: Index, nightly_date: str | None, work: Path) -> list[Planned]:
    """What to upload for each (node, wheel); PublishError (before anything is uploaded) for a
    release file the index has with other bytes, or two nodes making one file name."""
    out, refused, seen = [], [], {}
    for node, wheel in wheels:
        name = WheelName.parse(wheel.name)
        existing = index.files(name.project)
        path = wheel if nightly_date is None else _nightly(wheel, name.version, nightly_date, existing, index,
                                                             work / node)
        digest = sha256_file(path)
        if path.name in seen and seen[path.name][1] != digest:
            refused.append(f"{node} and {seen[path.name][0]} both make {path.name}, with different contents: "
                           "give each variant its own project (project: \"name-{axis}\")")
        seen[path.name] = (node, digest)
        there = existing.get(path.name)
        if there is not None and index.sha256(there) != digest:
            refused.append(f"{node}: {index.simple_url} already has {path.name} with other contents; a release "
                           f"file cannot be replaced (PyPI's rule): publish a new version, or a nightly (--nightly)")
        out.append(Planned(node, path, there is not None))
    if refused:
        raise PublishError("nothing was uploaded:\n  " + "\n  ".join(refused))
    return out


def _nightly(wheel: Path, base: str, date: str, existing: dict[str, IndexFile], index: Index, work: Path) -> Path:
    """The wheel as this day's nightly: the one the index has with these very bytes, else the
    day's next number."""
    numbers = sorted(parts[2] for parts in map(_nightly_parts, _versions(existing))
                     if parts and parts[:2] == (base, date))
    for number in numbers:
        candidate = with_version(wheel, dev_version(base, date, number), work)
        there = existing.get(candidate.name)
        if there is not None and index.sha256(there) == sha256_file(candidate):
            return candidate
    return with_version(wheel, dev_version(base, date, (numbers[-1] + 1) if numbers else 1), work)


def _versions(files: dict[str, IndexFile]) -> set[str]:
    return {parsed.version for parsed in map(WheelName.parse, files) if parsed}


def prune_nightlies(index: Index, projects: list[str], keep: int) -> list[tuple[str, str, int]]:
    """Delete all but the `keep` newest nightlies of each project: (project, version, bytes)
    of each one removed. PublishError where the index does not allow deletion."""
    from packaging.version import Version

    removed = []
    for project in projects:
        by_version: dict[str, list[IndexFile]] = {}
        for f in index.files(project).values():
            parsed = WheelName.parse(f.filename)
            if parsed and _nightly_parts(parsed.version):
                by_version.setdefault(parsed.version, []).append(f)
        versions = sorted(by_version, key=Version)
        for version in versions[:max(0, len(versions) - keep)]:
            size = sum(index.size(f) for f in by_version[version])
            if not index.remove(project, version):
                raise PublishError(f"{index.upload_url} does not allow deleting releases (PyPI's API has no "
                                   f"deletion): {project} {version} and older nightlies stay; removed so far: "
                                   f"{len(removed)}")
            removed.append((project, version, size))
    return removed


def publish_artifacts(restored: list[Restored], url: str, creds: Credentials, request: Request) -> list[str]:
    """Every restored artifact's wheel to the index at `url` (or, with request.prune_keep, its
    old nightlies deleted); the lines that report it."""
    index = Index(url, creds, request.index_url)
    wheels = []
    for r in restored:
        found = sorted((r.out / "wheel").glob("*.whl"))
        if not found:
            raise PublishError(f"{r.node} makes no wheel: give its target a 'wheel:' name")
        wheels += [(r.node, w) for w in found]
    if request.prune_keep is not None:
        projects = list(dict.fromkeys(WheelName.parse(w.name).project for _, w in wheels))
        removed = prune_nightlies(index, projects, request.prune_keep)
        return [f"removed {project} {version} ({size} bytes)" for project, version, size in removed] + [
            f"pruned {len(removed)} nightlies, {sum(r[2] for r in removed)} bytes freed; kept the "
            f"{request.prune_keep} newest of each of {len(projects)} projects"]
    with tempfile.TemporaryDirectory(prefix="bg-publish-") as work:
        planned = plan(wheels, index, request.nightly, Path(work))
        new = [p.path for p in planned if not p.already]
        if new:
            index.upload(new)
        lines = [f"{p.node}: {'already there, identical' if p.already else 'uploaded'}: {p.path.name}"
                 for p in planned]
    return lines + [f"uploaded {len(new)} files to {index.upload_url}" if new else
                    f"nothing to upload: {index.upload_url} has all {len(planned)} files, identical"]
