"""A cache you can trust: each test is one way the store once served a wrong result,
let a poisoned entry escape, or crashed (issue 11). Every one failed before its fix."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import Workspace, ran
from servers import NGINX, HostileServer, NginxServer, drip
from test_store import verify_cas

from buildgraph import fsutil
from buildgraph.action import ActionResult, OutputFile
from buildgraph.state import StateDir
from buildgraph.store.local import LocalStore

ONE = """\
targets:
  a: {kind: script, srcs: [a.txt], outs: [f], cmds: ["cp $SRC/a.txt $OUT/f"]}
"""


def sibling(ws, name="ws2") -> Workspace:
    """Another workspace on the same cache."""
    other = Workspace(ws.root.parent / name, ws.cache)
    other.root.mkdir()
    other.write("toolchains/host-gcc.yaml", (ws.root / "toolchains" / "host-gcc.yaml").read_text())
    for f in ("BUILD.yaml", "a.txt"):
        if (ws.root / f).exists():
            shutil.copy(ws.root / f, other.root / f)
    return other


def keys(ws) -> dict:
    return {n: r.key for n, r in StateDir(ws.root).load().nodes.items()}


def damage_blob(cache, content: bytes, replacement: bytes) -> None:
    """Edit, in place and at the same size, the CAS blob holding `content`."""
    for blob in (cache / "cas").rglob("*"):
        if blob.is_file() and blob.read_bytes() == content:
            blob.chmod(0o644)
            blob.write_bytes(replacement)
            return
    raise AssertionError("no such blob")


# 1 -------------------------------------------------------------------------------------

def test_an_edit_in_out_never_reaches_the_store(ws, capsys):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    assert ws.build(capsys=capsys)["a"] == "ran"
    with open(ws.out("a") / "f", "a") as f:    # a release step edits an output in place
        f.write("CORRUPT\n")
    assert verify_cas(ws.cache) >= 1                                   # the blob is intact
    assert ws.build(capsys=capsys)["a"] == "cached"                   # noticed and restored
    assert (ws.out("a") / "f").read_text() == "hello\n"
    other = sibling(ws)
    assert other.build(capsys=capsys)["a"] == "cached"
    assert (other.out("a") / "f").read_text() == "hello\n"
    os.truncate(ws.out("a") / "f", 0)            # same inode, same mtime second: still noticed
    assert ws.build(capsys=capsys)["a"] == "cached"
    assert (ws.out("a") / "f").read_text() == "hello\n"


def test_new_content_is_never_deduped_onto_a_damaged_blob(ws, capsys):
    ws.write("BUILD.yaml", ONE + '  b: {kind: script, outs: [g], cmds: ["echo hello > $OUT/g"]}\n')
    ws.write("a.txt", "hello\n")
    ws.build("a", capsys=capsys)
    damage_blob(ws.cache, b"hello\n", b"HELLO\n")
    assert ws.build("b", capsys=capsys)["b"] == "ran"
    assert verify_cas(ws.cache) >= 1
    assert list((ws.cache / "quarantine").iterdir())


def test_cache_verify_finds_quarantines_and_drops(ws, capsys):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    ws.build(capsys=capsys)
    damage_blob(ws.cache, b"hello\n", b"HELLO\n")
    rc, out, _ = ws.run("cache", "verify", capsys=capsys)
    assert rc == 1 and "damaged blob" in out and "names a damaged blob" in out
    rc, out, _ = ws.run("cache", "verify", "--repair", capsys=capsys)
    assert rc == 0 and "quarantined" in out and "dropped" in out
    assert ws.run("cache", "verify", capsys=capsys)[0] == 0
    ws.run("clean", capsys=capsys)
    assert ws.build(capsys=capsys)["a"] == "ran"
    assert (ws.out("a") / "f").read_text() == "hello\n"


# 2 -------------------------------------------------------------------------------------

def test_a_damaged_blob_is_never_uploaded(ws, capsys, tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    server = NginxServer(tmp_path / "nginx")
    try:
        ws.write("BUILD.yaml", ONE + '  b: {kind: script, outs: [g], cmds: ["echo hello > $OUT/g"]}\n')
        ws.write("a.txt", "hello\n")
        ws.build("a", capsys=capsys)
        damage_blob(ws.cache, b"hello\n", b"HELLO\n")
        st = ws.build("b", "--remote-cache", server.url, capsys=capsys)
        assert st["b"] == "ran"
        fresh = Workspace(tmp_path / "fresh", tmp_path / "cache2")
        fresh.root.mkdir()
        shutil.copy(ws.root / "BUILD.yaml", fresh.root)
        shutil.copy(ws.root / "a.txt", fresh.root)
        fresh.write("toolchains/host-gcc.yaml", (ws.root / "toolchains/host-gcc.yaml").read_text())
        assert fresh.build("b", "--remote-cache", server.url, capsys=capsys)["b"] == "cached"
        assert (fresh.out("b") / "g").read_text() == "hello\n"
    finally:
        server.stop()


# 3 -------------------------------------------------------------------------------------

NONDET = """\
targets:
  t: {kind: script, outs: [t], cmds: ["date +%s%N > $OUT/t"]}
  user: {kind: script, srcs: [u.txt], deps: [t], outs: [u], cmds: ["cat $SRC/u.txt $DEP_T/t > $OUT/u"]}
