"""Action (what to run) and ActionResult (what came out), and the action key.

Action key, version 3
---------------------
key = xxh3-128 hex of the compact JSON array (no whitespace, UTF-8)
  [v, commands, env, toolchain, tools, srcs, deps, features, outs, source, sandbox, host]
with the fields below, in exactly that order (`Action.spec()` gives the same
fields as an object, for manifests). Everything that can change an output is in
it; nothing else is:

  "v"          3 — bumped when this encoding changes, disowning every old entry.
  "commands"   the shell commands, in order, exactly as run by `sh -e`.
  "env"        [[name, value], ...] MUST be sorted by name: the scrubbed
               environment the action sees. Paths in it use the fixed in-sandbox
               root (/sandbox), never a host path.
  "toolchain"  [name, digest] — digest of the toolchain's files (and, for host and apt
               toolchains, of the Debian packages they come from), not its version.
  "tools"      digest of the host tools on PATH: their file contents, the Debian
               packages they come from with everything those depend on, and the
               few host files the sandbox shows (see hostpkgs.py).
  "srcs"       tree digest of the staged sources (relpath, file digest, exec bit).
  "deps"       [[name, output digest], ...] sorted by name: dependency *outputs*,
               so a dependency rebuilt bit-identically does not change this key
               (early cutoff). Only those exact outputs are ever staged.
  "features"   [[axis, value], ...] sorted: only the variant axes the target reads.
  "outs"       the declared outputs, sorted.
  "source"     the upstream source's identity (kind, pin, subdirectory, strip count,
               version; for a workspace `path` source the tree digest of its files), or
               null. Pins are known before fetching, so a cached build needs no source.
  "sandbox"    the isolation mode (bwrap, unshare, none), or null for built-in actions
               that run in-process: without bwrap, $OUT and the other paths the action
               sees are host paths, so its outputs can differ.
  "host"       [[property, value], ...]: the host properties an action can observe but
               the sandbox cannot pin — the kernel release and the number of CPUs it may
               use — as many as the workspace's `host_key` names (default both). The
               umask (022), hostname, time zone and locale are pinned instead.

Not in the key: node and target names, host paths, the workspace location,
timestamps, usernames, the jobserver (MAKEFLAGS), -j, credentials.

ActionResult encoding (the AC value), version 1
-----------------------------------------------
JSON: {"v":1, "files":[[path, digest, size, executable], ...] sorted by path,
"symlinks":[[path, target], ...] sorted, "stdout": digest|null, "stderr":
digest|null, "exit_code": int, "duration": seconds}. Paths are relative to the
output root; `parse_result` rejects any absolute path, any path or symlink target
that leaves the output root, a tree that cannot be written as a whole (a path below a
file or a symlink, a chain of links resolving outside: `check_tree`), and malformed
entries, so a poisoned entry can never write outside an output directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath

from buildgraph.digest import bytes_digest, tree_digest, value_digest

KEY_VERSION = 3
RESULT_VERSION = 1


@dataclass(frozen=True)
class Action:
    node: str
    commands: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    toolchain: tuple[str, str] | None
    tools_digest: str
    srcs: tuple[tuple[str, str, bool], ...]      # (relpath, digest, executable), sorted
    src_paths: tuple[str, ...]                   # host paths, same order; not in the key
    deps: tuple[tuple[str, str], ...]            # (dep target name, output digest), sorted
    features: tuple[tuple[str, str], ...]
    outs: tuple[str, ...]
    weight: int = 1
    jobserver: str = "pipe"
    source: tuple | None = None                  # the source's identity (in the key)
    source_fetch: object = None                  # sources.Source to fetch, or a path source's files; not in the key
    sandbox: str | None = None                   # isolation mode (in the key)
    host: tuple[tuple[str, str], ...] = ()       # observable host properties (in the key)
    # (name on PATH, program, ccache type) the compile cache may wrap: an accelerator, not in the key
    compilers: tuple[tuple[str, str, str], ...] = ()

    @cached_property
    def srcs_digest(self) -> str:
        return tree_digest(self.srcs)  # srcs are sorted (relpath, digest, exec) triples

    def spec(self) -> dict:
        return {
            "v": KEY_VERSION,
            "commands": list(self.commands),
            "env": [list(kv) for kv in self.env],
            "toolchain": list(self.toolchain) if self.toolchain else None,
            "tools": self.tools_digest,
            "srcs": self.srcs_digest,
            "deps": [list(d) for d in self.deps],
            "features": [list(f) for f in self.features],
            "outs": sorted(self.outs),
            "source": list(self.source) if self.source else None,
            "sandbox": self.sandbox,
            "host": [list(h) for h in self.host],
        }

    def _encoded(self, outs) -> bytes:
        return json.dumps(
            [KEY_VERSION, self.commands, self.env, self.toolchain, self.tools_digest, self.srcs_digest,
             self.deps, self.features, outs, self.source, self.sandbox, self.host],
            separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def key_bytes(self) -> bytes:
        """The canonical encoding: its xxh3 is the local key, its SHA-256 the remote one."""
        return self._encoded(sorted(self.outs))

    @cached_property
    def key(self) -> str:
        return bytes_digest(self.key_bytes)

    @cached_property
    def run_key(self) -> str:
        """The key without the declared outputs: two actions with the same run_key run the
        same commands on the same inputs, and differ only in what is collected afterwards."""
        return bytes_digest(self._encoded(None))

    def inputs(self) -> dict:
        """Input digests by kind, for `why`, `plan` and manifests."""
        return {
            "commands": list(self.commands),
            "env": dict(self.env),
            "toolchain": list(self.toolchain) if self.toolchain else None,
            "tools": self.tools_digest,
            "srcs": {p: d + ("+x" if x else "") for p, d, x in self.srcs},
            "deps": dict(self.deps),
            "features": dict(self.features),
            "outs": sorted(self.outs),
            "source": list(self.source) if self.source else None,
            # A path source is one tree digest in the key; its files, to say which changed.
            **({"source_files": {rel: d + ("+x" if x else "") for rel, _, d, x in self.source_fetch}}
               if isinstance(self.source_fetch, tuple) else {}),
            "sandbox": self.sandbox,
            "host": dict(self.host),
        }


@dataclass(frozen=True)
class OutputFile:
    path: str
    digest: str
    size: int
    executable: bool


@dataclass(frozen=True)
class OutputSymlink:
    path: str
    target: str


@dataclass(frozen=True)
class ActionResult:
    files: tuple[OutputFile, ...]
    symlinks: tuple[OutputSymlink, ...] = ()
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int = 0
    duration: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)

    @cached_property
    def output_digest(self) -> str:
        """Digest of the output tree: what dependents put in their keys."""
        return value_digest([[f.path, f.digest, f.executable] for f in self.files] +
                            [[s.path, "->", s.target] for s in self.symlinks])

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        return json.dumps({
            "v": RESULT_VERSION,
            "files": [[f.path, f.digest, f.size, f.executable] for f in sorted(self.files, key=lambda f: f.path)],
            "symlinks": [[s.path, s.target] for s in sorted(self.symlinks, key=lambda s: s.path)],
            "stdout": self.stdout, "stderr": self.stderr,
            "exit_code": self.exit_code, "duration": round(self.duration, 6),
        }, separators=(",", ":")).encode()


class BadResult(ValueError):
    """An action cache entry that must not be used (corrupt or poisoned)."""


class MissingOutputs(BadResult):
    """Declared outputs the action did not produce (`paths`)."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message)
        self.paths = tuple(paths)


