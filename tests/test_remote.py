"""Remote caches, against real servers on loopback: nginx (HTTP/WebDAV) and BuildGrid (REAPI)."""

import json
import os
import shutil
import time

import pytest
from conftest import ran, trace_actions
from servers import BGD, NGINX, BuildGridServer, NginxServer, make_tls

GRAPH = """\
targets:
  gen:
    kind: script
    srcs: [in.txt]
    outs: [data.txt, big.bin, bin/tool, lib/]
    cmds:
      - "mkdir -p $OUT/bin $OUT/lib"
      - "cp $SRC/in.txt $OUT/data.txt"
      - "head -c 3000000 /dev/zero | tr '\\\\0' x > $OUT/big.bin"
      - "printf '#!/bin/sh\\\\necho tool\\\\n' > $OUT/bin/tool && chmod +x $OUT/bin/tool"
      - "echo so > $OUT/lib/libx.so.1 && ln -s libx.so.1 $OUT/lib/libx.so"
      - "echo built gen"
  use:
    kind: script
    deps: [gen]
    outs: [out.txt]
    cmds: ["cat $DEP_GEN/data.txt $DEP_GEN/lib/libx.so > $OUT/out.txt", "$DEP_GEN/bin/tool >> $OUT/out.txt"]
  other:
    kind: script
    outs: [o.txt]
    cmds: ["echo other > $OUT/o.txt"]
"""
NODES = ("gen", "use", "other")


@pytest.fixture(params=["nginx", "buildgrid"])
def server(request, tmp_path):
    if request.param == "nginx":
        if not os.path.exists(NGINX):
            pytest.skip("nginx not installed (bash .ci/setup --tests installs nginx-full)")
        srv = NginxServer(tmp_path / "nginx")
    else:
        if not BGD.exists():
            pytest.skip(f"BuildGrid not installed at {BGD} (bash .ci/setup --tests installs it)")
        srv = BuildGridServer(tmp_path / "buildgrid")
    yield srv
    srv.stop()


def setup_graph(ws):
    ws.write("BUILD.yaml", GRAPH)
    ws.write("in.txt", "input\n")


def remote_build(ws, server, capsys, *extra):
    return ws.build("--remote-cache", server.url, "--remote-timeout", "5", *extra, capsys=capsys)


def wipe_local(ws):
    shutil.rmtree(ws.cache)
    shutil.rmtree(ws.root / ".buildgraph")


def outputs(ws) -> dict:
    found = {}
    for node in NODES:
        base = ws.out(node)
        for p in sorted(base.rglob("*")):
            if p.is_symlink():
                found[f"{node}/{p.relative_to(base)}"] = ("->", os.readlink(p))
            elif p.is_file():
                found[f"{node}/{p.relative_to(base)}"] = (p.read_bytes(), os.access(p, os.X_OK))
    return found


def last_build(ws) -> dict:
    from buildgraph.state import StateDir
    return StateDir(ws.root).last_build()


def action_digest(ws, node, capsys) -> dict:
    rc, out, _ = ws.run("plan", "--format", "json", node, capsys=capsys)
    return next(n["action_digest"] for n in json.loads(out)["nodes"] if n["node"] == node)


def test_wiped_local_cache_restores_everything_from_the_remote(ws, server, capsys):
    setup_graph(ws)
    first = remote_build(ws, server, capsys)
    assert ran(first) == set(NODES), first["_out"] + first["_err"]
    assert last_build(ws)["remote_uploads"] == 3
    before = outputs(ws)
    wipe_local(ws)
    second = remote_build(ws, server, capsys)
    assert ran(second) == set(), second["_out"] + second["_err"]
    assert {second[n] for n in NODES} == {"cached"}
    assert outputs(ws) == before                           # bit-identical, modes and symlinks too
    stats = last_build(ws)
    assert stats["remote_hits"] == 3 and stats["remote_bytes_down"] >= 3_000_000
    rc, out, _ = ws.run("cache", "stats", capsys=capsys)
    assert "remote cache: 3 hits, 0 misses" in out


def test_read_only_mode_uploads_nothing(ws, server, capsys):
    setup_graph(ws)
    st = remote_build(ws, server, capsys, "--remote-read-only")
    assert ran(st) == set(NODES)
    assert server.stored() == 0 and last_build(ws)["remote_uploads"] == 0
    wipe_local(ws)
    assert ran(remote_build(ws, server, capsys)) == set(NODES)   # nothing was there to reuse