"""


def test_dependents_are_staged_only_with_the_outputs_their_key_names(ws, capsys):
    ws.write("BUILD.yaml", NONDET)
    ws.write("u.txt", "one\n")
    ws.build(capsys=capsys)
    mine = (ws.out("t") / "t").read_text()
    store = LocalStore(ws.cache)
    store.index.delete(keys(ws)["t"])                 # as gc would
    store.close()
    other = sibling(ws)
    shutil.copy(ws.root / "u.txt", other.root)
    assert other.build("t", capsys=capsys)["t"] == "ran"   # another output under the same key
    assert (other.out("t") / "t").read_text() != mine
    ws.write("u.txt", "two\n")
    st = ws.build(capsys=capsys)
    assert st["user"] == "ran"
    assert (ws.out("user") / "u").read_text() == "two\n" + mine


def test_the_action_cache_is_write_once(tmp_path):
    store = LocalStore(tmp_path / "c")
    first = ActionResult(files=(OutputFile("f", store.put_bytes(b"1"), 1, False),))
    second = ActionResult(files=(OutputFile("f", store.put_bytes(b"2"), 1, False),))
    assert store.put_result("k" * 32, first) == first
    assert store.put_result("k" * 32, second) == first
    assert store.get_result("k" * 32) == first
    store.close()


def test_a_racing_different_result_is_reported_and_the_first_one_used(ws, capsys, monkeypatch):
    """Two builds run the same non-reproducible action at once: the one that records second
    is told, and uses (and stages for its dependents) the result recorded first."""
    ws.write("BUILD.yaml", NONDET)
    ws.write("u.txt", "one\n")
    ws.build(capsys=capsys)
    first = (ws.out("t") / "t").read_text()
    ws.run("clean", capsys=capsys)
    real = LocalStore.get_result
    # The reuse check misses, as it would in a build that looked before the other one recorded.
    monkeypatch.setattr(LocalStore, "get_result", lambda self, key, count=True: None if count else real(self, key, count))
    st = ws.build(capsys=capsys)
    assert st["t"] == "ran" and "t is not reproducible" in st["_err"]
    assert (ws.out("t") / "t").read_text() == first
    assert (ws.out("user") / "u").read_text() == "one\n" + first


def test_a_result_that_cannot_be_materialized_is_a_miss_that_drops_it(ws, capsys, monkeypatch):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    ws.build(capsys=capsys)
    ws.run("clean", capsys=capsys)
    calls = []

    def broken(src, dest, mode):
        calls.append(dest)
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(fsutil, "copy_new", broken)
    st = ws.build(capsys=capsys)   # the entry is dropped; the run that follows cannot materialize either
    assert calls and st["a"] == "failed" and "could not be restored" in st["_err"]
    assert st["_err"].count("dropped from the cache") == 2
    monkeypatch.undo()
    assert ws.build(capsys=capsys)["a"] == "ran"
    assert (ws.out("a") / "f").read_text() == "hello\n"


# 4 -------------------------------------------------------------------------------------

def test_a_source_edited_within_one_timestamp_tick_is_not_run(ws, capsys, monkeypatch):
    """On a filesystem with 1 s timestamps a same-size edit leaves the stat signature alone."""
    from buildgraph import sandbox

    from buildgraph import engine
    coarse = lambda st: (st.st_dev, st.st_ino, st.st_size)  # noqa: E731
    monkeypatch.setattr(sandbox, "stat_signature", coarse, raising=False)
    monkeypatch.setattr(engine, "stat_signature", coarse, raising=False)
    src = ws.write("b.txt", "ORIG\n")
    ws.write("BUILD.yaml", f"""\
        targets:
          a: {{kind: script, outs: [x], cmds: ["printf 'EDIT\\\\n' > {src}", "echo > $OUT/x"]}}
          b: {{kind: script, srcs: [b.txt], deps: [a], outs: [o], cmds: ["cp $SRC/b.txt $OUT/o"]}}
        """)
    st = ws.build("--sandbox", "none", capsys=capsys)
    assert st["b"] == "failed" and "changed during the build" in st["_out"] + st["_err"]


# 5 -------------------------------------------------------------------------------------

def _bwrap_or_skip():
    from buildgraph.sandbox import detect_mode
    if detect_mode() != "bwrap":
        pytest.skip("needs bubblewrap")


@pytest.mark.parametrize("where", ["/usr/local/include", "/etc"])
def test_host_files_no_key_follows_are_hidden(ws, capsys, where):
    _bwrap_or_skip()
    if not os.access(where, os.W_OK):
        pytest.skip(f"{where} is not writable here")
    probe = f"{where}/buildgraph-probe-{os.getpid()}-{time.monotonic_ns()}.h"
    with open(probe, "w") as f:
        f.write("#define HOST_ONLY 1\n")
    try:
        ws.write("BUILD.yaml", f"""\
            targets:
              t: {{kind: script, outs: [o], cmds: ["cat {probe} > $OUT/o 2>/dev/null || echo hidden > $OUT/o"]}}
            """)
        assert ws.build(capsys=capsys)["t"] == "ran"
        assert (ws.out("t") / "o").read_text() == "hidden\n"
    finally:
        os.unlink(probe)


def test_a_host_toolchain_is_keyed_by_its_debian_package_closure(ws, capsys, tmp_path, monkeypatch):
    """gcc reads libc6-dev's headers: a libc6-dev upgrade must change the key."""
    admin = "/var/lib/dpkg"
    if not os.path.exists(f"{admin}/status") or not shutil.which("gcc-12"):
        pytest.skip("needs Debian's gcc-12")
    fake = tmp_path / "dpkg"
    shutil.copytree(f"{admin}/info", fake / "info", symlinks=True,
                    ignore=lambda d, fs: [f for f in fs if not f.startswith(("gcc", "cpp", "binutils"))])
    status = open(f"{admin}/status").read()
    (fake / "status").write_text(status)
    try:
        from buildgraph import hostpkgs
        monkeypatch.setattr(hostpkgs, "DPKG_ADMIN", str(fake))
    except ImportError:
        pass
    ws.write("BUILD.yaml", """\
        toolchain: host-gcc
        targets:
          t: {kind: script, outs: [o], cmds: ["echo '#include <stdio.h>' | cc -E - | grep -c printf > $OUT/o"]}
        """)
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert "libc6-dev" in status
    assert ws.build(capsys=capsys)["t"] == "up-to-date"
    start = status.index("Package: libc6-dev\n")
    end = status.index("\n\n", start)
    (fake / "status").write_text(status[:start] + re.sub(r"\nVersion: .*", "\nVersion: 99-upgraded",
                                                         status[start:end]) + status[end:])
    assert ws.build(capsys=capsys)["t"] == "ran"
    rc, out, _ = ws.run("plan", capsys=capsys)
    assert "not hermetic: toolchain host-gcc (host)" in out


