"""The sandbox: only declared inputs, scrubbed env, no network, declared outputs only."""

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from buildgraph.sandbox import detect_mode


def one(ws, cmds, **extra):
    lines = [f"    {k}: {v}" for k, v in extra.items()]
    ws.write("BUILD.yaml", "targets:\n  t:\n    kind: script\n" + "\n".join(lines) +
             "\n    cmds:\n" + "".join(f"      - {c!r}\n" for c in cmds))


def test_reading_an_undeclared_file_fails(ws, capsys):
    ws.write("declared.txt", "yes\n")
    ws.write("secret.txt", "no\n")
    one(ws, ["cat $SRC/declared.txt > $OUT/o", "cat $SRC/secret.txt >> $OUT/o"],
        srcs="[declared.txt]", outs="[o]")
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 1 and st["t"] == "failed"
    assert "secret.txt: No such file" in st["_out"]


@pytest.mark.skipif(detect_mode() != "bwrap", reason="needs bubblewrap to hide the host filesystem")
def test_workspace_is_invisible_by_absolute_path(ws, capsys):
    ws.write("secret.txt", "no\n")
    one(ws, [f"cat {ws.root}/secret.txt > $OUT/o"], outs="[o]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed" and "No such file" in st["_out"]


def test_sources_are_read_only(ws, capsys):
    ws.write("a.txt", "a\n")
    one(ws, ["echo x >> $SRC/a.txt", "touch $OUT/o"], srcs="[a.txt]", outs="[o]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed"
    assert (ws.root / "a.txt").read_text() == "a\n"


def test_environment_is_scrubbed_and_pinned(ws, capsys, monkeypatch):
    monkeypatch.setenv("LEAKY_SECRET", "hunter2")
    one(ws, ["env | sort > $OUT/env", "umask > $OUT/umask"], outs="[env, umask]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    env = dict(line.split("=", 1) for line in (ws.out("t") / "env").read_text().splitlines() if "=" in line)
    assert "LEAKY_SECRET" not in env
    assert env["TZ"] == "UTC" and env["LC_ALL"] == "C"
    assert env["SOURCE_DATE_EPOCH"] == "315532800"
    assert env["HOME"].endswith("/home") and env["TMPDIR"].endswith("/tmp")
    assert env["PATH"].endswith("/.tools/bin") and ":" not in env["PATH"]
    assert env["HOME"].startswith(env["SRC"].removesuffix("/src"))  # HOME lives in the sandbox


@pytest.mark.skipif(detect_mode() != "bwrap", reason="an /etc of its own is bwrap's")
def test_etc_holds_our_users_and_the_hosts_loader_configuration_only(ws, capsys):
    from buildgraph.sandbox_etc import VISIBLE_ETC

    first = sorted(os.listdir("/etc/alternatives"))[0]
    one(ws, ["ls -A /etc > $OUT/ls", "cat /etc/ld.so.cache > $OUT/cache",
             f"readlink /etc/alternatives/{first} > $OUT/link"], outs="[ls, cache, link]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    shown = {"passwd", "group"} | {os.path.basename(p) for p in VISIBLE_ETC if os.path.exists(p)}
    assert set((ws.out("t") / "ls").read_text().split()) == shown
    assert (ws.out("t") / "cache").read_bytes() == Path("/etc/ld.so.cache").read_bytes()
    assert (ws.out("t") / "link").read_text().strip() == os.readlink(f"/etc/alternatives/{first}")


@pytest.mark.skipif(detect_mode() == "none", reason="no network namespace available")
def test_network_is_off(ws, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:   # the socket was closed at the end of the test, with no connection
            pass

    threading.Thread(target=accept, daemon=True).start()
    ws.write("net.sh", f"if (exec 3<>/dev/tcp/127.0.0.1/{port}); then echo connected; else echo refused; fi\n")
    one(ws, ["bash $SRC/net.sh > $OUT/o 2>/dev/null"], srcs="[net.sh]", outs="[o]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"]
    assert (ws.out("t") / "o").read_text().strip() == "refused"
    assert not accepted
    server.close()


@pytest.mark.skipif(detect_mode() == "none", reason="no network namespace available")
def test_each_running_action_has_a_loopback_of_its_own(ws, capsys):
    """Actions running at once, in spares or started for them, each bind the same loopback
    port and connect to it: no namespace is shared (netns.py lends each to one sandbox)."""
    ws.write("serve.py", """import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 47123))
server.listen(1)
time.sleep(0.5)   # the others bind while this one holds the port
socket.create_connection(("127.0.0.1", 47123)).sendall(sys.argv[1].encode())
print(server.accept()[0].recv(10).decode())
""")
    ws.write("BUILD.yaml", "targets:\n" + "".join(
        f"  t{i}: {{kind: script, srcs: [serve.py], outs: [o], cmds: [\"/usr/bin/python3 $SRC/serve.py t{i} > $OUT/o\"]}}\n"
        for i in range(6)))
    st = ws.build("-j6", capsys=capsys)
    assert st["_rc"] == 0, st["_out"]
    assert [(ws.out(f"t{i}") / "o").read_text() for i in range(6)] == [f"t{i}\n" for i in range(6)]
    # No interface but the loopback (up: above).
    one(ws, ["cat /proc/net/dev > $OUT/dev"], outs="[dev]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    names = [line.split(":")[0].strip() for line in (ws.out("t") / "dev").read_text().splitlines()[2:]]
    assert names == ["lo"]


@pytest.mark.skipif(detect_mode() != "bwrap" or os.geteuid() != 0,
                    reason="as root, bwrap would leave the action root's capabilities")
def test_an_action_run_by_root_cannot_write_through_its_read_only_dependencies(ws, capsys):
    """A dependency's outputs are hardlinks of the CAS's blobs, mounted read-only. An action
    with root's capabilities could remount them writable and poison the cache for every
    later build; the sandbox drops them all."""
    ws.write("BUILD.yaml", """targets:
  a: {kind: script, outs: [o], cmds: ["echo clean > $OUT/o"]}
  b:
    kind: script
    deps: [a]
    outs: [caps, seen]
    cmds:
      - "grep CapEff /proc/self/status | tr -d '\\\\t' > $OUT/caps"
      - "/usr/bin/mount -o remount,bind,rw $(dirname $DEP_A) 2>/dev/null || true"
      - "(echo poisoned > $DEP_A/o) 2>/dev/null || true"
      - "cat $DEP_A/o > $OUT/seen"
""")
    st = ws.build(capsys=capsys)
    assert st["b"] == "ran", st["_out"]
    assert (ws.out("b") / "caps").read_text() == "CapEff:0000000000000000\n"
    assert (ws.out("b") / "seen").read_text() == "clean\n"
    ws.run("clean")
    assert ws.build(capsys=capsys)["a"] == "cached"
    assert (ws.out("a") / "o").read_text() == "clean\n"


def test_missing_declared_output_is_an_error(ws, capsys):
    one(ws, ["touch $OUT/a"], outs="[a, b]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed"
    assert "declared output not produced: b" in st["_out"]


def test_undeclared_output_is_an_error(ws, capsys):
    one(ws, ["touch $OUT/a $OUT/stray"], outs="[a]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed"
    assert "undeclared output: stray" in st["_out"]


def test_directory_outputs_and_symlinks(ws, capsys):
    one(ws, ["mkdir -p $OUT/lib", "echo so > $OUT/lib/libx.so.1", "ln -s libx.so.1 $OUT/lib/libx.so"],
        outs="[lib/]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert os.readlink(ws.out("t") / "lib/libx.so") == "libx.so.1"
    assert (ws.out("t") / "lib/libx.so").read_text() == "so\n"


def test_symlink_leaving_the_output_root_is_rejected(ws, capsys):
    one(ws, ["ln -s ../../etc/passwd $OUT/p"], outs="[p]")
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed" and "leaves the output root" in st["_out"]


def test_failure_shows_stderr_and_keeps_a_log(ws, capsys):
    one(ws, ["echo to-stdout", "echo boom-on-stderr >&2", "exit 3"], outs="[o]")
    st = ws.build(capsys=capsys)
    assert st["_rc"] == 1
    assert "boom-on-stderr" in st["_out"] and "exit code 3" in st["_out"]
    log = (ws.root / ".buildgraph/logs/t.log").read_text()
    assert "to-stdout" in log and "boom-on-stderr" in log


def test_dependency_outputs_are_read_only(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          dep: {kind: script, outs: [d], cmds: ["echo d > $OUT/d"]}
          user: {kind: script, deps: [dep], outs: [u], cmds: ["echo tampered >> $DEP_DEP/d", "touch $OUT/u"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["dep"] == "ran" and st["user"] == "failed"
    assert (ws.out("dep") / "d").read_text() == "d\n"


def test_source_edited_after_hashing_is_not_run(ws, capsys):
    ws.write("a.txt", "one\n")
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, srcs: [a.txt], outs: [o], cmds: ["cp $SRC/a.txt $OUT/o"]}
        """)
    from buildgraph import sandbox

    real = sandbox.copy_hashed

    def edit_first(src, dest, mode):  # an editor saves the file between hashing and staging
        (ws.root / "a.txt").write_text("two\n")
        return real(src, dest, mode)

    sandbox.copy_hashed = edit_first
    try:
        st = ws.build(capsys=capsys)
    finally:
        sandbox.copy_hashed = real
    assert st["t"] == "failed" and "changed during the build" in st["_out"]
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "o").read_text() == "two\n"


def test_staging_does_not_touch_source_stat(ws, capsys):
    src = ws.write("a.txt", "one\n")
    before = src.stat()
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, srcs: [a.txt], outs: [o], cmds: ["cp $SRC/a.txt $OUT/o"]}
        """)
    assert ws.build(capsys=capsys)["t"] == "ran"
    after = src.stat()
    assert (after.st_ctime_ns, after.st_nlink) == (before.st_ctime_ns, before.st_nlink)


def test_reserved_env_names_are_rejected(ws, capsys):
    ws.write("BUILD.yaml", "targets:\n  t:\n    kind: script\n    cmds: [\"true\"]\n    env:\n      PATH: /usr/bin\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:6: targets.t.env.PATH: environment variable name 'PATH' is reserved" in err


@pytest.mark.parametrize("mode", ["unshare", "none"])
def test_fallback_modes_build_scrub_and_isolate(ws, capsys, mode):
    if mode == "unshare" and detect_mode("auto") == "none":
        pytest.skip("unshare -n does not work here")
    ws.write("in.txt", "data\n")
    ws.write("secret.txt", "no\n")
    ws.write("BUILD.yaml", """\
        targets:
          a: {kind: script, srcs: [in.txt], outs: [o, env], cmds: ["cp $SRC/in.txt $OUT/o", "env > $OUT/env"]}
          b: {kind: script, deps: [a], outs: [o], cmds: ["cat $DEP_A/o $DEP_A/o > $OUT/o"]}
          bad: {kind: script, srcs: [in.txt], outs: [o], cmds: ["cat $SRC/secret.txt > $OUT/o"]}
        """)
    st = ws.build("-k", "--sandbox", mode, capsys=capsys)
    assert (st["a"], st["b"], st["bad"]) == ("ran", "ran", "failed"), st["_out"]
    assert (ws.out("b") / "o").read_text() == "data\ndata\n"
    env = (ws.out("a") / "env").read_text()
    assert "TZ=UTC" in env and "SRC=/sandbox/" not in env     # paths mapped to the real sandbox
    assert ran_again_nothing(ws, capsys, mode)


def ran_again_nothing(ws, capsys, mode) -> bool:
    st = ws.build("--sandbox", mode, "a", "b", capsys=capsys)
    return st["a"] == "up-to-date" and st["b"] == "up-to-date"


def test_declared_licence_files_must_be_produced(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [share/], licenses: [share/LICENSE], cmds: ["mkdir -p $OUT/share && touch $OUT/share/README"]}
        """)
    st = ws.build(capsys=capsys)
    # the line that declared the missing file: its licences, not its outs
    assert st["t"] == "failed" and "BUILD.yaml:2: targets.t.licenses: declared output not produced: share/LICENSE" \
        in st["_out"], st["_out"]


def test_a_failed_actions_sandbox_is_kept_for_inspection(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [wanted], cmds: ["echo hours of work > $WORK/obj.o", "echo > $OUT/other"]}
        """)
    st = ws.build(capsys=capsys)
    kept = ws.cache / "failed" / "t"
    assert st["t"] == "failed" and f"its sandbox is kept in {kept}" in st["_out"] + st["_err"]
    assert (kept / "work" / "obj.o").read_text() == "hours of work\n" and (kept / "out" / "other").exists()
    ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [wanted], cmds: ["echo > $OUT/wanted"]}\n')
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert ws.run("cache", "gc", capsys=capsys)[0] == 0 and not kept.exists()


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_sandbox_debug_enters_a_failed_sandbox_as_its_commands_saw_it(ws, capsys, mode):
    ws.write("in.txt", "input\n")
    ws.write("BUILD.yaml", """\
        targets:
          dep: {kind: script, outs: [d], cmds: ["echo dep > $OUT/d"]}
          t: {kind: script, srcs: [in.txt], deps: [dep], outs: [o], env: {MINE: mine},
              cmds: ["cp $SRC/in.txt $WORK/copy", "exit 3"]}
        """)
    st = ws.build("--sandbox", mode, "--sandbox-debug", capsys=capsys)
    assert st["t"] == "failed"
    enter = ws.cache / "failed" / "t" / "enter.sh"
    assert f"its sandbox is kept; enter it with: sh {enter}" in st["_out"], st["_out"]
    # After the build has ended (its tool and /etc directories are gone), the shell sees the
    # sources, the dependency, the work left behind, the environment and the tools.
    probe = subprocess.run(["sh", str(enter), "-c", 'cat copy $SRC/in.txt $DEP_DEP/d; echo "$MINE"; '
                            'command -v cp; touch $OUT/o && echo wrote; echo x > $SRC/in.txt || echo ro'],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert probe.stdout.splitlines()[:4] == ["input", "input", "dep", "mine"], probe
    assert "wrote" in probe.stdout, probe
    if mode == "auto":   # bwrap: the sources are mounted read-only (elsewhere they are copies)
        assert probe.stdout.rstrip().endswith("ro"), probe
    assert (ws.root / "in.txt").read_text() == "input\n"


def test_only_the_declared_outputs_fixed_collects_from_the_kept_sandbox(ws, capsys):
    # The commands succeeded; the outputs were declared wrong (oneDNN's licences: 39 minutes
    # of compiling, then share/doc/dnnl/ instead of the declared path). Fixing the declaration
    # collects what that run made; changing anything the commands see runs them again.
    spec = """\
        targets:
          t: {{kind: script, outs: [{out}], cmds: ["od -An -N8 -tx8 /dev/urandom > $WORK/r", "cp $WORK/r $OUT/made", "{extra}true"]}}
        """
    ws.write("BUILD.yaml", spec.format(out="declared", extra=""))
    assert ws.build(capsys=capsys)["t"] == "failed"
    kept = ws.cache / "failed" / "t"
    made = (kept / "out" / "made").read_text()
    ws.write("BUILD.yaml", spec.format(out="made", extra=""))
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"] + st["_err"]
    assert (ws.out("t") / "made").read_text() == made            # that run's output, not a new one
    assert f"t: collected from {kept}, its failed run's sandbox" in st["_out"] + st["_err"]
    assert not kept.exists()
    # A command changed too: no re-collection.
    ws.write("BUILD.yaml", spec.format(out="declared", extra="echo; "))
    assert ws.build(capsys=capsys)["t"] == "failed"
    made = (kept / "out" / "made").read_text()
    ws.write("BUILD.yaml", spec.format(out="made", extra="echo 2; "))
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "made").read_text() != made
    # out/ touched while it was inspected: no re-collection either.
    ws.write("BUILD.yaml", spec.format(out="declared", extra="echo 3; "))
    assert ws.build(capsys=capsys)["t"] == "failed"
    (kept / "out" / "made").write_text("edited by hand\n")
    ws.write("BUILD.yaml", spec.format(out="made", extra="echo 3; "))
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "made").read_text() != "edited by hand\n"


def test_host_tool_by_absolute_path_is_that_program(ws, capsys, tmp_path, monkeypatch):
    """`host_tools` may name a program by path: by name, PATH finds a shim first (as pyenv's
    under /root, which the sandbox does not show); by path, the action runs that program."""
    shim_dir = tmp_path / "shims"
    shim_dir.mkdir()
    (shim_dir / "python3").write_text("#!/bin/sh\nexit 3\n")
    (shim_dir / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}:{os.environ['PATH']}")
    spec = """\
        host_tools: [default, {tool}]
        targets:
          t: {{kind: script, outs: [o], cmds: ["python3 -c 'print(6 * 7)' > $OUT/o"]}}
        """
    ws.write("BUILD.yaml", spec.format(tool="python3"))
    assert ws.build(capsys=capsys)["t"] == "failed"
    ws.write("BUILD.yaml", spec.format(tool="/usr/bin/python3"))
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran", st["_out"]
    assert (ws.out("t") / "o").read_text() == "42\n"


def test_without_bwrap_each_action_gets_a_tree_never_used_before_made_while_the_last_ran(ws, capsys, monkeypatch):
    # Without a pid namespace a process the action left behind could still write into its
    # tree, so no tree is used twice; the janitor thread makes the next action's tree in
    # place of each finished one, off the actions' path. Here each take waits for the
    # janitor, so that every tree after the first was made ahead.
    from buildgraph.sandbox import Sandbox

    take_root, ahead = Sandbox._take_root, []

    def take(self):
        self._to_clear.join()
        ahead.append(bool(self._free_roots))
        return take_root(self)
    monkeypatch.setattr(Sandbox, "_take_root", take)
    ws.write("BUILD.yaml", "host_tools: [sh]\ntargets:\n" + "".join(
        f"  t{i}: {{kind: script, outs: [where], {f'deps: [t{i - 1}], ' if i else ''}cmds: [\"pwd > $OUT/where\"]}}\n"
        for i in range(4)))
    st = ws.build("-j1", "--sandbox", "none", capsys=capsys)
    assert all(st[f"t{i}"] == "ran" for i in range(4)), st["_out"] + st["_err"]
    assert len({(ws.out(f"t{i}") / "where").read_text() for i in range(4)}) == 4
    assert ahead == [False, True, True, True]
    assert not any(ws.cache.joinpath("sandbox").iterdir())   # the one made after the last is gone too


@pytest.mark.skipif(detect_mode() != "bwrap", reason="sandbox trees are reused only under bubblewrap")
def test_a_reused_sandbox_tree_holds_nothing_of_the_action_before(ws, capsys, monkeypatch):
    # Under bwrap a finished action's tree is emptied and handed to a later one (through a
    # spare sandbox started ahead, or directly). Which host directory is mounted at
    # /sandbox/work shows which tree an action got; what it finds there first, and the mode
    # of its directories, shows that the tree came back empty and unchanged.
    # The janitor thread empties trees off the actions' path, usually before the next tree
    # is taken; here each take waits for it, so that every tree fit for reuse is reused.
    # An action that prints nothing in a tree whose last action printed logs nothing.
    from buildgraph.sandbox import Sandbox
    from buildgraph.state import StateDir
    from buildgraph.store.local import LocalStore

    take_root = Sandbox._take_root
    monkeypatch.setattr(Sandbox, "_take_root", lambda self: self._to_clear.join() or take_root(self))
    look = ("ls -A . > $TMPDIR/w; ls -A $OUT > $TMPDIR/o; stat -c %a . $OUT > $TMPDIR/m; "
            "grep ' /sandbox/work ' /proc/self/mountinfo | cut -d' ' -f4 > $OUT/where; "
            "cp $TMPDIR/w $OUT/work; cp $TMPDIR/o $OUT/out; cp $TMPDIR/m $OUT/modes")
    outs = "[where, work, out, modes]"
    names = ("litter", "after_litter", "chmod", "after_chmod", "later", "last")
    chain = "".join(f"\n          {t}: {{kind: script, deps: [{before}], outs: {outs}, cmds: [\"{look}\"]}}"
                    for before, t in zip(names[2:], names[3:]))
    ws.write("BUILD.yaml", f"""\
        host_tools: [sh, ls, stat, cp, grep, cut, mkdir, touch, chmod]
        targets:
          litter: {{kind: script, outs: {outs}, cmds: ["{look}", "echo noise; echo more noise >&2",
            "echo junk > junk; mkdir -p ro/deeper; touch ro/deeper/f; chmod 555 ro/deeper ro"]}}
          after_litter: {{kind: script, deps: [litter], outs: {outs}, cmds: ["{look}"]}}
          chmod: {{kind: script, deps: [after_litter], outs: {outs}, cmds: ["{look}", "chmod 700 . $OUT"]}}{chain}
        """)
    st = ws.build("-j1", capsys=capsys)
    assert all(st[t] == "ran" for t in names), st["_out"] + st["_err"]
    seen = {t: {f: (ws.out(t) / f).read_text() for f in ("where", "work", "out", "modes")} for t in names}
    trees = [seen[t]["where"] for t in names]
    assert len(set(trees)) < len(trees), trees   # trees were reused
    assert seen["chmod"]["where"] not in trees[names.index("chmod") + 1:], trees   # a chmodded one is not
    for t in names:
        assert seen[t]["work"] == seen[t]["out"] == "", (t, seen[t])
        assert seen[t]["modes"] == seen["litter"]["modes"], (t, seen[t])
    assert not any(ws.cache.joinpath("sandbox").iterdir())   # every tree removed at the end
    nodes, store = StateDir(ws.root).load().nodes, LocalStore(ws.cache)
    logs = {t: (r.stdout, r.stderr) for t in names for r in [store.get_result(nodes[t].key)]}
    store.close()
    assert None not in logs["litter"] and all(logs[t] == (None, None) for t in names[1:]), logs


def test_a_tree_emptied_for_reuse_keeps_its_log_files_empty_and_their_inodes(tmp_path):
    """The logs are emptied in place (a new inode costs a scan on an ext4 without a journal);
    one with a second name, or not a regular file, is removed like anything else."""
    from buildgraph.fsutil import empty_for_reuse, make_dirs

    root = tmp_path / "tree"
    for sub in ("out", "work"):
        make_dirs(str(root / sub))
    (root / ".stdout").write_text("noise\n")
    (root / ".stderr").write_text("more noise\n")
    (root / "work" / "junk").write_text("junk")
    inode = (root / ".stdout").stat().st_ino
    assert empty_for_reuse(str(root), ("out", "work"), (".stdout", ".stderr"))
    assert sorted(os.listdir(root)) == [".stderr", ".stdout", "out", "work"] and not os.listdir(root / "work")
    assert (root / ".stdout").stat().st_ino == inode and (root / ".stdout").read_text() == ""
    assert (root / ".stderr").read_text() == ""
    os.link(root / ".stdout", tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("kept\n")
    (root / ".stderr").unlink()
    (root / ".stderr").mkdir()
    assert empty_for_reuse(str(root), ("out", "work"), (".stdout", ".stderr"))
    assert sorted(os.listdir(root)) == ["out", "work"]
    assert (tmp_path / "elsewhere").read_text() == "kept\n"


def test_emptying_a_tree_removes_links_not_what_they_point_at_and_falls_back_where_a_directory_resists(
        tmp_path, monkeypatch):
    from buildgraph import fsutil

    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "f").write_text("kept\n")
    root = tmp_path / "tree"
    fsutil.make_dirs(str(root / "out" / "a" / "b"))
    (root / "out" / "a" / "b" / "f").write_text("x")
    os.symlink(outside / "keep", root / "out" / "a" / "to_dir")
    os.symlink(outside / "keep", root / "out" / "link")
    fsutil.make_dirs(str(root / "work" / "stubborn" / "deep"))
    quick = fsutil._remove_tree

    def resisting(path):   # as a directory an action made unwritable does for a user not root
        if path.endswith("stubborn"):
            raise PermissionError(13, "Permission denied", path)
        quick(path)
    monkeypatch.setattr(fsutil, "_remove_tree", resisting)
    assert fsutil.empty_for_reuse(str(root), ("out", "work"))
    assert not os.listdir(root / "out") and not os.listdir(root / "work")
    assert (outside / "keep" / "f").read_text() == "kept\n"


def _fake_host_etc(tmp_path, monkeypatch):
    """A host /etc of our own for sandbox_etc to copy: a file, a directory of files and one of links."""
    from buildgraph import sandbox_etc

    host = tmp_path / "host"
    (host / "ld.so.conf.d").mkdir(parents=True)
    (host / "ld.so.conf.d" / "libc.conf").write_text("/usr/local/lib\n")
    (host / "alternatives").mkdir()
    os.symlink("/usr/bin/gcc-12", host / "alternatives" / "cc")
    (host / "ld.so.cache").write_bytes(b"cache v1")
    past = 1_600_000_000
    for p in (host / "ld.so.conf.d" / "libc.conf", host / "ld.so.cache", host / "ld.so.conf.d", host / "alternatives"):
        os.utime(p, (past, past))
    time.sleep(0.15)   # older than the racy window (digest.is_racy), by ctime too
    monkeypatch.setattr(sandbox_etc, "VISIBLE_ETC", tuple(str(host / n) for n in ("ld.so.cache", "ld.so.conf.d",
                                                                                  "alternatives")))
    return host


def test_the_sandbox_etc_is_kept_until_a_host_file_changes_even_in_place(tmp_path, monkeypatch):
    from buildgraph.sandbox_etc import etc_dir

    host = _fake_host_etc(tmp_path, monkeypatch)
    kept, tmp = tmp_path / "etc", tmp_path / "tmp"
    tmp.mkdir()
    first, own = etc_dir(str(kept), str(tmp / "1"))
    assert not own and os.path.dirname(first) == str(kept)
    assert sorted(os.listdir(first)) == ["alternatives", "group", "ld.so.cache", "ld.so.conf.d", "passwd"]
    assert os.readlink(f"{first}/alternatives/cc") == "/usr/bin/gcc-12"
    assert Path(f"{first}/ld.so.conf.d/libc.conf").read_text() == "/usr/local/lib\n"
    assert etc_dir(str(kept), str(tmp / "2")) == (first, False) and os.listdir(tmp) == []   # no copy made
    # Appended to in place (its directory's mtime does not move): a new copy, with the new content.
    with open(host / "ld.so.conf.d" / "libc.conf", "a") as f:
        f.write("/opt/lib\n")
    os.utime(host / "ld.so.conf.d" / "libc.conf", (1_600_000_100, 1_600_000_100))
    time.sleep(0.15)
    second, own = etc_dir(str(kept), str(tmp / "3"))
    assert second != first and not own
    assert Path(f"{second}/ld.so.conf.d/libc.conf").read_text() == "/usr/local/lib\n/opt/lib\n"
    # A link changed just now may change again unseen: this build's own copy, not kept.
    os.remove(host / "alternatives" / "cc")
    os.symlink("/usr/bin/clang", host / "alternatives" / "cc")
    third, own = etc_dir(str(kept), str(tmp / "4"))
    assert own and third == str(tmp / "4") and os.readlink(f"{third}/alternatives/cc") == "/usr/bin/clang"
    assert sorted(os.listdir(kept)) == sorted(os.path.basename(p) for p in (first, second))


@pytest.mark.skipif(detect_mode() != "bwrap", reason="an /etc of its own is bwrap's")
def test_builds_share_one_sandbox_etc_and_cache_gc_removes_it(ws, capsys):
    one(ws, ["cat /etc/passwd > $OUT/o"], outs="[o]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    kept = os.listdir(ws.cache / "etc")
    one(ws, ["cat /etc/group > $OUT/o"], outs="[o]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert os.listdir(ws.cache / "etc") == kept and len(kept) == 1
    assert ws.run("cache", "gc", capsys=capsys)[0] == 0 and not (ws.cache / "etc").exists()


def test_a_keyed_etc_file_edited_in_place_changes_the_key(ws, capsys, monkeypatch):
    # The loader's configuration is in every key (the host tools' digest). An edit in place
    # leaves its directory's stat as it was: the signature that lets the digest be reused,
    # and the no-op check's facts, must look at the file itself.
    from buildgraph import sandbox, signatures

    conf = ws.root.parent / "host-etc" / "ld.so.conf.d"
    conf.mkdir(parents=True)
    (conf / "libc.conf").write_text("/usr/local/lib\n")
    time.sleep(0.15)   # older than the racy window, or nothing is remembered
    monkeypatch.setattr(signatures, "KEYED_ETC", (str(conf),))
    monkeypatch.setattr(sandbox, "KEYED_ETC", (str(conf),))
    one(ws, ["echo built > $OUT/o"], outs="[o]")
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert ws.build(capsys=capsys)["t"] == "up-to-date"
    before = os.stat(conf)
    with open(conf / "libc.conf", "a") as f:
        f.write("/opt/lib\n")
    assert os.stat(conf).st_mtime_ns == before.st_mtime_ns
    time.sleep(0.15)
    assert ws.build(capsys=capsys)["t"] == "ran"


_LOOK_AROUND = ("env > $OUT/seen; set >> $OUT/seen; echo $$ $0 $# $- >> $OUT/seen; ls /proc/self/fd >> $OUT/seen; "
                "ls -l /proc/self/fd/0 | cut -c1-10 >> $OUT/seen; readlink /proc/self/fd/0 >> $OUT/seen; "
                "umask >> $OUT/seen; pwd >> $OUT/seen; cat /proc/sys/kernel/hostname >> $OUT/seen; "
                "ls -A / /tmp /dev $TMPDIR $HOME >> $OUT/seen; ps -e -o pid=,comm= >> $OUT/seen")


def _spares_used(monkeypatch) -> list:
    from buildgraph.sandbox import Sandbox

    used = []
    start_in = Sandbox._start_in
    monkeypatch.setattr(Sandbox, "_start_in", lambda self, spare, *a: used.append(
        (spare in self._spares_taken, start_in(self, spare, *a))) or used[-1][1])
    take = Sandbox._take_spare
    monkeypatch.setattr(Sandbox, "_spares_taken", [], raising=False)
    monkeypatch.setattr(Sandbox, "_take_spare", lambda self, *a: self._spares_taken.append(take(self, *a))
                        or self._spares_taken[-1])
    return used


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
def test_an_action_in_a_spare_sandbox_sees_what_sh_started_with_its_environment_sees(ws, capsys, monkeypatch):
    # The first action of a tool set starts its own sandbox; the ones after it run in spares
    # started ahead. In both, a waiting shell reads the action's program from a pipe and
    # exports its environment itself. What the commands see must be to the byte what they
    # see in `sh -e -c` started with that environment (by `env -i`): environment and its
    # order, shell variables and options, argv, pid, open descriptors and how stdin is open,
    # umask, directory, hostname, what the filesystem and process table hold.
    from buildgraph import sandbox

    used = _spares_used(monkeypatch)
    tools = "host_tools: [sh, env, ls, cut, readlink, cat, ps]\ntargets:\n"

    def targets(names):
        return tools + "".join(f"  {t}: {{kind: script, outs: [seen], env: {{ZED: z, ABC: a}}, "
                               f"cmds: [\"echo {t}\", \"{_LOOK_AROUND}\"]}}\n" for t in names)
    ws.write("BUILD.yaml", targets(("first", "second", "third")))
    st = ws.build("-j1", capsys=capsys)
    assert all(st[t] == "ran" for t in ("first", "second", "third")), st["_out"] + st["_err"]
    assert not used[0][0] and any(taken for taken, _ in used) and all(ok for _, ok in used), used
    monkeypatch.setattr(sandbox, "_program", sandbox._program_by_env)
    ws.write("BUILD.yaml", targets(("started_by_env",)))
    st = ws.build("-j1", capsys=capsys)
    assert st["started_by_env"] == "ran", st["_out"] + st["_err"]
    seen = {t: (ws.out(t) / "seen").read_text() for t in ("first", "second", "third", "started_by_env")}
    assert "\n1 /bin/sh 0 e\n" in seen["first"] and "ZED=z" in seen["first"]   # the namespace's pid 1
    assert seen["first"] == seen["second"] == seen["third"] == seen["started_by_env"]


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
def test_a_variable_the_shell_sets_itself_is_what_sh_started_with_it_makes_of_it(ws, capsys, monkeypatch):
    # Exported by the waiting shell, PPID and OPTIND would keep the action's values; a `sh`
    # started with them in its environment sets its own. Such an environment goes by env -i.
    from buildgraph import sandbox

    def target(name):
        return ("host_tools: [sh, env, grep]\ntargets:\n"
                f"  {name}: {{kind: script, outs: [o], env: {{PPID: '7', OPTIND: '5', A: b}}, "
                f"cmds: [\": {name}; echo $PPID $OPTIND $A > $OUT/o; env | grep -v '^PWD=' >> $OUT/o\"]}}\n")
    ws.write("BUILD.yaml", target("ours"))
    assert ws.build(capsys=capsys)["ours"] == "ran"
    monkeypatch.setattr(sandbox, "_program", sandbox._program_by_env)
    ws.write("BUILD.yaml", target("by_env"))
    assert ws.build(capsys=capsys)["by_env"] == "ran"
    ours, by_env = ((ws.out(t) / "o").read_text() for t in ("ours", "by_env"))
    assert ours.startswith("0 1 b\n") and ours == by_env   # pid 1 of its namespace: no parent there


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
def test_a_spare_sandbox_that_died_while_it_waited_is_not_an_action_failure(ws, capsys, monkeypatch):
    from buildgraph.sandbox import Sandbox

    spawn = Sandbox._spawn

    def spawn_and_kill(self, *args):   # the spares started ahead, not those started for an action
        spare = spawn(self, *args)
        if threading.current_thread().name == "bg-sandbox-spawner":
            os.killpg(spare.proc.pid, 9)
            spare.proc.wait()
        return spare
    monkeypatch.setattr(Sandbox, "_spawn", spawn_and_kill)
    used = _spares_used(monkeypatch)
    ws.write("BUILD.yaml", "host_tools: [sh]\ntargets:\n" + "".join(
        f"  t{i}: {{kind: script, outs: [o], cmds: [\"echo {i} > $OUT/o\"]}}\n" for i in range(4)))
    st = ws.build("-j1", capsys=capsys)
    assert all(st[f"t{i}"] == "ran" for i in range(4)), st["_out"] + st["_err"]
    taken = [ok for taken, ok in used if taken]
    assert taken and not any(taken), used
    assert [(ws.out(f"t{i}") / "o").read_text() for i in range(4)] == [f"{i}\n" for i in range(4)]
    assert not any(ws.cache.joinpath("sandbox").iterdir())


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
def test_a_build_starts_a_spare_ahead_for_the_mount_set_the_last_build_began_with(ws, capsys, monkeypatch):
    # A one-leaf change runs one action after another; the first would start its own sandbox
    # (~10 ms) while the build is otherwise idle. The build starts one as it begins, for the
    # mount set the last build's first action used, and the first action runs in it.
    used = _spares_used(monkeypatch)
    ws.write("BUILD.yaml", "host_tools: [sh, cat]\ntargets:\n"
             "  t: {kind: script, srcs: [a], outs: [o], cmds: [\"cat $SRC/a > $OUT/o\"]}\n")
    ws.write("a", "1\n")
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert [taken for taken, _ in used] == [False]   # nothing to guess from yet
    ws.write("a", "2\n")
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran" and (ws.out("t") / "o").read_text() == "2\n", st["_out"] + st["_err"]
    assert used[1:] == [(True, True)]


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
@pytest.mark.parametrize("hint", [b"not a pickle", b"\x80\x05K\x07.", None])
def test_a_spare_started_on_a_wrong_guess_is_ended_with_the_build(ws, capsys, hint):
    # The guess is only a guess: unreadable, of another shape, or for a mount set no action
    # of this build has (an edited host_tools), the build runs as it would without it and
    # leaves nothing behind.
    ws.write("BUILD.yaml", "host_tools: [sh]\ntargets:\n  t: {kind: script, srcs: [a], outs: [o], cmds: [\"echo > $OUT/o\"]}\n")
    ws.write("a", "1\n")
    assert ws.build(capsys=capsys)["t"] == "ran"
    if hint is not None:
        (ws.root / ".buildgraph" / "spare-hint.pickle").write_bytes(hint)
    else:
        ws.write("BUILD.yaml", "host_tools: [sh, cat]\ntargets:\n"
                 "  t: {kind: script, srcs: [a], outs: [o], cmds: [\"cat $SRC/a > $OUT/o\"]}\n")
    ws.write("a", "2\n")
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran" and st["_rc"] == 0, st["_out"] + st["_err"]
    assert not any(ws.cache.joinpath("sandbox").iterdir())
    assert not subprocess.run(["pgrep", "-f", f"bwrap.*{ws.cache}"], capture_output=True).stdout


@pytest.mark.skipif(detect_mode() != "bwrap", reason="spare sandboxes are bubblewrap's")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the spawner's, meant
def test_an_action_does_not_wait_for_a_spare_whose_start_failed(tmp_path, monkeypatch):
    # An action that asks for a spare the spawner is starting waits for it. A start that
    # raised (not just failed to run bwrap) must end that wait, or the build hangs.
    from types import SimpleNamespace

    from buildgraph.sandbox import Sandbox
    from buildgraph.store.local import LocalStore

    def spawn(self, *args):
        raise RuntimeError("broken start")
    monkeypatch.setattr(Sandbox, "_spawn", spawn)
    store = LocalStore(tmp_path / "cache")
    sandbox = Sandbox(store, "bwrap")
    key = (((), ()), False)
    sandbox._ask_spare(key)
    sandbox._spawner.join(timeout=10)
    assert not sandbox._spawner.is_alive()
    action = SimpleNamespace(source_fetch=None, compilers=(), commands=("true",), jobserver=None)
    taken = []
    taker = threading.Thread(target=lambda: taken.append(sandbox._take_spare(action, key[0])), daemon=True)
    taker.start()
    taker.join(timeout=10)
    assert taken == [None]
    sandbox._spawner = None   # it died of the error above: nothing to join
    sandbox.close()
    store.close()
    assert not any((tmp_path / "cache" / "sandbox").iterdir())


def test_the_sandbox_mode_is_probed_once_per_cache_while_its_facts_hold(tmp_path, monkeypatch):
    from buildgraph import sandbox

    probes = []
    real = sandbox._probe
    monkeypatch.setattr(sandbox, "_probe", lambda argv: probes.append(argv) or real(argv))
    first = detect_mode("auto", str(tmp_path))
    asked = len(probes)
    assert asked >= 1 and detect_mode("auto", str(tmp_path)) == first and len(probes) == asked
    (tmp_path / "sandbox-mode.json").write_text('{"facts": "another machine", "value": "none"}')
    assert detect_mode("auto", str(tmp_path)) == first and len(probes) == 2 * asked
    memo = (tmp_path / "sandbox-mode.json").read_text()
    (tmp_path / "sandbox-mode.json").write_text(memo.replace(f'"{first}"', '"chroot"'))   # not a mode
    assert detect_mode("auto", str(tmp_path)) == first and len(probes) == 3 * asked
