"""Our sandboxer (sandboxer.c) makes from bwrap's command line the sandbox bwrap makes."""

import json
import os
import re
import shutil
import subprocess

import pytest

from buildgraph import sandboxer
from buildgraph.sandbox import detect_mode

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or detect_mode() != "bwrap" or not shutil.which("cc"),
                                reason="the sandboxer runs for root, beside bwrap, built by a C compiler")

# What an action can see of its sandbox: mounts and their options, its process (capabilities,
# no_new_privs, ids, session), the devices, what it may write, the network, its namespaces'
# other processes, and how a command's failure reads.
LOOK = [
    "sed -E 's/^[0-9]+ [0-9]+ [0-9]+:[0-9]+ //' /proc/self/mountinfo > $OUT/seen",
    "grep -E '^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups|NSpid|NSsid|Umask)' /proc/self/status >> $OUT/seen",
    "ls -la --time-style=+ / /dev /dev/pts /dev/shm $SRC/.. /proc/self/fd >> $OUT/seen 2>&1",
    "/usr/bin/stat -c '%n %F %a %U:%G %t:%T' /dev/* /dev/pts/* >> $OUT/seen",
    "cut -d' ' -f4-8 /proc/self/stat >> $OUT/seen",
    "echo $$ $PPID $(/usr/bin/hostname) $(/usr/bin/id) $(umask) >> $OUT/seen",
    "for p in / /usr /usr/local /etc /tmp /dev /dev/shm /proc/sys /proc/irq $SRC $OUT $HOME $TMPDIR; do "
    "(: > $p/.w && rm $p/.w) 2>/dev/null && echo $p writable || echo $p read-only; done >> $OUT/seen",
    # the processes of its pid namespace, counted by the shell alone (a pipe's two ends race)
    "cut -d: -f1 /proc/net/dev >> $OUT/seen; set -- /proc/[0-9]*; echo $# processes >> $OUT/seen",
    "sh -c 'exit 7' || echo status $? >> $OUT/seen",
]


def test_an_action_sees_the_same_in_our_sandboxer_as_in_bwrap(ws, capsys, monkeypatch):
    """The same workspace and cache paths, built once by each: what the action wrote is equal
    byte for byte (so the two share cache entries, one sandbox mode), and the first build
    did run in ours."""
    ws.write("in.txt", "x\n")
    ws.write("BUILD.yaml", "targets:\n  t:\n    kind: script\n    srcs: [in.txt]\n    outs: [seen]\n"
             "    cmds:\n" + "".join(f"      - {c!r}\n" for c in LOOK))
    seen = {}
    programs = ws.root.parent / "programs"
    monkeypatch.setenv("BUILDGRAPH_PROGRAMS_DIR", str(programs))
    for maker in ("ours", "bwrap"):
        monkeypatch.setenv("BUILDGRAPH_SANDBOXER", maker)
        shutil.rmtree(programs, ignore_errors=True)
        shutil.rmtree(ws.cache, ignore_errors=True)
        shutil.rmtree(ws.root / ".buildgraph", ignore_errors=True)
        st = ws.build(capsys=capsys)
        assert st["t"] == "ran", st["_out"] + st["_err"]
        # Fresh names: the host's path of each sandbox tree, the jobserver's; and /proc's link
        # count, which counts the host's processes (and, at 100 of them, widens the column
        # `ls -l` pads every row to: runs of spaces are one).
        text = re.sub(r"/[0-9]+-[0-9]+-[0-9a-f]+/", "/TREE/", (ws.out("t") / "seen").read_text())
        text = re.sub(r"/jobserver-\w+/", "/jobserver-X/", text)
        text = re.sub(r"^(dr-xr-xr-x) +[0-9]+ (root root +0 +proc)$", r"\1 N \2", text, flags=re.M)
        seen[maker] = re.sub(r"(?<=\S)  +", " ", text)
        built = [json.loads(p.read_text())["value"] for p in programs.glob("sandboxer/*/built.json")]
        assert built == ([str(next(programs.glob("sandboxer/*/sandboxer")))] if maker == "ours" else [])
        assert not (ws.cache / "sandboxer").exists()
    assert seen["ours"].splitlines() == seen["bwrap"].splitlines()
    # what was compared holds what it should
    assert re.search(r"^/newroot / rw,nosuid,nodev,.* - tmpfs ", seen["ours"], re.M)
    assert re.search(r" /sandbox/src ro,nosuid,nodev,", seen["ours"])
    assert "CapEff:\t0000000000000000" in seen["ours"] and "NoNewPrivs:\t1" in seen["ours"]
    assert "/usr read-only" in seen["ours"] and "/sandbox/out writable" in seen["ours"]
    assert "status 7" in seen["ours"] and "1 0 sandbox uid=0(root)" in seen["ours"]
    assert "\n1 processes\n" in seen["ours"]


