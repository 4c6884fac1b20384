"""Small filesystem operations shared by the store, the sandbox and the toolchain store."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil

_FICLONE = 0x40049409


def force_remove(path: str | os.PathLike) -> None:
    """Remove a file or a tree, even one an action left read-only; missing is fine."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                try:
                    os.chmod(os.path.join(dirpath, d), 0o755)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def copy_file(src: str, dest: str) -> None:
    """Copy `src` to a new file `dest` (reflink where the filesystem can), keeping its mode."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        except OSError:
            shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copymode(src, dest)


def link_or_copy(src: str, dest: str) -> None:
    """Put `src`'s content at `dest`: hardlink, else reflink, else copy (mode kept)."""
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES):
            raise
    copy_file(src, dest)
