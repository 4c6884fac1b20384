"""The local store: poisoned and corrupt entries, gc, kill -9, concurrent builds."""

import os
import signal
import time


from buildgraph.digest import file_digest
from buildgraph.store.local import LocalStore

TWO = """\
targets:
  a: {kind: script, srcs: [a.txt], outs: [a], cmds: ["cp $SRC/a.txt $OUT/a"]}
  b: {kind: script, deps: [a], outs: [b], cmds: ["cat $DEP_A/a $DEP_A/a > $OUT/b"]}
"""


def setup_two(ws):
    ws.write("BUILD.yaml", TWO)
    ws.write("a.txt", "hello\n")


def _keys(ws):
    from buildgraph.state import StateDir
    return {n: r.key for n, r in StateDir(ws.root).load().nodes.items()}


def verify_cas(cache) -> int:
    """Every blob's content matches its name; returns how many were checked."""
    count = 0
    for shard in (cache / "cas").iterdir():
        for blob in shard.iterdir():
            assert file_digest(blob) == blob.name.removesuffix(".x"), blob
            count += 1
    return count


def test_poisoned_result_is_rejected_and_rebuilt(ws, capsys):
    setup_two(ws)
    ws.build(capsys=capsys)
    key = _keys(ws)["a"]
    ws.run("clean", capsys=capsys)
    store = LocalStore(ws.cache)
    data, used = store.index.get(key)
    store.index.set(key, data.replace(b'"a"', b'"../../evil"'), used)
    store.close()
    statuses = ws.build(capsys=capsys)
    assert statuses["a"] == "ran"
    assert not (ws.root / ".buildgraph" / "evil").exists()
    assert (ws.out("b") / "b").read_text() == "hello\nhello\n"


def test_garbage_entry_and_missing_blob_are_misses(ws, capsys):
    setup_two(ws)
    ws.build(capsys=capsys)
    keys = _keys(ws)
    ws.run("clean", capsys=capsys)
    store = LocalStore(ws.cache)
    store.index.set(keys["a"], b"{not json", time.time())
    for shard in (ws.cache / "cas").iterdir():   # remove b's output blob ("hello\nhello\n")
        for blob in shard.iterdir():
            if blob.read_bytes() == b"hello\nhello\n":
                blob.unlink()
    store.close()
    statuses = ws.build(capsys=capsys)
    assert statuses["a"] == "ran" and statuses["b"] == "ran"
    assert (ws.out("b") / "b").read_text() == "hello\nhello\n"


def test_gc_evicts_least_recently_used(ws, capsys):
    ws.write("BUILD.yaml", """\
        targets:
          old: {kind: script, outs: [o], cmds: ["head -c 300000 /dev/zero | tr '\\\\0' o > $OUT/o"]}
          new: {kind: script, outs: [n], cmds: ["head -c 300000 /dev/zero | tr '\\\\0' n > $OUT/n"]}
        """)
    ws.build("old", capsys=capsys)
    store = LocalStore(ws.cache)
    key_old = _keys(ws)["old"]
    data, _ = store.index.get(key_old)
    store.index.set(key_old, data, time.time() - 86400)  # used a day ago
    store.close()
    ws.build("new", capsys=capsys)
    rc, out, _ = ws.run("cache", "gc", "--max-size", "400K", capsys=capsys)
    assert rc == 0 and "evicted 1 action results" in out
    store = LocalStore(ws.cache)
    assert store.index.get(key_old) is None
    assert store.get_result(_keys(ws)["new"]) is not None
    store.close()
    rc, out, _ = ws.run("cache", "stats", capsys=capsys)
    assert "action results: 1" in out


def test_kill_9_mid_build_leaves_a_trustworthy_cache(ws):
    ws.write("BUILD.yaml", """\
        targets:
          quick: {kind: script, srcs: [in.txt], outs: [q], cmds: ["cp $SRC/in.txt $OUT/q"]}
          slow:
            kind: script
            deps: [quick]
            outs: [big, s]
            cmds:
              - "head -c 2000000 /dev/urandom > $OUT/big"
              - "sleep 30"
              - "cp $DEP_QUICK/q $OUT/s"
        """)
    ws.write("in.txt", "data\n")
    tmpdir = ws.root.parent / "tmpdir"
    tmpdir.mkdir()
    proc = ws.spawn("build", "-j2", env={"TMPDIR": str(tmpdir)})
    deadline = time.time() + 30
    while not (ws.out("quick") / "q").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # slow is now running, with its big output half written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any(tmpdir.iterdir())   # what the killed build left is all in the store
    ws.write("BUILD.yaml", (ws.root / "BUILD.yaml").read_text().replace("sleep 30", "sleep 0"))
    proc = ws.spawn("build")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert (ws.out("slow") / "s").read_text() == "data\n"
    assert os.path.getsize(ws.out("slow") / "big") == 2000000
    assert verify_cas(ws.cache) >= 2  # "data\n" (q and s share it) and big
    assert not any((ws.cache / "sandbox").iterdir()) and not any((ws.cache / "tmp").iterdir())


def _workspace_copy(ws, name):
    from conftest import HOST_GCC, Workspace

    other = Workspace(ws.root.parent / name, ws.cache)
    other.root.mkdir()
    other.write("toolchains/host-gcc.yaml", HOST_GCC)
    return other


