"""A served build's mount namespace (mountns.py): its own, a slave of the host's, with /sys
and devpts detached for bwrap to read less; the host keeps all of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from buildgraph import mountns
from conftest import mount_points


def in_child(body) -> dict:
    """Run `body()` in a forked child (it may change its namespace: this process must not) and
    return what it returned, a JSON-able dict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            answer = body()
        except BaseException as exc:   # noqa: BLE001 — reported to the parent
            answer = {"error": repr(exc)}
        os.write(w, json.dumps(answer).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a mount namespace needs CAP_SYS_ADMIN")


@needs_root
def test_a_namespace_of_its_own_is_a_slave_and_detaching_reaches_only_it():
    host_before = mount_points(mountinfo())
    assert ("/sys", "sysfs") in host_before

    def body():
        host_ns = os.readlink("/proc/self/ns/mnt")
        refused = mountns.trim()   # not allowed: a process that is not a served build's
        unchanged = os.readlink("/proc/self/ns/mnt") == host_ns
        mountns.allow()
        detached = mountns.trim()
        again = mountns.trim()
        shared = [line for line in mountinfo().splitlines() if " shared:" in line]
        left = mount_points(mountinfo())
        ran = None
        if shutil.which("bwrap"):   # a sandbox as an action's gets its own /dev, /dev/pts and /proc
            ran = subprocess.run(["bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                                  "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                                  "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "--",
                                  "/bin/sh", "-c", "ls /dev/pts /proc/self >/dev/null && echo fine"],
                                 capture_output=True, text=True).stdout
        return {"refused": refused, "unchanged": unchanged, "new": os.readlink("/proc/self/ns/mnt") != host_ns,
                "shared": shared, "detached": detached, "again": again, "left": left, "ran": ran}

    got = in_child(body)
    assert got.get("refused") == 0 and got["unchanged"] and got["new"], got
    assert got["shared"] == []   # a slave: nothing it detaches propagates to the host
    assert got["detached"] >= 2 and got["again"] == 0   # /sys with its cgroups, each devpts
    left = [tuple(p) for p in got["left"]]
    assert not [p for p in left if p[0] == "/sys" or p[0].startswith("/sys/") or p[1] == "devpts"]
    assert ("/", next(t for mp, t in host_before if mp == "/")) in left and ("/proc", "proc") in left
    assert got["ran"] in (None, "fine\n")
    assert mount_points(mountinfo()) == host_before   # the host's namespace kept all of it


@needs_root
def test_threads_started_after_share_the_namespace_and_those_before_keep_the_hosts():
    def ns():
        return os.readlink("/proc/thread-self/ns/mnt")

    def body():
        seen = {}

        def record(name, stop=None):
            seen[name] = ns()
            if stop is not None:
                stop.wait()
        host = ns()
        stop = threading.Event()
        before = threading.Thread(target=record, args=("before", stop))
        before.start()
        mountns.allow()
        detached = mountns.trim()
        after = threading.Thread(target=record, args=("after",))
        after.start()
        after.join()
        stop.set()
        before.join()
        return {"detached": detached > 0, "caller_moved": ns() != host, "before": seen["before"] == host,
                "after": seen["after"] == ns()}

    assert in_child(body) == {"detached": True, "caller_moved": True, "before": True, "after": True}