def test_the_package_closure_is_remembered_by_the_cache_until_the_dpkg_database_changes(ws, capsys, monkeypatch):
    """A new workspace's first build asks dpkg nothing the cache's last build asked; a changed
    database is asked again, and its answer replaces the old one's (one file per set of
    programs); a damaged file is asked again."""
    from buildgraph import hostpkgs
    sig = hostpkgs.status_signature()
    if sig is None:
        pytest.skip("needs a dpkg database")
    asked = []
    digest = hostpkgs.packages_digest
    monkeypatch.setattr(hostpkgs, "packages_digest", lambda *a, **kw: asked.append(a) or digest(*a, **kw))
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [o], cmds: ["echo one > $OUT/o"]}
        """)
    assert ws.build(capsys=capsys)["t"] == "ran" and len(asked) == 1
    assert sibling(ws).build(capsys=capsys)["t"] == "cached" and len(asked) == 1
    monkeypatch.setattr(hostpkgs, "status_signature", lambda admin=None: (*sig[:2], sig[2] + 1, sig[3]))
    assert sibling(ws, "ws3").build(capsys=capsys)["t"] == "cached" and len(asked) == 2
    assert len(os.listdir(ws.cache / "hostpkgs")) == 1
    (ws.cache / "hostpkgs" / os.listdir(ws.cache / "hostpkgs")[0]).write_text("{not json")
    assert sibling(ws, "ws4").build(capsys=capsys)["t"] == "cached" and len(asked) == 3


# 6 -------------------------------------------------------------------------------------

def test_umask_and_affinity_are_pinned_and_the_kernel_is_keyed(ws, capsys, monkeypatch):
    ws.write("BUILD.yaml", """\
        host_tools: [default, nproc]
        targets:
          t: {kind: script, outs: [o], cmds: ["umask > $OUT/o", "nproc >> $OUT/o"]}
        """)
    old_mask = os.umask(0o077)
    old_cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(old_cpus)})
        assert ws.build(capsys=capsys)["t"] == "ran"
    finally:
        os.umask(old_mask)
        os.sched_setaffinity(0, old_cpus)
    assert (ws.out("t") / "o").read_text().split() == ["0022", str(os.cpu_count())]
    from buildgraph import signatures
    monkeypatch.setattr(signatures, "kernel_release", lambda: "0.0.0-other-kernel")
    assert sibling(ws).build(capsys=capsys)["t"] == "ran"       # another kernel: another key


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_what_an_action_sees_of_its_inputs_does_not_follow_the_builds_umask(tmp_path, capsys, mode):
    """The key does not hold the umask of the build that stages an action's inputs, so the
    modes the action sees of them (its sources, dependency outputs and directories) must not
    follow it either: else two builds under one key see different inputs."""
    if mode == "bwrap":
        _bwrap_or_skip()
    seen, keyed = {}, {}
    for mask in (0o022, 0o077):
        ws = Workspace(tmp_path / f"ws-{mask:o}", tmp_path / f"cache-{mask:o}")   # a cache each: both run
        ws.write("sub/a.txt", "a\n")
        ws.write("BUILD.yaml", """\
            host_tools: [default, stat]
            targets:
              d: {kind: script, outs: [o], cmds: ["echo d > $OUT/o"]}
              t:
                kind: script
                srcs: [sub/a.txt]
                deps: [d]
                outs: [modes]
                cmds: ["stat -c %a $SRC $SRC/sub $SRC/sub/a.txt $DEP_D $DEP_D/o $OUT . $TMPDIR $HOME > $OUT/modes"]
            """)
        old_mask = os.umask(mask)
        try:
            st = ws.build("--sandbox", mode, capsys=capsys)
        finally:
            os.umask(old_mask)
        assert st["t"] == "ran", st
        seen[mask], keyed[mask] = (ws.out("t") / "modes").read_text().split(), keys(ws)["t"]
    assert keyed[0o077] == keyed[0o022]
    assert seen[0o077] == seen[0o022], f"the action saw other modes under the same key: {seen}"
    assert seen[0o022][:3] == ["755", "755", "644"]


# 7 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["none", "unshare", "bwrap"])
def test_a_background_process_cannot_write_into_the_store(ws, capsys, mode):
    from buildgraph.sandbox import _probe
    if mode == "unshare" and not _probe(["unshare", "-n", "true"]):
        pytest.skip("unshare -n not permitted")
    if mode == "bwrap":
        _bwrap_or_skip()
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [f], cmds: ["exec 3>$OUT/f", "echo ok >&3", "(sleep 1; echo LATE >&3) &"]}
        """)
    assert ws.build("--sandbox", mode, capsys=capsys)["t"] == "ran"
    time.sleep(1.5)
    verify_cas(ws.cache)
    ws.run("clean", capsys=capsys)
    assert ws.build("--sandbox", mode, capsys=capsys)["t"] == "cached"
    assert (ws.out("t") / "f").read_text() == "ok\n"