def test_server_killed_mid_build_completes_locally(ws, server):
    ws.write("BUILD.yaml", """\
        targets:
          first: {kind: script, outs: [o], cmds: ["echo first > $OUT/o"]}
          second: {kind: script, deps: [first], outs: [o], cmds: ["sleep 1; cat $DEP_FIRST/o > $OUT/o"]}
          third: {kind: script, deps: [second], outs: [o], cmds: ["cat $DEP_SECOND/o > $OUT/o; echo third >> $OUT/o"]}
        """)
    proc = ws.spawn("build", "--remote-cache", server.url, "--remote-timeout", "3")
    deadline = time.time() + 30
    while not (ws.out("first") / "o").exists() and time.time() < deadline:
        time.sleep(0.02)
    server.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert (ws.out("third") / "o").read_text() == "first\nthird\n"
    assert err.count("warning: remote cache") == 1        # warned once, then carried on


def test_unreachable_server_warns_once_and_builds_locally(ws, server, capsys):
    setup_graph(ws)
    url = server.url
    server.kill()
    st = ws.build("--remote-cache", url, "--remote-timeout", "2", capsys=capsys)
    assert st["_rc"] == 0 and ran(st) == set(NODES)
    assert st["_err"].count("warning: remote cache") == 1


def test_corrupted_blob_on_the_server_is_detected_and_rebuilt(ws, server, capsys):
    import hashlib
    setup_graph(ws)
    remote_build(ws, server, capsys)
    for name in ("data.txt", "big.bin"):                   # flip a byte of two of gen's outputs
        blob = server.blob_path(hashlib.sha256((ws.out("gen") / name).read_bytes()).hexdigest())
        data = bytearray(blob.read_bytes())
        data[0] ^= 0xFF
        blob.write_bytes(bytes(data))
    wipe_local(ws)
    st = remote_build(ws, server, capsys)
    assert st["_rc"] == 0, st["_out"] + st["_err"]
    assert "gen" in ran(st)                                # no corrupt blob was used
    assert (ws.out("use") / "out.txt").read_text() == "input\nso\ntool\n"
    stats = last_build(ws)
    assert stats["remote_rejected"] >= 1 and "does not match its digest" in st["_err"], (stats, st["_err"])
    assert st["other"] == "cached"                         # entries with intact blobs are still used


def test_poisoned_action_result_is_rejected(ws, server, capsys, tmp_path):
    from buildgraph.store.remote import reapi
    setup_graph(ws)
    remote_build(ws, server, capsys)
    digest = action_digest(ws, "other", capsys)
    pb = reapi()
    genuine = pb.ActionResult.FromString(server.get_action_result(digest))
    poisoned = pb.ActionResult()
    poisoned.CopyFrom(genuine)
    poisoned.output_files[0].path = "../../../escaped.txt"
    server.put_action_result(digest, poisoned.SerializeToString())
    wipe_local(ws)
    st = remote_build(ws, server, capsys)
    assert st["other"] == "ran" and st["_rc"] == 0
    assert "rejected a remote cache entry for other" in st["_err"]
    assert not list(tmp_path.rglob("escaped.txt"))
    assert (ws.out("other") / "o.txt").read_text() == "other\n"
    assert last_build(ws)["remote_rejected"] == 1


def test_garbage_action_result_is_a_miss(ws, capsys, tmp_path):
    """Over HTTP the AC value is whatever was PUT (a REAPI server keeps only well-formed ones)."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    server = NginxServer(tmp_path / "nginx")
    try:
        setup_graph(ws)
        remote_build(ws, server, capsys)
        digest = action_digest(ws, "other", capsys)
        server.put_action_result(digest, b"\xff\x00 this is not a protobuf \x12\x99")
        wipe_local(ws)
        st = remote_build(ws, server, capsys)
        assert st["other"] == "ran" and st["gen"] == "cached" and st["_rc"] == 0
        assert "rejected a remote cache entry for other" in st["_err"]
    finally:
        server.stop()


def test_credentials_come_from_a_netrc_file_and_are_never_printed(ws, capsys, tmp_path, monkeypatch):
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    secret = "s3cret-pass-word"
    srv = NginxServer(tmp_path / "auth-nginx", basic_auth=("ci", secret))
    try:
        setup_graph(ws)
        st = ws.build("--remote-cache", srv.url, capsys=capsys)      # no credentials: 401
        assert st["_rc"] == 0 and "HTTP 401" in st["_err"] and srv.stored() == 0
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login ci password {secret}\n")
        monkeypatch.setenv("BUILDGRAPH_NETRC", str(netrc))
        wipe_local(ws)
        st = ws.build("--remote-cache", srv.url, capsys=capsys)
        assert st["_rc"] == 0 and srv.stored() > 0, st["_err"]
        wipe_local(ws)
        st = ws.build("--remote-cache", srv.url, capsys=capsys)
        assert ran(st) == set() and {st[n] for n in NODES} == {"cached"}
        everything = st["_out"] + st["_err"] + (ws.root / ".events.json").read_text()
        everything += json.dumps(last_build(ws)) + (ws.root / ".buildgraph/state.marshal").read_bytes().decode("latin-1")
        assert secret not in everything
    finally:
        srv.stop()


def test_credentials_are_not_part_of_keys(ws, capsys, monkeypatch):
    setup_graph(ws)
    ws.build(capsys=capsys)
    monkeypatch.setenv("BUILDGRAPH_REMOTE_HEADERS", "Authorization: Bearer token-1")
    assert ran(ws.build("--remote-cache", "http://127.0.0.1:9", "--remote-retries", "0", capsys=capsys)) == set()


def test_slow_server_costs_at_most_its_timeout(ws, capsys, tmp_path):
    """A server that accepts connections and never answers: the build goes on locally."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        setup_graph(ws)
        t0 = time.monotonic()
        st = ws.build("--remote-cache", f"http://127.0.0.1:{listener.getsockname()[1]}", "--remote-timeout", "1",
                      capsys=capsys)
        assert st["_rc"] == 0 and ran(st) == set(NODES)
        assert "timed out" in st["_err"] and st["_err"].count("warning: remote cache") == 1
        assert time.monotonic() - t0 < 60   # a hang guard, not a performance assertion
    finally:
        stop.set()
        for s in held:
            s.close()
        listener.close()


