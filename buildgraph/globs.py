"""Expand `srcs` patterns relative to the workspace root.

Patterns: `*`, `?` and `[...]` match within one path segment, `**` matches any
number of directories, a leading `!` excludes. Hidden entries (.git, .buildgraph)
are never matched. A pattern that matches nothing is an error, as in Bazel.

Results are cached with the mtime of every directory they read: adding or
removing a file changes its directory's mtime, so a no-op build re-lists nothing.
"""

from __future__ import annotations

import fnmatch
import os
import re

_MAGIC = re.compile(r"[*?\[]")


def _walk(root: str, segments: list[str], rel: str, out: set[str], visited: dict[str, int]) -> None:
    if not segments:
        return
    here = os.path.join(root, rel) if rel else root
    head, rest = segments[0], segments[1:]
    if not _MAGIC.search(head):
        path = f"{rel}/{head}" if rel else head
        if rest:
            if os.path.isdir(os.path.join(root, path)):
                _walk(root, rest, path, out, visited)
        elif os.path.isfile(os.path.join(root, path)):
            out.add(path)
        return
    try:
        visited[here] = os.stat(here).st_mtime_ns
        entries = list(os.scandir(here))
    except (FileNotFoundError, NotADirectoryError):
        return
    if head == "**":
        if not rest:                                  # trailing **: every file below
            out.update(f"{rel}/{e.name}" if rel else e.name for e in entries
                       if e.is_file() and not e.name.startswith("."))
        _walk(root, rest, rel, out, visited)          # zero directories
        for e in entries:
            if e.is_dir() and not e.name.startswith("."):
                _walk(root, segments, f"{rel}/{e.name}" if rel else e.name, out, visited)
        return
    regex = re.compile(fnmatch.translate(head))
    for e in entries:
        if e.name.startswith(".") or not regex.match(e.name):
            continue
        path = f"{rel}/{e.name}" if rel else e.name
        if rest and e.is_dir():
            _walk(root, rest, path, out, visited)
        elif not rest and e.is_file():
            out.add(path)


def expand(root: str, patterns: tuple[str, ...]) -> tuple[list[str], dict[str, int], list[str]]:
    """(sorted relpaths, directories read with their mtimes, patterns that matched nothing)."""
    found: set[str] = set()
    visited: dict[str, int] = {}
    empty = []
    for pattern in patterns:
        exclude = pattern.startswith("!")
        pat = pattern[1:] if exclude else pattern
        matched: set[str] = set()
        _walk(root, [s for s in pat.split("/") if s and s != "."], "", matched, visited)
        if exclude:
            found -= {p for p in found if p in matched}
        else:
            if not matched:
                empty.append(pattern)
            found |= matched
    return sorted(found), visited, empty


def still_valid(visited: dict[str, int], stat_memo: dict[str, int | None]) -> bool:
    """True if no directory a cached expansion read has changed since."""
    for d, mtime in visited.items():
        cur = stat_memo.get(d, -1)
        if cur == -1:
            try:
                cur = os.stat(d).st_mtime_ns
            except OSError:
                cur = None
            stat_memo[d] = cur
        if cur != mtime:
            return False
    return True