# 8, 9 ----------------------------------------------------------------------------------

def test_a_directory_replaced_with_the_same_mtimes_is_listed_again(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, srcs: ["src/**"], outs: [o], cmds: ["ls $SRC/src > $OUT/o"]}
        """)
    ws.write("src/a.c", "a\n")
    time.sleep(0.3)
    ws.build(capsys=capsys)
    st = os.stat(ws.root / "src")
    shutil.copytree(ws.root / "src", ws.root / "new")
    (ws.root / "new" / "b.c").write_text("b\n")
    shutil.rmtree(ws.root / "src")
    os.rename(ws.root / "new", ws.root / "src")            # as a tarball unpacked in its place
    os.utime(ws.root / "src", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "o").read_text() == "a.c\nb.c\n"


def test_a_directory_listed_within_its_timestamp_tick_is_listed_again(tmp_path):
    """On a 1 s filesystem a file added in the same second as the listing leaves the directory's
    times unchanged: a listing that young is never trusted."""
    from buildgraph import globs

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("a\n")
    paths, visited, _ = globs.expand(str(tmp_path), ("src/*",))
    assert paths == ["src/a.c"] and visited[str(tmp_path / "src")] is None
    assert not globs.still_valid(visited, {})
    time.sleep(0.3)
    _, visited, _ = globs.expand(str(tmp_path), ("src/*",))
    assert globs.still_valid(visited, {})


def test_a_same_size_build_file_with_the_old_mtime_is_read_again(ws, capsys):
    build = ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [o], cmds: ["echo aaa > $OUT/o"]}\n')
    time.sleep(0.3)
    ws.build(capsys=capsys)
    st = build.stat()
    with open(build, "r+") as f:                            # cp -p: same inode, size and mtime
        f.write(build.read_text().replace("aaa", "bbb"))
    os.utime(build, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ws.build(capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "o").read_text() == "bbb\n"


# 10, 11, 16 ----------------------------------------------------------------------------

def _poison(ws, files, links):
    """Build ONE, clean, and replace a's cache entry with these files and links; each file
    names a's real blob ("hello\n")."""
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    ws.run("build")
    key = keys(ws)["a"]
    store = LocalStore(ws.cache)
    blob = json.loads(store.index.get(key)[0])["files"][0][1]
    data = {"v": 1, "files": [[f, blob, 6, False] for f in files], "symlinks": links, "stdout": None,
            "stderr": None, "exit_code": 0, "duration": 0}
    store.index.set(key, json.dumps(data).encode(), time.time())
    store.close()
    ws.run("clean")


