"""Reproducibility: verify (run again, perturbed, and compare), manifest, and diff.

verify   Runs each selected, already-built action a second time in a fresh sandbox with
         perturbations — another in-sandbox path (and so TMPDIR and HOME), umask 077, the
         environment in reverse order, another -j, and a later wall clock — and compares
         every output file with the recorded result. For files that differ it says why
         where it can tell: the build path embedded, a timestamp, a GNU build-id, nvcc's
         random tmpxft_ symbols. With diffoscope installed, --report-dir keeps its reports.
manifest JSON, per node: key, input digests by kind, output digests; plus the platform.
         Host paths, times and names are never in it, so two machines (or directories)
         that built the same thing write the same manifest.
diff     Compares two manifests and names root causes — nodes with the same key and
         different outputs (non-reproducible actions), and nodes whose own inputs changed
         (which: toolchain, source file, env var, command, feature) — apart from nodes that
         differ only because a dependency's output did.

Manifest format, version 1 (design note): {"manifest": 1, "platform": {...}, "nodes":
{NAME: {"key": xxh3, "inputs": Action.inputs(), "outputs": {relpath: digest, or "->target"
for symlinks}, "output_digest": digest}}}. Nodes not built are listed with "key": null.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import __version__, explain

MANIFEST_VERSION = 1
VERIFY_ROOT = "/verify-sandbox"


# ---------------------------------------------------------------- verify

@dataclass
class VerifyResult:
    node: str
    status: str                      # reproducible | differs | failed | skipped | expected-to-differ
    files: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    reason: str = ""


_TIME_PATTERNS = (re.compile(rb"\b\d{4}-\d{2}-\d{2}\b"), re.compile(rb"\b\d{2}:\d{2}:\d{2}\b"),
                  re.compile(rb"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b"),
                  re.compile(rb"\b1[6-9]\d{8}\b"))


def explain_difference(a: bytes, b: bytes, first_root: bytes, second_root: bytes) -> list[str]:
    """Why two versions of one output differ, as far as their bytes tell."""
    causes = []
    if (second_root in b and second_root not in a) or (first_root in a and first_root not in b):
        causes.append("embeds the build path (the sandbox directory it ran in)")
    for pattern in _TIME_PATTERNS:
        ta, tb = pattern.findall(a), pattern.findall(b)
        if ta != tb and (ta or tb):
            sample = (ta or [b""])[0].decode(errors="replace"), (tb or [b""])[0].decode(errors="replace")
            causes.append(f"embeds a timestamp ({sample[0]!r} vs {sample[1]!r})")
            break
    if a[:4] == b"\x7fELF" and b[:4] == b"\x7fELF":
        ida, idb = _build_id(a), _build_id(b)
        if ida != idb:
            causes.append("GNU build-id differs (it hashes the rest, so it follows any other difference)")
        syms_a, syms_b = set(re.findall(rb"tmpxft_[0-9a-f_]+", a)), set(re.findall(rb"tmpxft_[0-9a-f_]+", b))
        if syms_a != syms_b:
            causes.append("random symbol names from nvcc (tmpxft_…)")
    if not causes:
        offset = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        causes.append(f"content differs from byte {offset}" + (f" (sizes {len(a)} and {len(b)})" if len(a) != len(b) else ""))
    return causes


def _build_id(data: bytes) -> bytes | None:
    i = data.find(b"GNU\x00")
    return data[i + 4:i + 24] if i >= 0 else None


def verify(session, patterns, jobs: int, report_dir: Path | None = None, log=None) -> list[VerifyResult]:
    """Run every selected, built node again, perturbed, and compare its outputs."""
    from buildgraph.jobserver import Jobserver
    from buildgraph.sandbox import Sandbox

    graph, store = session.graph, session.store
    store.open_for_build()
    slots = 1 if jobs > 1 else 2                 # another -j than the build's
    jobserver = Jobserver(slots, store.tmp)
    sandbox = Sandbox(store, session.engine.sandbox_mode, jobserver, session.sources,
                      inner_root=VERIFY_ROOT, umask=0o077, reverse_env=True)
    try:
        return [_verify_node(session, name, sandbox, report_dir, log) for name in graph.select(patterns)]
    finally:
        sandbox.close()
        jobserver.close()


def _verify_node(session, name: str, sandbox, report_dir, log) -> VerifyResult:
    from buildgraph.sandbox import SANDBOX_ROOT

    engine, graph, state, store = session.engine, session.graph, session.state, session.store
    node = graph.nodes[name]
    rec = state.nodes.get(name)
    if rec is None:
        return VerifyResult(name, "skipped", reason="not built yet")
    if any(d not in state.nodes for _, d in node.deps):
        return VerifyResult(name, "skipped", reason="a dependency is not built")
    action = engine.action_for(node, {d: state.nodes[d].output_digest for _, d in node.deps})
    first = store.get_result(action.key, count=False) if action.key == rec.key else None
    if first is None:
        return VerifyResult(name, "skipped", reason="changed since its last build; build first")
    if log:
        log(f"verifying {name}")
    deps = {d: engine.result_of(dn, state.nodes[dn].key, state.nodes[dn].output_digest) for d, dn in node.deps}
    outcome = sandbox.run(action, deps, engine.tools_for(node))
    if outcome.result is None:
        return VerifyResult(name, "failed", reason=outcome.error or "failed")
    target = session.ws.targets[node.target]
    return _compare(name, first, outcome.result, store, SANDBOX_ROOT, report_dir,
                    target.reproducible, target.reproducible_reason)


def _compare(name, first, second, store, first_root, report_dir, reproducible, reason) -> VerifyResult:
    a = {f.path: f for f in first.files}
    b = {f.path: f for f in second.files}
    differing = sorted(p for p in set(a) | set(b) if p not in a or p not in b or a[p].digest != b[p].digest)
    if {s.path: s.target for s in first.symlinks} != {s.path: s.target for s in second.symlinks}:
        differing.append("(symlinks)")
    if not differing:
        return VerifyResult(name, "reproducible")
    causes = []
    for path in differing:
        if path not in a or path not in b:
            causes.append(f"{path}: produced by only one of the runs")
            continue
        da = open(store.blob_path(a[path].digest, a[path].executable), "rb").read()
        db = open(store.blob_path(b[path].digest, b[path].executable), "rb").read()
        for cause in explain_difference(da, db, first_root.encode(), VERIFY_ROOT.encode()):
            causes.append(f"{path}: {cause}")
        if report_dir is not None and shutil.which("diffoscope"):
            report_dir.mkdir(parents=True, exist_ok=True)
            out = report_dir / f"{name}--{path.replace('/', '_')}.txt"
            subprocess.run(["diffoscope", "--text", str(out), store.blob_path(a[path].digest, a[path].executable),
                            store.blob_path(b[path].digest, b[path].executable)], capture_output=True)
    status = "differs" if reproducible else "expected-to-differ"
    return VerifyResult(name, status, differing, causes, reason if not reproducible else "")


# ---------------------------------------------------------------- manifest

def manifest(session, patterns) -> dict:
    """Per node: key, input digests by kind, output digests (nodes not built: key null)."""
    from buildgraph.repository import os_id

    nodes = {}
    for name in session.graph.select(patterns):
        rec = session.state.nodes.get(name)
        inputs = session.state_dir.read_inputs(name)
        result = session.store.get_result(rec.key, count=False) if rec else None
        if rec is None or result is None or inputs is None:
            nodes[name] = {"key": None}
            continue
        outputs = {f.path: f.digest + ("+x" if f.executable else "") for f in result.files}
        outputs.update({s.path: f"->{s.target}" for s in result.symlinks})
        nodes[name] = {"key": rec.key, "inputs": inputs, "outputs": outputs, "output_digest": result.output_digest}
    return {"manifest": MANIFEST_VERSION,
            "platform": {"os": os_id(), "machine": platform.machine(), "buildgraph": __version__},
            "nodes": nodes}


# ---------------------------------------------------------------- diff

@dataclass
class DiffReport:
    nonreproducible: list[str] = field(default_factory=list)
    changed_inputs: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    only_one: list[str] = field(default_factory=list)
    platform: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.nonreproducible or self.changed_inputs or self.downstream or self.only_one)


def diff(a: dict, b: dict) -> DiffReport:
    report = DiffReport()
    for k in sorted(set(a.get("platform", {})) | set(b.get("platform", {}))):
        if a["platform"].get(k) != b["platform"].get(k):
            report.platform.append(f"{k}: {a['platform'].get(k)} → {b['platform'].get(k)}")
    na, nb = a.get("nodes", {}), b.get("nodes", {})
    for name in sorted(set(na) | set(nb)):
        if name not in na or name not in nb:
            report.only_one.append(f"{name}: only in {'the first' if name in na else 'the second'}")
            continue
        x, y = na[name], nb[name]
        if not x.get("key") or not y.get("key"):
            continue
        if x["key"] == y["key"]:
            if x["output_digest"] != y["output_digest"]:
                files = sorted(p for p in set(x["outputs"]) | set(y["outputs"])
                               if x["outputs"].get(p) != y["outputs"].get(p))
                report.nonreproducible.append(f"{name}: same inputs, different outputs: {', '.join(files[:5])}")
            continue
        own_x = {k: v for k, v in x["inputs"].items() if k != "deps"}
        own_y = {k: v for k, v in y["inputs"].items() if k != "deps"}
        if own_x != own_y:
            reasons = explain.changes(own_x, own_y)
            report.changed_inputs.append(f"{name}: {'; '.join(reasons) or 'inputs changed'}")
        else:
            deps = sorted(d for d in set(x["inputs"]["deps"]) | set(y["inputs"]["deps"])
                          if x["inputs"]["deps"].get(d) != y["inputs"]["deps"].get(d))
            report.downstream.append(f"{name}: only because the output of {', '.join(deps)} changed")
    return report
