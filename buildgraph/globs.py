"""Expand `srcs` patterns relative to the workspace root.

Patterns: `*`, `?` and `[...]` match within one path segment, `**` matches any
number of directories, a leading `!` excludes. Hidden entries (.git, .buildgraph)
and developer-local files (CMakeUserPresets.json: CMake's own rule is that it is never
versioned, and `buildgraph shell` writes it) are never matched. A pattern that matches nothing is an error, as in Bazel.

Results are cached with the signature (inode, mtime, ctime) of every directory they
read: adding or removing a file changes its directory's mtime and ctime, and a directory
replaced by another (a tarball unpacked with the same mtimes) has another inode and a
new ctime, so a no-op build re-lists nothing and a changed tree is always re-listed. A
directory listed within its own timestamp tick (racy: a file could still be added in
the same tick without moving its times) is recorded as never valid, so it is re-listed
next time.
"""

from __future__ import annotations

import fnmatch
import os
import re

from buildgraph.digest import is_racy, stat_signature

_MAGIC = re.compile(r"[*?\[]")
LOCAL_FILES = frozenset(("CMakeUserPresets.json",))


class GlobError(Exception):
    """A path under a pattern that cannot be used (a symlink loop, a name that is not UTF-8)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def _kind(rel: str, e: os.DirEntry) -> str | None:
    """'f' (a file), 'd' (a directory) or None, following symlinks; GlobError if it cannot be."""
    try:
        if e.is_file():
            kind = "f"
        elif e.is_dir():
            kind = "d"
        else:
            return None
    except OSError as exc:
        raise GlobError(rel, exc.strerror or str(exc)) from None
    try:
        e.name.encode("utf-8")
    except UnicodeEncodeError:
        raise GlobError(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                        "the file name is not UTF-8; rename it or exclude it with !pattern") from None
    return kind


def _walk(root: str, segments: list[str], rel: str, out: set[str], visited: dict, chain=()) -> None:
    if not segments:
        return
    here = os.path.join(root, rel) if rel else root
    head, rest = segments[0], segments[1:]
    if not _MAGIC.search(head):
        path = f"{rel}/{head}" if rel else head
        if rest:
            if os.path.isdir(os.path.join(root, path)):
                _walk(root, rest, path, out, visited, chain)
        elif os.path.isfile(os.path.join(root, path)):
            out.add(path)
        return
    try:
        st = os.stat(here)
        visited[here] = dir_signature(st)
        entries = list(os.scandir(here))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise GlobError(rel or ".", exc.strerror or str(exc)) from None
    if (st.st_dev, st.st_ino) in chain:   # a symlink back to a directory above: ** would never end
        raise GlobError(rel, "symlink loop (a link to a directory that contains it)")
    chain = (*chain, (st.st_dev, st.st_ino))
    kinds = {e.name: _kind(f"{rel}/{e.name}" if rel else e.name, e)
             for e in entries if not e.name.startswith(".") and e.name not in LOCAL_FILES}
    if head == "**":
        if not rest:                                  # trailing **: every file below
            out.update(f"{rel}/{n}" if rel else n for n, k in kinds.items() if k == "f")
        _walk(root, rest, rel, out, visited, chain)   # zero directories
        for n, k in kinds.items():
            if k == "d":
                _walk(root, segments, f"{rel}/{n}" if rel else n, out, visited, chain)
        return
    regex = re.compile(fnmatch.translate(head))
    for n, k in kinds.items():
        if not regex.match(n):
            continue
        path = f"{rel}/{n}" if rel else n
        if rest and k == "d":
            _walk(root, rest, path, out, visited, chain)
        elif not rest and k == "f":
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


def dir_signature(st: os.stat_result):
    """What must not change for a cached listing of a directory to stay valid (None: racy)."""
    return None if is_racy(st) else stat_signature(st)


def still_valid(visited: dict, stat_memo: dict) -> bool:
    """True if no directory a cached expansion read has changed since."""
    for d, sig in visited.items():
        if sig is None:
            return False
        cur = stat_memo.get(d, -1)
        if cur == -1:
            try:
                cur = stat_signature(os.stat(d))
            except OSError:
                cur = None
            stat_memo[d] = cur
        if cur != sig:
            return False
    return True


def nearest(root: str, pattern: str, limit: int = 5000) -> str | None:
    """The workspace file most like `pattern` (which matched nothing), for a hint: searched
    below the deepest directory the pattern names literally, at most `limit` files."""
    import difflib

    parts = [s for s in pattern.split("/") if s and s != "."]
    base = []
    for p in parts[:-1]:
        if _MAGIC.search(p) or not os.path.isdir(os.path.join(root, *base, p)):
            break
        base.append(p)
    candidates = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, *base)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        candidates.extend(n if rel == "." else f"{rel}/{n}" for n in filenames
                          if not n.startswith(".") and n not in LOCAL_FILES)
        if len(candidates) >= limit:
            break
    wanted = pattern.replace("**/", "")
    found = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.6)
    if not found and _MAGIC.search(wanted):   # a glob: the file whose name fits its last part best
        tail = parts[-1] if parts else wanted
        by_name = {c.rsplit("/", 1)[-1]: c for c in candidates}
        names = difflib.get_close_matches(tail, list(by_name), n=1, cutoff=0.5)
        found = [by_name[names[0]]] if names else []
    return found[0] if found else None
