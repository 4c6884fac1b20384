"""Small filesystem operations shared by the store, the sandbox and the toolchain store."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import sys

_FICLONE = 0x40049409
# The inode flags (chattr): FS_IOC_GETFLAGS, FS_IOC_SETFLAGS and FS_TOPDIR_FL (chattr +T).
_GETFLAGS, _SETFLAGS, TOPDIR = 0x80086601, 0x40086602, 0x00020000


DIR_MODE = 0o755   # of every directory staged for an action (make_dir)


def make_dir(path: str, mode: int = DIR_MODE) -> None:
    """os.mkdir, the directory of exactly `mode` whatever this process's umask: what an
    action sees of the tree staged for it must not follow the umask of the build that
    staged it, which its key does not hold."""
    os.mkdir(path)
    os.chmod(path, mode)


def make_dirs(path: str, mode: int = DIR_MODE) -> None:
    """os.makedirs(path, exist_ok=True), each directory it makes of exactly `mode` (make_dir)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_dirs(parent, mode)
    try:
        make_dir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def make_top_dir(path: str) -> None:
    """Make the directory `path` (already there is fine) marked, where the filesystem takes the
    hint, as the top of unrelated trees (ext4: chattr +T). ext4 then spreads the directories
    made in it across its block groups instead of packing them into the group of `path`.
    For out/, whose every node directory is such a tree, that decides what a restore after
    `clean` costs on an ext4 without a journal: there a new inode is never one freed in the
    last minute, and each allocation scans past every such inode of its group. A restore of
    10,000 nodes took 3.8-4.9 s with the hint, against 7.8-12.3 s without."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        flags = inode_flags(fd)
        if flags is not None:
            set_inode_flags(fd, flags | TOPDIR)
    except OSError:   # not a filesystem with inode flags: nothing to hint
        pass
    finally:
        os.close(fd)


def os_error_text(exc: OSError) -> str:
    """An OSError as a user reads it: the file it names, then what the system said."""
    return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"


def inode_flags(fd: int) -> int | None:
    """The inode flags (chattr) of the open file `fd`; None where the filesystem has none."""
    flags = bytearray(8)
    try:
        fcntl.ioctl(fd, _GETFLAGS, flags)
    except OSError:
        return None
    return int.from_bytes(flags[:4], sys.byteorder)   # the kernel writes an int


def set_inode_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, _SETFLAGS, flags.to_bytes(4, sys.byteorder) + bytes(4))


def force_remove(path: str | os.PathLike) -> None:
    """Remove a file or a tree, even one an action left read-only; missing is fine."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            _remove_tree(path)   # the usual case: nothing in it made unwritable
            return
        except OSError:
            pass
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


def empty_for_reuse(root: str, subdirs: tuple[str, ...], files: tuple[str, ...] = ()) -> bool:
    """Empty each of `subdirs` of `root`, truncate each of `files` there (a regular file of
    one name; missing is fine), and remove everything else in it. True if `root` is now
    exactly those directories, empty, each still of DIR_MODE (as make_dir made them), and at
    most those files, empty; False if it cannot be made so (one was replaced, removed or
    chmodded, or something would not go): then it is unfit for reuse, to be removed whole.

    A file truncated keeps its inode, where one removed and made again takes a new one: on
    an ext4 without a journal each new inode scans past every one freed in its group in
    the last minute (README, "Benchmarks"), and a build frees thousands."""
    seen = 0
    try:
        for entry in os.scandir(root):
            if entry.name in subdirs:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != DIR_MODE:
                    return False
                seen += 1
                for inner in os.scandir(entry.path):
                    if not _remove_entry(inner):
                        return False
            elif entry.name in files and _single_file(entry):
                os.truncate(entry.path, 0)
            elif not _remove_entry(entry):
                return False
    except OSError:
        return False
    return seen == len(subdirs)


def _single_file(entry: os.DirEntry) -> bool:
    st = entry.stat(follow_symlinks=False)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _remove_entry(entry: os.DirEntry) -> bool:
    if entry.is_dir(follow_symlinks=False):
        force_remove(entry.path)
        return not os.path.lexists(entry.path)
    os.unlink(entry.path)
    return True