def test_a_symlink_chain_cannot_escape_the_output_root(ws, capsys):
    _poison(ws, ["f", "d/PWNED"], [["a", "."], ["b", "a/.."], ["c", "b/.."], ["d", "c/.."]])
    st = ws.build(capsys=capsys)
    assert st["a"] == "ran" and st["_rc"] == 0
    assert not list(ws.root.parent.rglob("PWNED"))


def test_an_action_making_an_escaping_chain_fails(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [a, b], cmds: ["ln -s . $OUT/a", "ln -s a/.. $OUT/b"]}
        """)
    st = ws.build(capsys=capsys)
    assert st["t"] == "failed" and "resolves outside the output root" in st["_out"] + st["_err"]


def test_a_file_below_a_file_is_a_miss_not_a_crash(ws, capsys):
    _poison(ws, ["f", "f/y"], [])
    assert ws.build(capsys=capsys)["a"] == "ran"
    assert ws.build(capsys=capsys)["a"] == "up-to-date"


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_a_remote_result_must_match_the_declared_outputs(ws, capsys, tmp_path, change):
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    from buildgraph.store.remote import reapi
    from test_remote import action_digest
    server = NginxServer(tmp_path / "nginx")
    try:
        ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [x, y], cmds: ["echo x > $OUT/x", "echo y > $OUT/y"]}\n')
        ws.build("--remote-cache", server.url, capsys=capsys)
        digest = action_digest(ws, "t", capsys)
        result = reapi().ActionResult.FromString(server.get_action_result(digest))
        if change == "missing":
            del result.output_files[1]
        else:
            extra = result.output_files.add()
            extra.CopyFrom(result.output_files[0])
            extra.path, extra.is_executable = "bin/undeclared", True
        server.put_action_result(digest, result.SerializeToString())
        shutil.rmtree(ws.cache)
        shutil.rmtree(ws.root / ".buildgraph")
        st = ws.build("--remote-cache", server.url, capsys=capsys)
        assert st["t"] == "ran" and st["_rc"] == 0 and "rejected a remote cache entry" in st["_err"]
        assert not (ws.out("t") / "bin").exists()
        ws.run("clean", capsys=capsys)
        assert ws.build(capsys=capsys)["t"] == "cached"      # the local store holds the good result
    finally:
        server.stop()


# 12 ------------------------------------------------------------------------------------

def test_user_env_values_are_never_rewritten_and_the_mode_is_keyed(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          t: {kind: script, outs: [o], env: {URL: "https://example.org/sandbox/api"}, cmds: ["echo $URL > $OUT/o"]}
        """)
    assert ws.build("--sandbox", "none", capsys=capsys)["t"] == "ran"
    assert (ws.out("t") / "o").read_text() == "https://example.org/sandbox/api\n"
    rc, out, _ = ws.run("plan", "--format", "json", "--sandbox", "none", capsys=capsys)
    rc2, out2, _ = ws.run("plan", "--format", "json", "--sandbox", "unshare", capsys=capsys)
    assert json.loads(out)["nodes"][0]["key"] != json.loads(out2)["nodes"][0]["key"]


