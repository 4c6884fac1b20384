"""The program that makes an action's bwrap sandbox: bwrap, or, run by root, our own.

perf of a cold build put bwrap at ~45% of the machine's CPU, a sixth of it reading
/proc/self/mountinfo after each of its ~17 binds (to remount what lies below each one), the
rest its exec and dynamic linking, the kernel's namespaces and mounts. `sandboxer.c` makes
the same sandbox from the same command line (the subset of bwrap's options sandbox.py
writes), with one mount_setattr(AT_RECURSIVE) per bind instead of the reads: `sh -c :` in an
action's mounts costs ~1.9 ms of CPU over a bare spawn against bwrap's ~3.2 ms here. What an
action sees there is what it sees in bwrap, line for line of /proc/self/mountinfo and
/proc/self/status (tests/test_sandboxer.py compares them), so the two are one sandbox mode
and share cache entries.

It is used only where it can be: run by root (it makes namespaces and mounts without a
user namespace), with a C compiler to build it from its source on first use (kept in
locations.programs_dir() for every cache directory, named by the source's digest: a new
cache does not build it again, ~0.3 s), on a kernel with mount_setattr (5.12), which a
probe run proves once. Anywhere else, and with BUILDGRAPH_SANDBOXER=bwrap, bwrap runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from buildgraph.fsutil import remembered

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandboxer.c")
# A sandbox as an action's, with each kind of mount it has: the probe's.
_PROBE = ("--die-with-parent", "--new-session", "--cap-drop", "ALL", "--unshare-net", "--unshare-pid",
          "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr",
          "--tmpfs", "/usr/local", "--bind", "/tmp", "/probe/tmp", "--symlink", "usr/bin", "/bin",
          "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
          "--dev", "/dev", "--dir", "/probe/dir", "--chdir", "/probe",
          "--", "/bin/sh", "-c", "test -d /probe/dir && test -c /dev/null")


def program(directory: str) -> str | None:
    """The path of our sandboxer for bwrap's command lines, built if needed into `directory`,
    or None where bwrap must run."""
    if os.environ.get("BUILDGRAPH_SANDBOXER") == "bwrap" or os.geteuid() != 0:
        return None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    from buildgraph.digest import file_digest, stat_signature
    from buildgraph.signatures import kernel_release

    digest = file_digest(SOURCE)
    path = os.path.join(directory, "sandboxer", digest[:16], "sandboxer")

    def build() -> str:
        return path if _build(compiler, path) and _works(path) else ""
    # The kernel decides whether it works, the compiler (by path and stat, as the sandbox
    # mode's facts name bwrap) whether it could be built: a failure is tried again after either changes.
    try:
        facts = [digest, kernel_release(), compiler, stat_signature(os.stat(compiler))]
    except OSError:
        return None
    found = remembered(os.path.join(directory, "sandboxer", digest[:16], "built.json"), facts, build,
                       lambda value: value == "" or os.access(value, os.X_OK))
    return found or None


def _build(compiler: str, path: str) -> bool:
    temp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}"   # beside it: os.replace stays on one filesystem
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Static where the C library allows it: no loader to run, ~0.25 ms a sandbox here.
        for static in (["-static"], []):
            done = subprocess.run([compiler, "-O2", *static, "-o", temp, SOURCE], capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(temp, path)   # whole, or not there: a build beside this one may run it
                return True
        return False
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _works(path: str) -> bool:
    from buildgraph.sandbox import _probe   # as the sandbox mode is probed

    return _probe([path, *_PROBE])