def _remove_tree(path: str) -> None:
    """Remove a tree nothing in it stops from going (links are removed, never followed),
    else raise: force_remove's first try, without its pass making each directory writable
    and shutil.rmtree's checks against a tree changing while it goes: two thirds of the
    time (130 -> 88 us a directory of one file, on this VM's disk)."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
    os.rmdir(path)


def copy_new(src: str, dest: str, mode: int) -> None:
    """Create `dest` (which must not exist) with `src`'s content and `mode`: a reflink where the
    filesystem can, else a copy made by the kernel. Never shares an inode with `src`."""
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fout, mode)   # exactly `mode`, not what the umask leaves of it
            try:
                fcntl.ioctl(fout, _FICLONE, fin)
            except OSError:
                remaining = os.fstat(fin).st_size
                try:
                    while remaining > 0:
                        n = os.copy_file_range(fin, fout, remaining)
                        if n == 0:
                            break
                        remaining -= n
                except OSError:   # an old kernel or across filesystems: copy in user space
                    os.lseek(fin, 0, os.SEEK_SET)
                    os.lseek(fout, 0, os.SEEK_SET)
                    os.ftruncate(fout, 0)
                    while chunk := os.read(fin, 1 << 20):
                        os.write(fout, chunk)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def put_entries(base: str, entries) -> None:
    """Put `entries` under the existing directory `base`, their directories made as needed:
    ("f", rel, src, mode) a file of its own (copy_new), ("h", rel, src) a hardlink where
    possible (link_or_copy), ("l", rel, target) a symlink."""
    made = {base}
    for entry in entries:
        dest = f"{base}/{entry[1]}"
        parent = os.path.dirname(dest)
        if parent not in made:
            make_dirs(parent)
            made.add(parent)
        if entry[0] == "f":
            copy_new(entry[2], dest, entry[3])
        elif entry[0] == "h":
            link_or_copy(entry[2], dest)
        else:
            os.symlink(entry[2], dest)


def link_or_copy(src: str, dest: str) -> None:
    """Put `src`'s content at `dest`: hardlink, else reflink, else copy (mode kept)."""
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES):
            raise
    copy_new(src, dest, stat.S_IMODE(os.stat(src).st_mode))


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old content or the new, never part."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def remembered(path: str, facts, compute, valid=lambda value: True):
    """compute(), a JSON value, kept in the file `path` with the `facts` (JSON) it depends on
    and read from there while they are equal and `valid` accepts it. A cache: a file that
    cannot be read or is stale is computed again, one that cannot be written is not kept."""
    import json   # here: the no-op check never comes this way

    facts = json.dumps(facts, sort_keys=True)
    try:
        with open(path, "rb") as f:
            known = json.loads(f.read())
        if known["facts"] == facts and valid(known["value"]):
            return known["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps({"facts": facts, "value": value}).encode())
    except OSError:   # a read-only cache: computed again next time
        pass
    return value


def walk_tree(base: str) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]], list[str]]:
    """What lies under `base`, each list sorted by relative path: regular files as
    (relpath, path, executable), symlinks as (relpath, target) — a link to a directory is
    not followed — and anything else (fifos, sockets, devices) as relpath."""
    files, links, others = [], [], []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                links.append((rel, os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, path, bool(st.st_mode & 0o111)))
            else:
                others.append(rel)
    return sorted(files), sorted(links), sorted(others)


def write_zip(path: str | os.PathLike, entries) -> None:
    """A zip (wheel, jar) of (name, bytes, mode) entries, in the order given, with fixed dates:
    the same entries make the same bytes."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)


def lock_exclusive(path: str | os.PathLike, wait_message=None) -> int:
    """Open `path` (created if missing) and hold an exclusive flock on it; the descriptor.
    `wait_message(text)` is called once if another process holds it and we wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if wait_message:
            wait_message("another build is running in this workspace; waiting for it")
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
