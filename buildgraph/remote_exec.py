"""Remote execution over REAPI: send actions to an executor (BuildGrid), get results back.

An action goes out as a REAPI Action (design note):
  input root   a Merkle tree of Directory messages holding src/ (the staged sources),
               deps/<target>/ (each dependency's outputs), source/ (the upstream tree, if any)
               and .buildgraph/action.json: the commands, the symbolic environment, the
               declared outputs, the host tools' names, and the toolchain *definitions* with
               the digest they must have — a worker fetches them from their pinned providers
               and refuses to run when its digest differs; it never uses its host's compilers
  Command      arguments ["buildgraph-action", ".buildgraph/action.json"], the environment
               (sorted by name, MUST), output_directories ["out"]
  platform     OSFamily=Linux, ISA=x86-64, toolchain=<digest>
Blobs go up after FindMissingBlobs; Execute runs it (the server's action cache answers
first, so a repeated action is not run again); the ActionResult comes back with output
paths relative to the output root, is validated (RemoteLayer.accept: a safe tree holding
exactly the declared outputs), its blobs
are downloaded and verified, and it lands in the local store like any other result.
The action digest here is the digest of that Action message, not the cache key digest
of store/remote (see the issue notes: the two are kept apart on purpose for now).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from buildgraph.digest import sha256_file
from buildgraph.store.remote import RDigest, RemoteError, reapi, sha256_bytes


@dataclass
class Tree:
    """A directory being assembled: files (path -> (local path or bytes, executable)), symlinks."""

    files: dict[str, tuple[object, bool]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)


def _sha(data_or_path, cache: dict) -> RDigest:
    if isinstance(data_or_path, bytes):
        return sha256_bytes(data_or_path)
    if data_or_path not in cache:
        cache[data_or_path] = RDigest(sha256_file(data_or_path), os.path.getsize(data_or_path))
    return cache[data_or_path]


def merkle(tree: Tree) -> tuple[RDigest, dict[RDigest, object]]:
    """(root digest, every blob by digest: file paths or bytes) of `tree` as REAPI Directories.

    MUST (REAPI canonical form): files, directories and symlinks each sorted by name."""
    pb = reapi()
    blobs: dict[RDigest, object] = {}
    hashes: dict = {}
    children: dict[str, dict] = {}

    def node_for(path: str) -> dict:
        d = children.setdefault(path, {"files": {}, "dirs": set(), "links": {}})
        if path:
            parent = os.path.dirname(path)
            node_for(parent)["dirs"].add(os.path.basename(path))
        return d

    for path, (content, exe) in tree.files.items():
        node_for(os.path.dirname(path))["files"][os.path.basename(path)] = (content, exe)
    for path, target in tree.symlinks.items():
        node_for(os.path.dirname(path))["links"][os.path.basename(path)] = target
    node_for("")

    def build(path: str) -> RDigest:
        d = children[path]
        msg = pb.Directory()
        for name in sorted(d["files"]):
            content, exe = d["files"][name]
            digest = _sha(content, hashes)
            blobs[digest] = content
            msg.files.add(name=name, digest=pb.Digest(hash=digest.hash, size_bytes=digest.size), is_executable=exe)
        for name in sorted(d["dirs"]):
            sub = build(f"{path}/{name}" if path else name)
            msg.directories.add(name=name, digest=pb.Digest(hash=sub.hash, size_bytes=sub.size))
        for name in sorted(d["links"]):
            msg.symlinks.add(name=name, target=d["links"][name])
        data = msg.SerializeToString(deterministic=True)
        digest = sha256_bytes(data)
        blobs[digest] = data
        return digest

    return build(""), blobs


def fetch_tree(cas, root: RDigest, dest: str) -> None:
    """Materialize the input root `root` from the CAS into `dest` (verifying every blob)."""
    pb = reapi()

    def walk(digest: RDigest, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        msg = pb.Directory.FromString(cas.read_blob(digest))
        for f in msg.files:
            if "/" in f.name or f.name in ("..", "."):
                raise RemoteError(f"bad file name {f.name!r} in the input root")
            target = os.path.join(path, f.name)
            with open(target, "wb") as out:
                out.write(cas.read_blob(RDigest(f.digest.hash, f.digest.size_bytes)))
            os.chmod(target, 0o755 if f.is_executable else 0o644)
        for s in msg.symlinks:
            os.symlink(s.target, os.path.join(path, s.name))
        for d in msg.directories:
            if "/" in d.name or d.name in ("..", "."):
                raise RemoteError(f"bad directory name {d.name!r} in the input root")
            walk(RDigest(d.digest.hash, d.digest.size_bytes), os.path.join(path, d.name))

    walk(root, dest)


def action_message(action, toolchain_defs: list[dict], toolchain_digest: str | None, host_tools: list[str],
                   dep_results: dict, source_tree: str | None, store) -> tuple[RDigest, dict[RDigest, object]]:
    """The REAPI Action for one of our actions; returns its digest and every blob it needs."""
    pb = reapi()
    tree = Tree()
    for (rel, _, exe), host in zip(action.srcs, action.src_paths):
        tree.files[f"src/{rel}"] = (host, exe)
    for dep_target, result in dep_results.items():
        for f in result.files:
            tree.files[f"deps/{dep_target}/{f.path}"] = (store.blob_path(f.digest, f.executable), f.executable)
        for s in result.symlinks:
            tree.symlinks[f"deps/{dep_target}/{s.path}"] = s.target
    if isinstance(action.source_fetch, tuple):
        for rel, host, _, exe in action.source_fetch:
            tree.files[f"source/{rel}"] = (host, exe)
    elif source_tree is not None:
        for dirpath, dirnames, filenames in os.walk(source_tree):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, source_tree)
                if os.path.islink(full):
                    tree.symlinks[f"source/{rel}"] = os.readlink(full)
                else:
                    tree.files[f"source/{rel}"] = (full, os.access(full, os.X_OK))
    spec = {"commands": list(action.commands), "env": [list(kv) for kv in action.env], "outs": list(action.outs),
            "jobserver": action.jobserver, "host_tools": host_tools, "toolchains": toolchain_defs,
            "toolchain_digest": toolchain_digest, "node": action.node, "has_source": action.source is not None,
            "sandbox": action.sandbox}
    tree.files[".buildgraph/action.json"] = (json.dumps(spec, sort_keys=True).encode(), False)
    root, blobs = merkle(tree)
    command = pb.Command(arguments=["buildgraph-action", ".buildgraph/action.json"], output_directories=["out"])
    for name, value in sorted(action.env):
        command.environment_variables.add(name=name, value=value)
    platform = pb.Platform()
    for name, value in sorted({"OSFamily": "Linux", "ISA": "x86-64",
                               "toolchain": toolchain_digest or "none"}.items()):
        platform.properties.add(name=name, value=value)
    command.platform.CopyFrom(platform)
    cdata = command.SerializeToString(deterministic=True)
    cdigest = sha256_bytes(cdata)
    blobs[cdigest] = cdata
    msg = pb.Action(command_digest=pb.Digest(hash=cdigest.hash, size_bytes=cdigest.size),
                    input_root_digest=pb.Digest(hash=root.hash, size_bytes=root.size))
    msg.platform.CopyFrom(platform)
    adata = msg.SerializeToString(deterministic=True)
    adigest = sha256_bytes(adata)
    blobs[adigest] = adata
    return adigest, blobs


class RemoteExecutor:
    """Runs actions on a REAPI executor; `run` has the shape of Sandbox.run."""

    def __init__(self, options, store, engine, sources, warn):
        from buildgraph.store.layered import RemoteLayer
        from buildgraph.store.reapi import ReapiCache

        self.options, self.store, self.engine, self.sources, self.warn = options, store, engine, sources, warn
        self.client = ReapiCache(options)
        from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as svc
        self.execution = svc.ExecutionStub(self.client.channel)
        self.layer = RemoteLayer(store, self.client, options, warn)   # blob download and verification
        self.healthy = True
        self.fallback = None    # the local Sandbox, used when the executor is unreachable

    def run(self, action, dep_results, tools):
        from buildgraph.sandbox import RunOutcome

        # Built-in actions (artifacts) run in-process; an unhealthy executor is not retried.
        if not self.healthy or action.commands[:1] and action.commands[0].startswith("builtin:"):
            return self.fallback.run(action, dep_results, tools)
        try:
            return self._run(action, dep_results)
        except RemoteError as exc:
            self.healthy = False
            self.warn(f"warning: remote executor {self.client.name} failed ({exc}); running actions locally")
            return self.fallback.run(action, dep_results, tools)
        except Exception as exc:  # anything else the server said: a failed action, not a crash
            return RunOutcome(None, f"remote execution failed: {exc}", "", 0.0)

    def _run(self, action, dep_results):
        import time

        from buildgraph.action import BadResult
        from buildgraph.sandbox import RunOutcome
        from buildgraph.store.layered import BlobMismatch

        start = time.monotonic()
        node = self.engine.graph.nodes[action.node]
        defs, digest = self._toolchains(node)
        source_tree = None
        if action.source_fetch is not None and not isinstance(action.source_fetch, tuple):
            source_tree = str(self.sources.get(action.source_fetch))
        adigest, blobs = action_message(action, defs, digest, list(self.engine.ws.host_tools), dep_results,
                                        source_tree, self.store)
        missing = self.client.find_missing(sorted(blobs, key=lambda d: d.hash))
        pairs = []
        for d in missing:
            content = blobs[d]
            if isinstance(content, bytes):
                path = self.store.temp_path()
                with open(path, "wb") as f:
                    f.write(content)
                pairs.append((d, path))
            else:
                pairs.append((d, content))
        try:
            self.client.upload_blobs(pairs)
        finally:
            for d, path in pairs:
                if isinstance(blobs[d], bytes):
                    os.unlink(path)
        response = self._execute(adigest)
        result = response.result
        log = self._logs(result)
        if response.status.code != 0:
            return RunOutcome(None, f"remote execution failed: {response.status.message}", log,
                              time.monotonic() - start)
        if result.exit_code != 0:
            return RunOutcome(None, f"command failed (exit code {result.exit_code}, on a remote worker)", log,
                              time.monotonic() - start)
        try:
            local = self.layer.accept(result.SerializeToString(), action)
        except (BadResult, BlobMismatch) as exc:
            return RunOutcome(None, f"rejected the executor's result: {exc}", log, time.monotonic() - start)
        if local is None:
            return RunOutcome(None, "the executor lost an output blob", log, time.monotonic() - start)
        return RunOutcome(local, None, log, time.monotonic() - start)

    def _execute(self, adigest: RDigest):
        import grpc

        pb = reapi()
        request = pb.ExecuteRequest(instance_name=self.options.instance_name, skip_cache_lookup=False,
                                    action_digest=pb.Digest(hash=adigest.hash, size_bytes=adigest.size))
        try:
            for op in self.execution.Execute(request, metadata=self.client.metadata, timeout=3600):
                if op.done:
                    if op.HasField("error"):
                        raise RemoteError(f"Execute: {op.error.message}")
                    response = pb.ExecuteResponse()
                    op.response.Unpack(response)
                    return response
        except grpc.RpcError as exc:
            raise RemoteError(f"Execute: {exc.code().name}: {exc.details()}") from None
        raise RemoteError("Execute: the operation stream ended before the action did")

    def _logs(self, result) -> str:
        text = ""
        for d in (result.stdout_digest, result.stderr_digest):
            if d.hash:
                parts: list[bytes] = []
                if self.client.download_blob(RDigest(d.hash, d.size_bytes), parts.append):
                    text += b"".join(parts).decode("utf-8", "replace")
        return text

    def _toolchains(self, node) -> tuple[list[dict], str | None]:
        if not node.toolchain:
            return [], None
        resolver = self.engine.resolver
        defs = []
        for name in resolver.members(node.toolchain):
            tc = self.engine.ws.toolchains[name]
            defs.append({"name": name, "spec": tc.spec(), "fields": _toolchain_fields(tc),
                         "digest": resolver._entry(name)[1]})
        return defs, resolver.resolve(node.toolchain).digest

    def close(self) -> None:
        self.client.close()


def _toolchain_fields(tc) -> dict:
    from dataclasses import asdict

    fields = asdict(tc)
    fields.pop("loc")
    return fields
