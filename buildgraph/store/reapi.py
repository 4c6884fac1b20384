"""REAPI v2 remote cache client over gRPC (tested against BuildGrid).

Capabilities gives the batch limit; blobs up to it travel in BatchUpdateBlobs /
BatchReadBlobs, larger ones through ByteStream Write/Read in 1 MiB chunks (resource
names `{instance}/uploads/{uuid}/blobs/{hash}/{size}` and `{instance}/blobs/{hash}/
{size}`); FindMissingBlobs decides what to upload; ActionCache Get/UpdateActionResult
hold the results. UNAVAILABLE / RESOURCE_EXHAUSTED / ABORTED are retried with
exponential backoff; every failure surfaces as RemoteError. Headers from the options
travel as call metadata.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from urllib.parse import urlsplit

from buildgraph.store.remote import RDigest, RemoteError, RemoteOptions, redact

_CHUNK = 1 << 20
_BATCH_DEFAULT = 4 << 20


class ReapiCache:
    def __init__(self, options: RemoteOptions):
        import grpc

        from buildgraph.store.remote import reapi

        self.grpc = grpc
        self.pb = reapi()
        from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as svc
        from buildgrid.common.protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

        self.bs = bytestream_pb2
        parts = urlsplit(options.url)
        target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'grpcs' else 80)}"
        channel_options = [("grpc.max_receive_message_length", 64 << 20),
                           ("grpc.max_send_message_length", 64 << 20)]
        if parts.scheme == "grpcs":
            root = open(options.ca_file, "rb").read() if options.ca_file else None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root), channel_options)
        else:
            self.channel = grpc.insecure_channel(target, channel_options)
        self.options = options
        self.instance = options.instance_name
        self.metadata = tuple((k.lower(), v) for k, v in options.headers)
        self.name = redact(options.url)
        self.cas = svc.ContentAddressableStorageStub(self.channel)
        self.ac = svc.ActionCacheStub(self.channel)
        self.caps = svc.CapabilitiesStub(self.channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(self.channel)
        self._batch_limit: int | None = None

    # ------------------------------------------------------------ calls

    def _call(self, method, request, stream: bool = False):
        grpc = self.grpc
        retry = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
        delay = 0.2
        for attempt in range(self.options.retries + 1):
            try:
                return method(request, timeout=self.options.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.NOT_FOUND:
                    raise
                if code in retry and attempt < self.options.retries and not stream:
                    time.sleep(delay)
                    delay *= 2
                    continue
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                raise RemoteError(f"{getattr(code, 'name', code)}: {detail}") from None
        raise AssertionError("unreachable")

    def _digest(self, d: RDigest):
        return self.pb.Digest(hash=d.hash, size_bytes=d.size)

    def batch_limit(self) -> int:
        """Largest total size of one batch request, from Capabilities (with room for framing)."""
        if self._batch_limit is None:
            caps = self._call(self.caps.GetCapabilities, self.pb.GetCapabilitiesRequest(instance_name=self.instance))
            limit = caps.cache_capabilities.max_batch_total_size_bytes or _BATCH_DEFAULT
            self._batch_limit = max(64 << 10, min(limit, 64 << 20) - (64 << 10))
        return self._batch_limit

    # ------------------------------------------------------------ action cache

    def get_action_result(self, digest: RDigest) -> bytes | None:
        req = self.pb.GetActionResultRequest(instance_name=self.instance, action_digest=self._digest(digest))
        try:
            return self._call(self.ac.GetActionResult, req).SerializeToString()
        except self.grpc.RpcError:  # NOT_FOUND: other codes became RemoteError in _call
            return None

    def update_action_result(self, digest: RDigest, data: bytes) -> None:
        req = self.pb.UpdateActionResultRequest(instance_name=self.instance, action_digest=self._digest(digest),
                                                action_result=self.pb.ActionResult.FromString(data))
        self._call(self.ac.UpdateActionResult, req)

    # ------------------------------------------------------------ CAS

    def find_missing(self, digests: list[RDigest]) -> list[RDigest]:
        missing = []
        for i in range(0, len(digests), 1000):
            req = self.pb.FindMissingBlobsRequest(instance_name=self.instance,
                                                  blob_digests=[self._digest(d) for d in digests[i:i + 1000]])
            resp = self._call(self.cas.FindMissingBlobs, req)
            missing.extend(RDigest(d.hash, d.size_bytes) for d in resp.missing_blob_digests)
        return missing

    def upload_blobs(self, blobs: list[tuple[RDigest, str]]) -> None:
        """Upload (digest, path) pairs: small ones batched, large ones streamed."""
        limit = self.batch_limit()
        batch, batch_size = [], 0
        for digest, path in blobs:
            if digest.size > limit // 2:
                self._write_stream(digest, path)
                continue
            if batch and batch_size + digest.size > limit:
                self._write_batch(batch)
                batch, batch_size = [], 0
            with open(path, "rb") as f:
                batch.append((digest, f.read()))
            batch_size += digest.size
        if batch:
            self._write_batch(batch)

    def upload_blob(self, digest: RDigest, path: str) -> None:
        self.upload_blobs([(digest, path)])

    def _write_batch(self, batch: list[tuple[RDigest, bytes]]) -> None:
        req = self.pb.BatchUpdateBlobsRequest(instance_name=self.instance)
        for digest, data in batch:
            req.requests.add(digest=self._digest(digest), data=data)
        resp = self._call(self.cas.BatchUpdateBlobs, req)
        failed = [r for r in resp.responses if r.status.code != 0]
        if failed:
            raise RemoteError(f"BatchUpdateBlobs refused {len(failed)} blobs: {failed[0].status.message}")

    def _write_stream(self, digest: RDigest, path: str) -> None:
        name = f"{self.instance + '/' if self.instance else ''}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size}"

        def requests():
            offset = 0
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(_CHUNK)
                    last = offset + len(chunk) >= digest.size
                    yield self.bs.WriteRequest(resource_name=name if offset == 0 else "", write_offset=offset,
                                               finish_write=last, data=chunk)
                    offset += len(chunk)
                    if last:
                        break

        resp = self._call(self.bytestream.Write, requests(), stream=True)
        if resp.committed_size not in (digest.size, -1):
            raise RemoteError(f"ByteStream Write committed {resp.committed_size} of {digest.size} bytes")

    def read_blobs(self, digests: list[RDigest]) -> dict[RDigest, bytes]:
        """Small blobs in batches; returns what the server had."""
        out = {}
        limit = self.batch_limit()
        i = 0
        while i < len(digests):
            group, size = [], 0
            while i < len(digests) and (not group or size + digests[i].size <= limit):
                group.append(digests[i])
                size += digests[i].size
                i += 1
            req = self.pb.BatchReadBlobsRequest(instance_name=self.instance,
                                                digests=[self._digest(d) for d in group])
            resp = self._call(self.cas.BatchReadBlobs, req)
            for r in resp.responses:
                if r.status.code == 0:
                    out[RDigest(r.digest.hash, r.digest.size_bytes)] = r.data
        return out

    def read_blob(self, digest: RDigest) -> bytes:
        """One blob, verified against its digest: by batch if small, else streamed."""
        data = self.read_blobs([digest]).get(digest) if digest.size <= self.batch_limit() else None
        if data is None:
            parts: list[bytes] = []
            if not self.download_blob(digest, parts.append):
                raise RemoteError(f"blob {digest.hash} is not in the CAS")
            data = b"".join(parts)
        if len(data) != digest.size or hashlib.sha256(data).hexdigest() != digest.hash:
            raise RemoteError(f"blob {digest.hash} does not match its digest")
        return data

    def download_blob(self, digest: RDigest, sink) -> bool:
        """Stream a blob into `sink(chunk)` via ByteStream Read; False if the server lacks it."""
        name = f"{self.instance + '/' if self.instance else ''}blobs/{digest.hash}/{digest.size}"
        req = self.bs.ReadRequest(resource_name=name, read_offset=0, read_limit=0)
        try:
            for resp in self.bytestream.Read(req, timeout=max(self.options.timeout, digest.size / (20 << 20)),
                                             metadata=self.metadata):
                sink(resp.data)
        except self.grpc.RpcError as exc:
            if exc.code() == self.grpc.StatusCode.NOT_FOUND:
                return False
            raise RemoteError(f"ByteStream Read {digest.hash}: {exc.code().name}: {exc.details()}") from None
        return True

    def abort(self) -> None:
        """End every call in flight now (Ctrl-C)."""
        self.channel.close()

    def close(self) -> None:
        self.channel.close()
