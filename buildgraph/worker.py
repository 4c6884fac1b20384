"""`buildgraph worker`: a Remote Workers API bot that runs REAPI actions in the local sandbox.

It creates a bot session (primary device properties OSFamily=Linux, ISA=x86-64), takes
one lease at a time, and for each: reads the Action and its Command from the CAS, stages
the input root (remote_exec.py documents its layout), fetches the pinned toolchains from
their providers into its own store and refuses to run if their digest differs from the
one the client computed, runs the commands in the same Sandbox as local actions (with a
jobserver of --slots), uploads the outputs and the ActionResult, and completes the lease.
On exit or SIGTERM it reports BOT_TERMINATING, so the server requeues nothing half-done
and stops waiting for it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from buildgraph.digest import StatCache, file_digest
from buildgraph.store.remote import RDigest, RemoteError, RemoteOptions, reapi


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _toolchain(fields: dict):
    from buildgraph.workspace import Location, Toolchain

    return Toolchain(loc=Location("remote action", 0), **{k: _tuples(v) for k, v in fields.items()})


class Worker:
    def __init__(self, server: str, instance: str, slots: int, cache_dir: Path, toolchain_dir: Path, log):
        from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2

        from buildgraph.store.local import LocalStore
        from buildgraph.store.reapi import ReapiCache
        from buildgraph.toolstore import ToolStore

        self.bots_pb2, self.worker_pb2 = bots_pb2, worker_pb2
        self.cas = ReapiCache(RemoteOptions(url=server, instance_name=instance, timeout=60))
        self.bots = bots_pb2_grpc.BotsStub(self.cas.channel)
        self.instance, self.slots, self.log = instance, slots, log
        self.store = LocalStore(cache_dir)
        self.toolstore = ToolStore(toolchain_dir)
        self.stop = threading.Event()
        self.lease_done = threading.Event()   # set when a lease finishes: report it at once
        self.bot_id = f"buildgraph-{socket.gethostname()}-{os.getpid()}"

    # ------------------------------------------------------------ the bot loop

    def serve(self) -> int:
        pb = self.bots_pb2
        device = self.worker_pb2.Device(handle="cpu")
        for key, value in (("OSFamily", "Linux"), ("ISA", "x86-64")):
            device.properties.add(key=key, value=value)
        session = pb.BotSession(bot_id=self.bot_id, status=pb.BotStatus.OK)
        session.worker.devices.append(device)
        # The server may hold CreateBotSession open until it has work or the deadline passes.
        session = self.bots.CreateBotSession(pb.CreateBotSessionRequest(parent=self.instance, bot_session=session),
                                             timeout=10)
        self.log(f"worker {self.bot_id} serving {self.cas.name} ({self.slots} slots)")
        running: dict[str, threading.Thread] = {}
        finished: dict[str, tuple] = {}
        try:
            while not self.stop.is_set():
                for lease in session.leases:
                    # BuildGrid offers leases already ACTIVE (assigned); take any we are not running yet.
                    if (lease.state in (pb.LeaseState.PENDING, pb.LeaseState.ACTIVE) and lease.id not in running
                            and lease.id not in finished and not running):
                        lease.state = pb.LeaseState.ACTIVE
                        thread = threading.Thread(target=self._run_lease, args=(lease.id, lease.payload, finished),
                                                  daemon=True)
                        running[lease.id] = thread
                        thread.start()
                    elif lease.id in finished:
                        result, code, message = finished.pop(lease.id)
                        lease.state = pb.LeaseState.COMPLETED
                        lease.result.Pack(result)
                        lease.status.code, lease.status.message = code, message
                        running.pop(lease.id, None)
                    elif lease.state == pb.LeaseState.CANCELLED:
                        running.pop(lease.id, None)
                if running and not finished:
                    # The server answers at once while we are busy: wait for the lease to finish
                    # (or a keep-alive second) instead of spinning requests at it.
                    self.lease_done.wait(1.0)
                    self.lease_done.clear()
                    if any(lid in finished for lid in running):
                        continue   # mark it COMPLETED in the session before sending it
                try:
                    session = self.bots.UpdateBotSession(
                        pb.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=10)
                except Exception as exc:  # the server went away for a moment: keep the session, try again
                    self.log(f"UpdateBotSession failed: {exc}")
                    self.stop.wait(1)
        finally:
            session.status = pb.BotStatus.BOT_TERMINATING
            try:
                self.bots.UpdateBotSession(pb.UpdateBotSessionRequest(name=session.name, bot_session=session),
                                           timeout=5)
            except Exception:
                pass
            self.log(f"worker {self.bot_id} terminating")
        return 0

    # ------------------------------------------------------------ one lease

    def _run_lease(self, lease_id: str, payload, finished: dict) -> None:
        pb = reapi()
        try:
            action = pb.Action()
            if payload.Is(pb.Action.DESCRIPTOR):
                payload.Unpack(action)
            else:
                digest = pb.Digest()
                payload.Unpack(digest)
                action = pb.Action.FromString(self.cas.read_blob(RDigest(digest.hash, digest.size_bytes)))
            result = self._execute(action)
            finished[lease_id] = (result, 0, "")
        except Exception as exc:  # reported to the client as a failed execution, with the reason
            self.log(f"lease {lease_id} failed: {exc}")
            finished[lease_id] = (pb.ActionResult(exit_code=1), 13, f"worker {self.bot_id}: {exc}")
        finally:
            self.lease_done.set()

    def _execute(self, msg):
        from buildgraph.action import Action
        from buildgraph.jobserver import Jobserver
        from buildgraph.remote_exec import fetch_tree
        from buildgraph.sandbox import Sandbox, detect_mode
        from buildgraph.toolchains import ToolchainResolver, host_tools

        stage = tempfile.mkdtemp(prefix="bg-worker-", dir=self.store.tmp)
        try:
            fetch_tree(self.cas, RDigest(msg.input_root_digest.hash, msg.input_root_digest.size_bytes), stage)
            spec = json.loads(Path(stage, ".buildgraph", "action.json").read_text())
            self.log(f"running {spec['node']} (action {self._short(msg)})")
            stat_cache = StatCache()
            links, mounts = dict(host_tools(tuple(spec["host_tools"]), stat_cache)[0]), ()
            if spec["toolchains"]:
                toolchains = {d["name"]: _toolchain(d["fields"]) for d in spec["toolchains"]}
                for d in spec["toolchains"]:
                    entry = self.toolstore.entry(toolchains[d["name"]]) or self.toolstore.fetch(
                        toolchains[d["name"]], log=self.log)
                    digest, _ = self.toolstore.current_digest(entry, stat_cache)
                    if digest != d["digest"]:
                        raise RemoteError(f"toolchain {d['name']} has digest {digest} here, the client expects "
                                          f"{d['digest']}")
                resolver = ToolchainResolver(self.toolstore, toolchains, stat_cache, log=self.log)
                resolved = resolver.resolve(spec["toolchains"][0]["name"])
                if resolved.digest != spec["toolchain_digest"]:
                    raise RemoteError(f"toolchain {resolved.name} resolves to {resolved.digest}, "
                                      f"the client expects {spec['toolchain_digest']}")
                links.update(resolved.links)
                mounts = resolved.mounts
            srcs, hosts = [], []
            src_root = Path(stage, "src")
            for path in sorted(p for p in src_root.rglob("*") if p.is_file()) if src_root.is_dir() else []:
                srcs.append((str(path.relative_to(src_root)), file_digest(path), bool(path.stat().st_mode & 0o111)))
                hosts.append(str(path))
            dep_results = {}
            deps_root = Path(stage, "deps")
            for dep in sorted(deps_root.iterdir()) if deps_root.is_dir() else []:
                dep_results[dep.name] = self.store.put_tree_copy(str(dep))
            source_fetch = None
            source_root = Path(stage, "source")
            if spec["has_source"]:
                source_fetch = tuple((str(p.relative_to(source_root)), str(p), file_digest(p),
                                      bool(p.stat().st_mode & 0o111))
                                     for p in sorted(source_root.rglob("*")) if p.is_file())
            action = Action(node=spec["node"], commands=tuple(spec["commands"]),
                            env=tuple(tuple(kv) for kv in spec["env"]), toolchain=None, tools_digest="",
                            srcs=tuple(srcs), src_paths=tuple(hosts),
                            deps=tuple((d, "") for d in sorted(dep_results)), features=(),
                            outs=tuple(spec["outs"]), jobserver=spec["jobserver"],
                            source=("remote",) if spec["has_source"] else None, source_fetch=source_fetch)
            jobserver = Jobserver(self.slots, self.store.tmp)
            # The client's key names its sandbox mode: run in that one. Where it is not possible here,
            # the action fails rather than sharing a result made another way.
            sandbox = Sandbox(self.store, spec.get("sandbox") or detect_mode(), jobserver)
            try:
                outcome = sandbox.run(action, dep_results, (tuple(sorted(links.items())), mounts))
            finally:
                sandbox.close()
                jobserver.close()
            return self._upload(outcome, spec["node"])
        finally:
            from buildgraph.fsutil import force_remove
            force_remove(stage)

    def _upload(self, outcome, node: str):
        """Upload the outputs (or the failure's log) and return the REAPI ActionResult."""
        from buildgraph.action import ActionResult
        from buildgraph.store.layered import upload_result

        if outcome.result is None:
            log = self.store.put_bytes(f"{outcome.log}\nbuildgraph worker {self.bot_id}: {outcome.error}\n".encode())
            result = ActionResult(files=(), stderr=log, exit_code=1)
            self.log(f"failed {node}: {outcome.error}")
        else:
            result = outcome.result
            self.log(f"ran {node} ({len(result.files)} outputs)")
        data, _ = upload_result(self.store, self.cas, result)
        return reapi().ActionResult.FromString(data)

    @staticmethod
    def _short(msg) -> str:
        import hashlib
        return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:12]


def main(server: str, instance: str, slots: int, cache_dir: Path, toolchain_dir: Path) -> int:
    def log(message: str) -> None:
        print(f"[worker {os.getpid()}] {message}", file=sys.stdout, flush=True)

    worker = Worker(server, instance, slots, cache_dir, toolchain_dir, log)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    return worker.serve()
