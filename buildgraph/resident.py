"""What the build server keeps decoded between builds: a workspace's state files.

A build starts by decoding three files of .buildgraph/ (the no-op record, the state, the
parsed workspace): ~145 ms at 10,000 nodes, a third of a one-leaf change. The server
(server.py) decodes them once a build that used them has ended, while it waits for the next
request, and each child it forks inherits the decoded values. A child takes a value only
while the file still has the stat signature it had when the server read it: the file is
always the truth, its copy a cache of it. Every file here is written by replacing it whole
(write_atomic), so a changed file has a new inode; and a child takes each value at most
once, as a build that reads a file twice would decode two values it may change apart.
Without a server nothing is kept and `read` reads the file.
"""

from __future__ import annotations

import os

from buildgraph.digest import stat_signature

_held: dict[str, tuple] = {}   # path -> (stat signature, decode, value): in the server, and inherited
used_dirs: set[str] = set()    # the .buildgraph directories this process read state from


def read(state_dir: str, name: str, decode) -> tuple:
    """(decode(the bytes of file `name` of `state_dir`), its stat signature): the server's
    decoded copy if it is of the file as it is now. OSError as open() raises it."""
    state_dir = os.path.abspath(state_dir)
    used_dirs.add(state_dir)
    sig, _, value = _decoded(f"{state_dir}/{name}", decode, _held.pop(f"{state_dir}/{name}", None))
    return value, sig


def hold(state_dir: str, files) -> None:
    """In the server: decode each of `files` ((name, decode) in `state_dir`) whose signature
    changed since it was last decoded; drop what is held of other workspaces. Anything that
    cannot be read is simply not held: the child reads the file itself."""
    keep = {f"{state_dir}/{name}" for name, _ in files}
    for path in [p for p in _held if p not in keep]:
        del _held[path]
    for name, decode in files:
        path = f"{state_dir}/{name}"
        try:
            _held[path] = _decoded(path, decode, _held.pop(path, None))
        except Exception:   # noqa: BLE001 — an unreadable file is the child's to report
            pass


def _decoded(path: str, decode, held: tuple | None) -> tuple:
    """(stat signature, decode, decode(the bytes of `path`)): `held` if it is of the file as
    it is now, else decoded anew (`held` let go of first: its memory goes before the new
    value's comes)."""
    with open(path, "rb") as f:
        sig = stat_signature(os.fstat(f.fileno()))
        if held is not None and held[0] == sig and held[1] is decode:
            return held
        held = None
        return sig, decode, decode(f.read())   # ten times faster than marshal.load(f)