def test_two_builds_at_once_on_one_cache_directory(ws):
    spec = """\
        targets:
        """ + "".join(f"""\
          n{i}: {{kind: script, outs: [o], cmds: ["sleep 0.2; echo {i} > $OUT/o"]}}
        """ for i in range(8))
    other = _workspace_copy(ws, "ws2")
    for w in (ws, other):
        w.write("BUILD.yaml", spec)
    procs = [w.spawn("build", "-j2") for w in (ws, other)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    for w in (ws, other):
        assert all((w.out(f"n{i}") / "o").read_text() == f"{i}\n" for i in range(8))
    verify_cas(ws.cache)


def test_opening_a_new_index_waits_for_another_connection_creating_it(tmp_path):
    """The race the two builds above can lose: while another connection holds a write
    transaction on the file still in rollback mode, sqlite refuses the switch to WAL at
    once instead of waiting through its busy timeout."""
    import sqlite3
    import threading

    from buildgraph.store.index import StoreIndex

    path = tmp_path / "index.sqlite"
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE other (x)")
    threading.Timer(0.3, creator.execute, ("COMMIT",)).start()
    started = time.monotonic()
    index = StoreIndex(str(path))
    assert time.monotonic() - started >= 0.25   # it waited for the commit, then went on
    assert index.add("k", b"{}", 1.0) and index.get("k") == (b"{}", 1.0)
    index.close()
    creator.close()


def test_two_builds_of_one_workspace_take_turns(ws):
    setup_two(ws)
    procs = [ws.spawn("build") for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert (ws.out("b") / "b").read_text() == "hello\nhello\n"


def test_up_to_date_dependency_survives_a_wiped_cache(ws, capsys):
    import shutil

    setup_two(ws)
    ws.build(capsys=capsys)
    shutil.rmtree(ws.cache)                     # the cache is gone; out/ still holds a's outputs
    ws.write("BUILD.yaml", TWO.replace("$DEP_A/a $DEP_A/a", "$DEP_A/a"))
    statuses = ws.build(capsys=capsys)
    assert statuses["a"] == "up-to-date" and statuses["b"] == "ran", statuses["_out"]
    assert (ws.out("b") / "b").read_text() == "hello\n"


def test_a_restore_refreshes_last_used_times_in_one_transaction(ws, capsys):
    """Restoring day-old results marks each as used, for gc's order: in the build's batch
    (one transaction at its commit), not a sqlite write per result."""
    setup_two(ws)
    ws.build(capsys=capsys)
    keys = _keys(ws)
    store = LocalStore(ws.cache)
    for key in keys.values():
        data, _ = store.index.get(key)
        store.index.set(key, data, time.time() - 86400)
    store.begin_batch()
    assert all(store.get_result(key) is not None for key in keys.values())
    reader = LocalStore(ws.cache)   # another process's view of the action cache
    assert all(reader.index.get(key)[1] < time.time() - 3600 for key in keys.values())   # not yet written
    store.commit()
    assert all(reader.index.get(key)[1] > time.time() - 60 for key in keys.values())
    reader.close()
    store.close()


def test_earlier_versions_directories_go_with_the_first_exclusive_lock(ws, capsys):
    """Results moved from diskcache (ac/, sha256/) to index.sqlite, the sandboxer from the
    cache to the programs directory: the old directories are never read, and the first
    build alone on the cache removes them, as it does tmp/."""
    setup_two(ws)
    for name in ("ac", "sha256", "sandboxer"):
        (ws.cache / name).mkdir(parents=True)
        (ws.cache / name / "cache.db").write_bytes(b"SQLite format 3\0 left by an earlier version")
    statuses = ws.build(capsys=capsys)
    assert (statuses["a"], statuses["b"]) == ("ran", "ran")
    assert not any((ws.cache / name).exists() for name in ("ac", "sha256", "sandboxer"))
    assert (ws.cache / "index.sqlite").is_file()
    ws.run("clean", capsys=capsys)
    statuses = ws.build(capsys=capsys)
    assert (statuses["a"], statuses["b"]) == ("cached", "cached")


def test_the_index_is_write_once_by_add_and_survives_reopening(tmp_path):
    from buildgraph.store.index import StoreIndex

    path = str(tmp_path / "index.sqlite")
    index = StoreIndex(path)
    assert index.add("k", b"first", 1.0) and not index.add("k", b"second", 2.0)
    index.touch("k", 5.0)
    index.touch("gone", 5.0)   # an entry dropped meanwhile stays dropped
    index.add_to_counter("cas-bytes", 10)
    index.add_to_counter("cas-bytes", 5)
    index.remember_sha256("x" * 32, "s" * 64)
    index.close()
    index = StoreIndex(path)   # another process's open of the same file
    assert index.get("k") == (b"first", 5.0) and index.get("gone") is None
    assert index.rows() == [("k", b"first", 5.0)] and len(index) == 1
    assert index.counter("cas-bytes") == 15 and index.counter("other") == 0
    assert index.sha256_for("x" * 32) == "s" * 64 and index.xxh3_for("s" * 64) == "x" * 32
    index.forget_sha256("x" * 32)
    assert index.xxh3_for("s" * 64) is None
    index.close()