def test_https_with_a_custom_ca(ws, capsys, tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed")
    ca, cert, key = make_tls(tmp_path / "tls")
    srv = NginxServer(tmp_path / "tls-nginx", tls=(cert, key))
    try:
        setup_graph(ws)
        st = ws.build("--remote-cache", srv.url, capsys=capsys)        # unknown CA: refused, warned, local
        assert st["_rc"] == 0 and "CERTIFICATE_VERIFY_FAILED" in st["_err"] and srv.stored() == 0
        wipe_local(ws)
        st = ws.build("--remote-cache", srv.url, "--remote-ca", str(ca), capsys=capsys)
        assert st["_rc"] == 0 and "warning" not in st["_err"] and srv.stored() > 0
        wipe_local(ws)
        st = ws.build("--remote-cache", srv.url, "--remote-ca", str(ca), capsys=capsys)
        assert {st[n] for n in NODES} == {"cached"}
    finally:
        srv.stop()


def test_durations_travel_through_the_remote_and_order_a_fresh_machine(ws, server, capsys, tmp_path):
    # Two independent nodes, one job: with nothing recorded both weigh the same and the name
    # decides (a_fast first). After another machine ran them against the same remote, a fresh
    # workspace whose keys all changed starts the one that took long first.
    build = """\
        targets:
          a_fast: {kind: script, srcs: [v.txt], outs: [o], cmds: ["cat $SRC/v.txt > $OUT/o"]}
          b_slow: {kind: script, srcs: [v.txt], outs: [o], cmds: ["sleep 1.5; cat $SRC/v.txt > $OUT/o"]}
        """
    ws.write("BUILD.yaml", build)
    ws.write("v.txt", "1\n")
    assert ran(remote_build(ws, server, capsys, "-j1")) == {"a_fast", "b_slow"}
    wipe_local(ws)
    ws.write("v.txt", "2\n")                                  # every key changes: nothing to restore
    trace = tmp_path / "trace.json"
    st = remote_build(ws, server, capsys, "-j1", "--profile", str(trace))
    assert ran(st) == {"a_fast", "b_slow"}, st["_out"] + st["_err"]
    start = {e["name"]: e["ts"] for e in trace_actions(trace)}
    assert start["b_slow"] < start["a_fast"], start
    # A restored result brings its duration along: recorded as if it had run here.
    wipe_local(ws)
    assert ran(remote_build(ws, server, capsys)) == set()
    from buildgraph.state import StateDir
    assert StateDir(ws.root).load().nodes["b_slow"].duration >= 1.5


def test_http_cache_keeps_one_connection_alive_across_requests(tmp_path):
    # Each GET used to leave http.client's response unfinished: the next request on the kept-
    # alive connection failed, was retried after a 200 ms back-off and reconnected.
    if not os.path.exists(NGINX):
        pytest.skip("nginx not installed (bash .ci/setup --tests installs nginx-full)")
    from buildgraph.store.http import HttpCache
    from buildgraph.store.remote import RemoteOptions, sha256_bytes
    srv = NginxServer(tmp_path / "nginx")
    try:
        cache = HttpCache(RemoteOptions(url=srv.url))
        blobs = {}
        for i in range(20):
            data = f"blob {i}\n".encode() * (i + 1)
            path = tmp_path / f"b{i}"
            path.write_bytes(data)
            digest = sha256_bytes(data)
            cache.upload_blob(digest, str(path))
            blobs[digest] = data
        assert cache.read_blobs(list(blobs)) == blobs
        assert cache.find_missing(list(blobs)) == []
        pool = cache.client._manager(cache.base).connection_from_url(cache.base)
        assert pool.num_connections == 1                     # one connection, never re-opened
        cache.close()
    finally:
        srv.stop()