_NOT_CLEAN = frozenset(("", ".", ".."))


def check_relpath(path) -> str:
    """Return `path` if it is a clean relative path inside its root, else raise BadResult.
    Clean: every /-separated part is a name, so none is empty (no leading, doubled or
    trailing /), "." or "..". Split as strings: read for every output of every result
    restored, and PurePosixPath took 20 µs a path."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise BadResult(f"bad path {path!r}")
    if not _NOT_CLEAN.isdisjoint(path.split("/")):
        raise BadResult(f"path {path!r} is absolute or leaves the output root")
    return path


def check_symlink(path: str, target) -> str:
    if not isinstance(target, str) or not target or target.startswith("/") or "\0" in target:
        raise BadResult(f"symlink {path!r} -> {target!r} is absolute or empty")
    depth = len(PurePosixPath(path).parts) - 1
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth + (part != ".")
        if depth < 0:
            raise BadResult(f"symlink {path!r} -> {target!r} leaves the output root")
    return target


_MAX_HOPS = 40   # as the kernel's limit on symlinks followed while resolving one path


def check_tree(files, links: dict[str, str]) -> None:
    """Raise BadResult unless the tree of `files` (relpaths) and `links` (relpath -> target)
    can be written under its root and never reaches outside it, taken as a whole.

    Each entry alone passing check_relpath/check_symlink is not enough: a path may lie below
    a file or a symlink (`x` and `x/y`; `d -> ..` and `d/PWNED`), and a chain of links that
    each stay inside may resolve outside together (`a -> .`, `b -> a/..`). Every link is
    resolved through the others, as the kernel would, and must stay inside the root.
    """
    kinds: dict[str, str] = {}
    for p in files:
        if p in kinds:
            raise BadResult(f"output {p!r} is listed twice")
        kinds[p] = "file"
    for p in links:
        if p in kinds:
            raise BadResult(f"output {p!r} is both a file and a symlink")
        kinds[p] = "symlink"
    for p in kinds:
        cut = p.rfind("/")
        while cut > 0:
            parent = p[:cut]
            if parent in kinds:
                raise BadResult(f"output {p!r} lies below the {kinds[parent]} {parent!r}")
            cut = p.rfind("/", 0, cut)
    for p in links:
        _resolve_inside(p, links)


def _resolve_inside(path: str, links: dict[str, str]) -> None:
    stack = path.split("/")[:-1]
    todo = list(reversed(links[path].split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise BadResult(f"symlink {path!r} -> {links[path]!r} resolves outside the output root")
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack)
        if here in links:
            hops += 1
            if hops > _MAX_HOPS:
                raise BadResult(f"symlink {path!r}: too many levels of symbolic links")
            stack.pop()
            todo.extend(reversed(links[here].split("/")))


def check_declared(outs, files, links) -> None:
    """Raise BadResult unless the produced `files` and `links` (relpaths) are exactly what
    `outs` declares: an entry ending in / is a directory holding anything, any other entry
    one file or symlink; every declared output present, nothing undeclared."""
    dirs = tuple(o for o in outs if o.endswith("/"))
    singles = {o for o in outs if not o.endswith("/")}
    produced = set(files) | set(links)
    for o in sorted(singles):
        if o not in produced and any(p.startswith(o + "/") for p in produced):
            raise BadResult(f"output {o!r} is declared as a file but the action produced a directory there"
                            f" — declare '{o}/'")
    for d in dirs:
        if d[:-1] in files:
            raise BadResult(f"output '{d}' is declared as a directory but the action produced a file "
                            f"'{d[:-1]}' — declare '{d[:-1]}'")
    missing = [o for o in outs if o not in produced and not (o.endswith("/") and (
        o[:-1] in links or any(p.startswith(o) for p in produced)))]
    if missing:
        raise MissingOutputs(f"declared output{'s' if len(missing) > 1 else ''} not produced: {', '.join(missing)}",
                             missing)
    extra = sorted(p for p in produced if p not in singles and not p.startswith(dirs) and p + "/" not in dirs)
    if extra:
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise BadResult(f"undeclared output{'s' if len(extra) > 1 else ''}: {', '.join(extra[:5])}{more}"
                        " — add to 'outs' (a path ending in / declares a directory)")


_DIGEST = re.compile(r"[0-9a-f]{32}")


def _digest(value) -> str:
    if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
        raise BadResult(f"bad digest {value!r}")
    return value


def parse_result(data: bytes) -> ActionResult:
    """Decode and validate an AC value; raises BadResult for anything unsafe."""
    try:
        raw = json.loads(data)
        if raw.get("v") != RESULT_VERSION:
            raise BadResult(f"unknown result version {raw.get('v')!r}")
        files = tuple(OutputFile(check_relpath(p), _digest(d), int(s), bool(x)) for p, d, s, x in raw["files"])
        links = tuple(OutputSymlink(check_relpath(p), check_symlink(p, t)) for p, t in raw["symlinks"])
        check_tree((f.path for f in files), {s.path: s.target for s in links})
        out = raw.get("stdout")
        err = raw.get("stderr")
        return ActionResult(files=files, symlinks=links,
                            stdout=_digest(out) if out is not None else None,
                            stderr=_digest(err) if err is not None else None,
                            exit_code=int(raw.get("exit_code", 0)), duration=float(raw.get("duration", 0.0)))
    except BadResult:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadResult(f"malformed action result: {exc}") from None