# 13, 18, 19, 20, 21 --------------------------------------------------------------------

def test_a_symlink_loop_under_srcs_is_an_error_naming_it(ws, capsys):
    ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, srcs: ["src/**"], outs: [o], cmds: ["echo > $OUT/o"]}\n')
    ws.write("src/a.c", "a\n")
    os.symlink("loop", ws.root / "src" / "loop")
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2 and "src/loop" in err and "BUILD.yaml:2" in err and "Traceback" not in err


def test_a_file_name_that_is_not_utf8_is_an_error_naming_it(ws, capsys):
    ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, srcs: ["src/*"], outs: [o], cmds: ["echo > $OUT/o"]}\n')
    ws.write("src/a.c", "a\n")
    open(os.path.join(os.fsencode(ws.root / "src"), b"bad\xff.c"), "w").close()
    rc, _, err = ws.run("build", capsys=capsys)
    assert rc == 2 and "not UTF-8" in err and "src/bad" in err


def test_a_full_disk_is_an_error_naming_the_cache_and_the_cache_stays_trusted(ws, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        ws.cache = small / "cache"
        ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [o], cmds: ["echo a > $OUT/o"]}\n')
        assert ws.spawn("build").wait(timeout=60) == 0
        with open(small / "filler", "wb") as f:     # the disk fills up
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [o], cmds: ["echo b > $OUT/o"]}\n')
        proc = ws.spawn("build")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "Traceback" not in err, err
        assert str(ws.cache) in err and "full disk" in err
        os.unlink(small / "filler")
        rc, out, err = ws.run("cache", "verify")
        assert rc == 0
        proc = ws.spawn("build")
        proc.communicate(timeout=60)
        assert proc.returncode == 0 and (ws.out("t") / "o").read_text() == "b\n"
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_an_alias_bomb_is_refused_quickly(ws, capsys):
    ws.write("BUILD.yaml", "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh")) + "targets: {}\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "expands to more than" in err and "BUILD.yaml:" in err


