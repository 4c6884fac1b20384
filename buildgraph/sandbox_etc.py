"""The /etc a bwrap sandbox sees: a passwd and group of our own (the host's users are not an
input) and copies of the host files VISIBLE_ETC names (the loader's configuration and the
alternatives links), in one directory bound at /etc.

One directory instead of a bind per host file: each bind costs bwrap a mount and a
re-read of mountinfo (the four it replaces, ~1.0 ms of CPU per action: README,
"Benchmarks"). The directory is kept in the cache, as CACHE_DIR/etc/<name>
(LocalStore.etc), shared by builds: <name> is a digest of what it was copied from, by
stat signature (signatures.tree_signature: every file and directory copied; a link is
replaced, never edited, which moves its directory's), so a host change (ldconfig, an
update-alternatives, an ld.so.conf.d file edited in place) makes a new one. A copy made
while one of them is too young to trust (digest.is_racy), or while they change under it,
is this build's only. Built in tmp/, renamed into place whole: a killed build leaves no
half copy under a name. `cache gc` removes them all; the next build copies again (~20 ms).
"""

from __future__ import annotations

import os
import shutil

from buildgraph.digest import bytes_digest
from buildgraph.fsutil import force_remove
from buildgraph.signatures import KEYED_ETC, tree_signature

# What the sandbox shows of the host's /etc; every other file there is hidden. Those in
# KEYED_ETC are in the host tools' digest; ld.so.cache is derived from the installed
# libraries, which the package digests cover.
VISIBLE_ETC = ("/etc/ld.so.cache",) + KEYED_ETC
_PASSWD = "root:x:0:0:root:/sandbox/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _users() -> tuple[str, str]:
    """(passwd, group) of the sandbox: root, nobody, and the build's own user when not root."""
    uid, gid = os.getuid(), os.getgid()
    passwd = _PASSWD + (f"build:x:{uid}:{gid}:build:/sandbox/home:/bin/sh\n" if uid else "")
    group = _GROUP + (f"build:x:{gid}:\n" if gid else "")
    return passwd, group


def etc_dir(kept_in: str, tmp: str) -> tuple[str, bool]:
    """A directory to bind at the sandbox's /etc, as the host's files are now: the kept one
    when they have not changed since it was copied, else a new copy; and whether it is this
    build's own, for it to remove when it ends. `tmp`: a new path to build the copy at, on
    the filesystem of `kept_in`."""
    passwd, group = _users()
    seen, racy = tree_signature(VISIBLE_ETC)
    final = f"{kept_in}/{bytes_digest(repr((passwd, group, seen)).encode())}"
    if not racy and os.path.isdir(final):
        return final, False
    os.makedirs(tmp)
    with open(f"{tmp}/passwd", "w") as f:
        f.write(passwd)
    with open(f"{tmp}/group", "w") as f:
        f.write(group)
    for path in VISIBLE_ETC:
        dest = f"{tmp}/{os.path.basename(path)}"
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.copytree(path, dest, symlinks=True)
        elif os.path.lexists(path):
            shutil.copy2(path, dest, follow_symlinks=False)
    if racy or tree_signature(VISIBLE_ETC)[0] != seen:   # changing under us: good for this build only
        return tmp, True
    os.makedirs(kept_in, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:   # another build put the same copy there first
        force_remove(tmp)
    return final, False