def test_it_refuses_what_it_does_not_make_as_bwrap_would(tmp_path):
    path = sandboxer.program(str(tmp_path / "programs"))
    assert path is not None
    base = ["--unshare-pid", "--as-pid-1", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64"]
    for argv, why in ((["--ro-bind-try", "/x", "/x"], "unknown option --ro-bind-try"),
                      (["--cap-drop", "CAP_NET_RAW"], "only --cap-drop ALL"),
                      (["--uid", "0"], "unknown option --uid"),
                      (["--unshare-user"], "unknown option --unshare-user")):
        done = subprocess.run([path, *base, *argv, "--", "/usr/bin/touch", str(tmp_path / "ran")],
                              capture_output=True, text=True)
        assert done.returncode == 125 and why in done.stderr, (argv, done.stderr)
    done = subprocess.run([path, *base, "--bind", "/tmp"], capture_output=True, text=True)
    assert done.returncode == 125 and "missing argument to --bind" in done.stderr
    done = subprocess.run([path, "--unshare-pid", "--", "/usr/bin/true"], capture_output=True, text=True)
    assert done.returncode == 125 and "--as-pid-1" in done.stderr   # bwrap would keep an init there
    assert not (tmp_path / "ran").exists()
    done = subprocess.run([path, *base, "--", "/usr/bin/sh", "-c", "exit 3"], capture_output=True)
    assert done.returncode == 3


def test_it_is_built_once_and_bwrap_runs_where_it_cannot_be(tmp_path, monkeypatch):
    programs = str(tmp_path / "programs")
    builds = []
    real_build = sandboxer._build
    monkeypatch.setattr(sandboxer, "_build", lambda *a: builds.append(a) or real_build(*a))
    first = sandboxer.program(programs)
    assert first and os.access(first, os.X_OK) and sandboxer.program(programs) == first
    assert len(builds) == 1
    os.remove(first)   # gone: built again, not trusted from the memo
    assert sandboxer.program(programs) == first and os.access(first, os.X_OK) and len(builds) == 2

    monkeypatch.setenv("BUILDGRAPH_SANDBOXER", "bwrap")
    assert sandboxer.program(programs) is None
    monkeypatch.delenv("BUILDGRAPH_SANDBOXER")
    fake_cc = tmp_path / "bin" / "cc"   # a compiler that fails: bwrap, and nothing half-built kept
    fake_cc.parent.mkdir()
    fake_cc.write_text("#!/bin/sh\necho 'no' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_cc.parent}:{os.environ['PATH']}")
    other = str(tmp_path / "other-programs")
    assert sandboxer.program(other) is None and sandboxer.program(other) is None
    assert len(builds) == 3   # the failure is remembered too
    fake_cc.write_text("#!/bin/sh\necho 'still no' >&2\nexit 1\n")   # until the compiler changes
    assert sandboxer.program(other) is None and len(builds) == 4
    # nothing half-built left beside the memo
    assert [p.name for p in (tmp_path / "other-programs").glob("sandboxer/*/*")] == ["built.json"]