@pytest.mark.parametrize("value", ["!!int x", "!!bool maybe", "!!timestamp 2001-13-45"])
def test_explicit_yaml_tags_are_config_errors(ws, capsys, value):
    ws.write("BUILD.yaml", f"workspace: {value}\ntargets: {{}}\n")
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "BUILD.yaml:1" in err


def test_a_relative_cache_dir_works(ws, capsys, monkeypatch):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    monkeypatch.chdir(ws.root.parent)
    from buildgraph.cli import main
    assert main(["build", "-C", str(ws.root), "--cache-dir", "relcache", "--sandbox", "none"]) == 0
    assert main(["build", "-C", str(ws.root), "--cache-dir", "relcache"]) == 0
    assert (ws.root.parent / "relcache" / "cas").is_dir()


def test_outs_must_be_normal_paths(ws, capsys):
    ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [include/./table.h], cmds: ["true"]}\n')
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "include/table.h" in err and "BUILD.yaml:2" in err


# 14, 15 --------------------------------------------------------------------------------

def test_cache_clean_refuses_while_a_build_holds_the_cache(ws, capsys):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    ws.build(capsys=capsys)
    store = LocalStore(ws.cache)
    store.open_for_build()
    try:
        rc, _, err = ws.run("cache", "clean", "--all", capsys=capsys)
        assert rc == 1 and "in use by a running build" in err
        assert (ws.cache / "cas").is_dir()
    finally:
        store.close()
    assert ws.run("cache", "clean", "--all", capsys=capsys)[0] == 0 and os.listdir(ws.cache) == ["lock"]


def test_gc_max_size_zero_means_zero(ws, capsys):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    ws.build(capsys=capsys)
    rc, out, _ = ws.run("cache", "gc", "--max-size", "0", capsys=capsys)
    assert rc == 0 and "evicted 1 action results" in out


def test_colliding_dep_variables_are_refused(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          zlib-ng: {kind: script, outs: [a], cmds: ["echo > $OUT/a"]}
          zlib_ng: {kind: script, outs: [b], cmds: ["echo > $OUT/b"]}
          user: {kind: script, deps: [zlib-ng, zlib_ng], outs: [c], cmds: ["echo > $OUT/c"]}
        """)
    rc, _, err = ws.run("plan", capsys=capsys)
    assert rc == 2 and "DEP_ZLIB_NG" in err


def test_declared_file_and_directory_outputs_mean_what_they_say(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          f: {kind: script, outs: [lib], cmds: ["mkdir $OUT/lib", "echo > $OUT/lib/x.so"]}
          d: {kind: script, outs: [lib/], cmds: ["echo > $OUT/lib"]}
        """)
    st = ws.build("--keep-going", capsys=capsys)
    text = st["_out"] + st["_err"]
    assert st["f"] == "failed" and st["d"] == "failed"
    assert "declared as a file but the action produced a directory" in text
    assert "declared as a directory but the action produced a file" in text


# 17 ------------------------------------------------------------------------------------

def test_a_dripping_remote_is_dropped_at_its_deadline(ws, capsys):
    dripping = HostileServer(drip)
    try:
        ws.write("BUILD.yaml", "targets:\n" + "".join(
            f"  n{i}: {{kind: script, outs: [o], cmds: [\"echo {i} > $OUT/o\"]}}\n" for i in range(6)))
        st = ws.build("--remote-cache", f"http://127.0.0.1:{dripping.port}", "--remote-timeout", "2", capsys=capsys)
        assert st["_rc"] == 0 and len(ran(st)) == 6
        assert st["_err"].count("warning: remote cache") == 1
    finally:
        dripping.close()


def test_sigterm_stops_a_build_stuck_on_a_dripping_remote(ws):
    dripping = HostileServer(drip)
    try:
        ws.write("BUILD.yaml", 'targets:\n  t: {kind: script, outs: [o], cmds: ["echo > $OUT/o"]}\n')
        proc = ws.spawn("build", "--remote-cache", f"http://127.0.0.1:{dripping.port}", "--remote-timeout", "600")
        time.sleep(3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)    # a liveness bound, not a timing: it stopped
        assert proc.returncode == 130
    finally:
        dripping.close()


def test_no_op_build_writes_nothing(ws, capsys):
    ws.write("BUILD.yaml", ONE)
    ws.write("a.txt", "hello\n")
    time.sleep(0.3)
    ws.build(capsys=capsys)
    ws.build(capsys=capsys)
    before = {p: p.stat().st_mtime_ns for p in (ws.root / ".buildgraph").rglob("*") if p.is_file()}
    time.sleep(0.05)
    assert ws.build(capsys=capsys)["a"] == "up-to-date"
    after = {p: p.stat().st_mtime_ns for p in (ws.root / ".buildgraph").rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(ws.root)) for p in after if before.get(p) != after[p])
    assert changed == [], changed


def test_an_unwritable_cache_or_workspace_is_an_error_naming_it(ws, capsys):
    """A non-root user on a cache filled by root, or in a workspace they cannot write."""
    import tempfile

    from conftest import REPO
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (to become another user with setpriv)")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if subprocess.run([*as_nobody, "-c", "import buildgraph.cli"], env=env, capture_output=True).returncode:
        pytest.skip("this checkout or its virtualenv is not readable by another user")
    base = tempfile.mkdtemp(prefix="bg-perm-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        work = os.path.join(base, "ws")
        os.mkdir(work)
        with open(os.path.join(work, "BUILD.yaml"), "w") as f:
            f.write('targets:\n  t: {kind: script, outs: [o], cmds: ["echo > $OUT/o"]}\n')
        cache = os.path.join(base, "cache")
        os.mkdir(cache)
        for case in ("cache filled by root", "workspace owned by root"):
            os.chown(work, 65534 if case.startswith("cache") else 0, -1)
            proc = subprocess.run([*as_nobody, "-m", "buildgraph", "build", "-C", work, "--cache-dir", cache],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
            assert "Permission denied" in proc.stderr and base in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_result_path_is_accepted_exactly_when_it_is_a_clean_relative_path():
    """check_relpath splits strings; the definition it keeps is PurePosixPath's: not absolute,
    no "..", and written as PurePosixPath would write it (so no "//", "./", trailing "/")."""
    from pathlib import PurePosixPath

    from buildgraph.action import BadResult, check_relpath

    def clean(path) -> bool:
        if not isinstance(path, str) or not path or "\0" in path:
            return False
        p = PurePosixPath(path)
        return not p.is_absolute() and ".." not in p.parts and str(p) == path and path != "."

    def accepted(path) -> bool:
        try:
            return check_relpath(path) == path
        except BadResult:
            return False
    paths = ["a", "a/b", "a/b/c.txt", ".hidden", "a/.b", "...", "..a", "a..", "a b/c", "a//b", "/a", "//a",
             "///a", "a/", "a/b/", "./a", "a/.", "a/./b", ".", "..", "../a", "a/..", "a/../b", "", "a\0b",
             None, 3, b"a", ["a"]]
    assert [p for p in paths if accepted(p) != clean(p)] == []
    assert sum(map(accepted, paths)) == 9
