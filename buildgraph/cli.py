"""Command-line front: parse, call one library function, print, return an exit code.

Exit codes: 0 ok, 1 build failed, 2 usage or configuration error, 130 interrupted.
`main` is the one place that turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path

from buildgraph.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, BuildgraphError, UsageError

_STARTED = time.monotonic()
PROCESS_START: float | None = None   # on CLOCK_BOOTTIME: the client's start, in a server's child (server.py)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 10G)") from None


def _count(minimum: int, zero_means: str | None = None):
    """An argparse type: an integer ≥ `minimum` (0 allowed too when `zero_means` says what it means)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if n < minimum and not (n == 0 and zero_means):
            raise argparse.ArgumentTypeError(f"{n}: must be {minimum} or more"
                                             + (f" (or 0: {zero_means})" if zero_means else ""))
        return n
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def _remote_url(args) -> str | None:
    """--remote-cache, else $BUILDGRAPH_REMOTE_CACHE (credentials and all: print it redacted)."""
    return getattr(args, "remote_cache", None) or os.environ.get("BUILDGRAPH_REMOTE_CACHE")


def _remote_options(args):
    """RemoteOptions from --remote-* flags (and $BUILDGRAPH_REMOTE_CACHE), or None."""
    url = _remote_url(args)
    if not url:
        return None
    from buildgraph.store.remote import RemoteOptions, credentials

    return RemoteOptions(url=url, read_only=args.remote_read_only, instance_name=args.remote_instance_name,
                         headers=credentials(url), ca_file=args.remote_ca, timeout=args.remote_timeout,
                         retries=args.remote_retries, jobs=args.remote_jobs)


def _executor_options(args):
    url = getattr(args, "remote_executor", None)
    if not url:
        return None
    from buildgraph.store.remote import RemoteOptions, credentials

    return RemoteOptions(url=url, instance_name=args.remote_instance_name, headers=credentials(url),
                         ca_file=args.remote_ca, timeout=max(args.remote_timeout, 30.0), retries=args.remote_retries,
                         jobs=args.remote_jobs)


def _options(args):
    from buildgraph.operations import Options

    return Options(remote=_remote_options(args) if hasattr(args, "remote_cache") else None,
                   directory=Path(args.directory), cache_dir=_cache_dir(args),
                   toolchain_dir=_toolchain_dir_arg(args),
                   cache_max_bytes=getattr(args, "max_size", None), sandbox=args.sandbox,
                   jobs=getattr(args, "jobs", 0) or 0, keep_going=getattr(args, "keep_going", False),
                   mirrors=tuple(getattr(args, "mirror", None) or ()), git_sha=getattr(args, "git_sha", None),
                   executor=_executor_options(args) if hasattr(args, "remote_executor") else None,
                   restore_only=getattr(args, "restore_only", False),
                   compile_cache=not getattr(args, "no_compile_cache", False),
                   fetch_toolchains=getattr(args, "fetch", True),   # plan and why: only with --fetch
                   subcommands=getattr(args, "subcommands", False),
                   sandbox_debug=getattr(args, "sandbox_debug", False))


def _cache_dir(args) -> Path:
    """--cache-dir, else $BUILDGRAPH_CACHE_DIR, else ~/.cache/buildgraph; always absolute
    (actions and bwrap see it from other directories)."""
    from buildgraph.locations import default_cache_dir

    return (Path(args.cache_dir) if args.cache_dir else default_cache_dir()).absolute()


def _toolchain_dir_arg(args) -> Path | None:
    return Path(args.toolchain_dir).absolute() if args.toolchain_dir else None


def _session(args, write=True):
    from buildgraph.operations import Session

    return Session(_options(args), write=write, notify=lambda m: print(f"buildgraph: {m}", file=sys.stderr))


# ---------------------------------------------------------------- commands

def process_seconds() -> float:
    """How long this process has run, interpreter start-up included (the kernel's start
    time, to its 10 ms tick; a server's child counts from its client's): what a build's
    summary reports."""
    from buildgraph.client import process_start

    started = PROCESS_START if PROCESS_START is not None else process_start()
    if started is None:   # no /proc: since buildgraph's code began
        return time.monotonic() - _STARTED
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)


def _noop_check(args):
    """The no-op check (noop.py), under the workspace lock: the (name, key) of every node if
    this build would do nothing, what changed if only sources and outputs did
    (noop.Changes), or None."""
    from buildgraph import noop, signatures
    from buildgraph.fsutil import lock_exclusive
    from buildgraph.locations import toolchain_dir

    root = signatures.find_root(Path(args.directory))
    if root is None:
        return None
    asked = noop.request(args.targets, args.sandbox, toolchain_dir(_cache_dir(args), _toolchain_dir_arg(args)))
    try:
        lock = lock_exclusive(root / ".buildgraph" / "lock", lambda m: print(f"buildgraph: {m}", file=sys.stderr))
    except OSError:   # no .buildgraph yet (or not ours to write): the build proper says why
        return None
    try:
        return noop.check(root, asked)
    finally:
        os.close(lock)


def _write_reports(args, outcomes) -> None:
    """The event log (--log-json) and trace (--profile) of a build's outcomes, when asked for
    (ui is imported only then: the no-op build stays light)."""
    if args.log_json or args.profile:
        from buildgraph import ui

        if args.log_json:
            ui.write_event_log(args.log_json, outcomes)
        if args.profile:
            ui.write_chrome_trace(args.profile, outcomes)


def _report_noop(args, nodes) -> None:
    """What a build the no-op check answered says: the summary, and the event log and trace
    when asked for."""
    if args.log_json or args.profile:
        from buildgraph.status import UpToDate

        _write_reports(args, [UpToDate(name, key) for name, key in nodes])
    print(f"{len(nodes)} nodes: 0 ran, 0 cached, {len(nodes)} up to date in {process_seconds():.2f}s")


def cmd_build(args) -> int:
    found = _noop_check(args)
    if isinstance(found, tuple):
        _report_noop(args, found)
        return EXIT_OK
    from buildgraph import operations, ui

    with _session(args) as s:
        s.trust(found)
        summary = operations.build(s, args.targets, ui.make_reporter())
    summary.elapsed = process_seconds()   # the whole process: start-up, loading and saving too
    _write_reports(args, summary.outcomes)
    if summary.interrupted:   # the logs above record what finished before the interruption
        raise KeyboardInterrupt
    print(summary.line())
    if not summary.ok:
        failed = [o for o in summary.outcomes if o.status.value == "failed"]
        for o in failed:   # a log path only where there is a log to read
            log = f" (log: .buildgraph/logs/{o.name}.log)" if o.log.strip() else ""
            print(f"buildgraph: {o.name} failed: {o.error}{log}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_env(args) -> int:
    from buildgraph import devenv, ui

    with _session(args) as s:
        dev = devenv.prepare(s, args.node, ui.make_reporter(sys.stderr))
    if args.format == "sh":
        sys.stdout.write(dev.sh())
    elif args.format == "json":
        sys.stdout.write(dev.json())
    else:
        if dev.presets is None:
            raise UsageError(f"{dev.node} is a {dev.kind} node: only cmake nodes have CMake presets")
        sys.stdout.write(json.dumps(dev.presets, indent=2) + "\n")
    return EXIT_OK


def cmd_shell(args) -> int:
    import subprocess

    from buildgraph import devenv, ui

    with _session(args) as s:   # the workspace lock is held while dependencies build, not after
        dev = devenv.prepare(s, args.node, ui.make_reporter(sys.stderr))
    written = dev.write_presets()
    command = args.command_args or [os.environ.get("SHELL") or "/bin/sh"]
    if command[:1] == ["--"]:
        command = command[1:]
    if not args.command_args:
        print(f"buildgraph: the build environment of {dev.node}: its toolchain on PATH, "
              f"dependencies in {', '.join(dev.deps.values()) or '(none)'}; exit to leave", file=sys.stderr)
        if written:
            print(f"buildgraph: {written} has the preset {dev.preset_name}: "
                  f"cmake --preset {dev.preset_name} && cmake --build --preset {dev.preset_name}", file=sys.stderr)
    try:
        return subprocess.run(command, env={**os.environ, **dev.env}).returncode
    except FileNotFoundError:
        raise UsageError(f"{command[0]}: command not found") from None


def cmd_publish(args) -> int:
    """Upload built artifacts' wheels and jars; see publish.py."""
    import datetime

    from buildgraph import publish

    destinations = [publish.parse_destination(text) for text in args.to]
    if any(kind == "maven" for kind, _ in destinations) and not args.group:
        raise UsageError("--to maven:URL needs --group (the Maven groupId, e.g. org.example)")
    if args.prune_nightlies and any(kind == "maven" for kind, _ in destinations):
        raise UsageError("--prune-nightlies is for indexes (pypi:URL); a Maven repository keeps its snapshots")
    date = args.nightly_date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    if not (len(date) == 8 and date.isdigit()):
        raise UsageError(f"--nightly-date {date!r}: expected YYYYMMDD")
    request = publish.Request(nightly=date if args.nightly else None, index_url=args.index_url, group=args.group,
                              prune_keep=args.keep if args.prune_nightlies else None)
    with _session(args) as s:
        restored = publish.restore(s, args.targets)
    failed = 0
    for kind, url in destinations:      # one command: every wheel to the index, every jar to Maven
        try:
            print("\n".join(publish.publish(kind, restored, url, request)))
        except publish.PublishError as exc:   # the next destination still gets its files
            print(f"buildgraph: error: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def cmd_fetch(args) -> int:
    from buildgraph import operations

    mirror = Path(args.mirror[0]) if args.mirror else None   # fetch fills the (first) mirror
    if mirror is not None:
        mirror.mkdir(parents=True, exist_ok=True)
    with _session(args, write=False) as s:
        return _print_each(operations.fetch_sources(s, args.targets, mirror),
                           lambda target, src, path: f"{target}: {src.describe()} -> {path}")


def _print_each(items, line) -> int:
    """For each item (a tuple ending in a result or the exception it failed with), print
    `line(*item)` or the error; the exit code says failed if any item did."""
    failed = 0
    for item in items:
        if isinstance(item[-1], Exception):
            failed += 1
            print(f"buildgraph: error: {item[-1]}", file=sys.stderr)
        else:
            print(line(*item))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_worker(args) -> int:
    from buildgraph import worker
    from buildgraph.locations import default_cache_dir, default_toolchain_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "worker"
    tc_dir = Path(args.toolchain_dir) if args.toolchain_dir else default_toolchain_dir(cache)
    return worker.main(args.server, args.instance_name, args.slots or os.cpu_count() or 1, cache, tc_dir)


def cmd_audit(args) -> int:
    """Audit ELF files (as shipped together), or every ELF file in a wheel against the tags
    its name claims."""
    from buildgraph import audit

    policy = audit.policy_named(args.policy) if args.policy else None
    if args.policy and policy is None:
        print(f"buildgraph: error: unknown policy {args.policy!r} ({audit.known_policy_names()})", file=sys.stderr)
        return EXIT_FAILED + 1
    if args.explain:
        return _explain_audit(args)

    def report(files: list[str]) -> tuple[list, int]:
        audits, bad = audit.audit_together(files), 0
        for a in audits:
            highest = a.req.highest
            versions = ", ".join(f"{ns} {'.'.join(map(str, highest[ns][0]))}" for ns in sorted(highest))
            print(f"{a.path}: {', '.join(a.tags) or 'linux'} (needs {versions or 'no versioned symbols'}; "
                  f"NEEDED {', '.join(a.req.needed) or '-'})")
            problems = [audit.runtime_export_problem(a.path, a.runtime_leaks)] if a.runtime_leaks else []
            problems += [f"not {policy.name}: {v}" for v in a.violations(policy)] if policy else []
            for problem in problems:
                print(f"  {problem}")
            bad += len(problems)
        return audits, bad

    bad = 0
    elves = [p for p in args.files if not p.endswith(".whl")]
    try:
        for path in elves:
            if not audit.is_elf(path):
                raise ValueError(f"{path}: neither an ELF file nor a wheel")
        bad += report(elves)[1] if elves else 0
        for wheel in (p for p in args.files if p.endswith(".whl")):
            with audit.wheel_files(wheel) as (files, claims):
                audits, found = report(files)
                bad += found
                proof = (f"its files prove {', '.join(audit.true_tags(audits)) or 'linux'}" if audits
                         else "it holds no compiled files")
                print(f"{wheel}: claims {', '.join(claims)}; {proof}")
                for claim in claims:
                    for v in audit.claim_problems(audits, claim):
                        print(f"  not {claim}: {v}")
                        bad += 1
    except (ValueError, OSError) as exc:
        print(f"buildgraph: error: {exc}", file=sys.stderr)
        bad += 1
    return EXIT_FAILED if bad else EXIT_OK


def _explain_audit(args) -> int:
    """audit --explain NODE...: why each node's files keep their claim or do not."""
    from buildgraph import operations, ui

    failed = 0
    with _session(args) as s:
        for pattern in args.files:
            for name, lines, holds in operations.explain_audit(s, pattern, args.policy, ui.make_reporter(sys.stderr)):
                print(f"{name}: {lines[0]}")
                print("\n".join(lines[1:]))
                failed += not holds
    return EXIT_FAILED if failed else EXIT_OK


def cmd_artifact(args) -> int:
    from buildgraph import repository

    if args.action == "push":
        with _session(args, write=False) as s:
            for name in s.graph.resolve(args.node):
                dist = s.state_dir.out / name / "dist"
                if not dist.is_dir():
                    print(f"buildgraph: error: {name} is not built (buildgraph build {name})", file=sys.stderr)
                    return EXIT_FAILED
                prefix = repository.push(dist, args.url, args.git_sha, args.remote_ca, args.allow_dirty)
                print(f"{name}: pushed to {args.url.rstrip('/')}/{prefix}/")
        return EXIT_OK
    files = repository.pull(args.url, args.prefix, args.library, Path(args.output), args.remote_ca)
    print(f"pulled {len(files)} files into {args.output}, each verified against {args.library}.meta")
    return EXIT_OK


def cmd_verify(args) -> int:
    from buildgraph import repro

    with _session(args, write=False) as s:
        results = repro.verify(s, args.targets, args.jobs or os.cpu_count() or 1,
                               Path(args.report_dir) if args.report_dir else None,
                               log=lambda m: print(f"buildgraph: {m}", file=sys.stderr))
    for r in results:
        line = f"{r.node}: {r.status}"
        if r.reason:
            line += f" ({r.reason})"
        print(line)
        for cause in r.causes:
            print(f"  {cause}")
    differs = [r for r in results if r.status in ("differs", "failed")]
    expected = sum(r.status == "expected-to-differ" for r in results)
    print(f"{sum(r.status == 'reproducible' for r in results)} reproducible, {len(differs)} differ or failed, "
          f"{expected} declared not reproducible, {sum(r.status == 'skipped' for r in results)} skipped")
    return EXIT_FAILED if differs else EXIT_OK


def cmd_manifest(args) -> int:
    from buildgraph import repro

    with _session(args, write=False) as s:
        data = repro.manifest(s, args.targets)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        built = sum(1 for n in data["nodes"].values() if n.get("key"))
        print(f"wrote {args.output}: {len(data['nodes'])} nodes ({built} built)")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_diff(args) -> int:
    from buildgraph import repro

    try:
        a, b = (json.loads(Path(p).read_text()) for p in (args.first, args.second))
    except (OSError, ValueError) as exc:
        print(f"buildgraph: error: cannot read manifest: {exc}", file=sys.stderr)
        return EXIT_FAILED + 1
    report = repro.diff(a, b)
    sections = (("platform", report.platform), ("root cause: not reproducible (same key, other outputs)",
                report.nonreproducible), ("root cause: inputs changed", report.changed_inputs),
                ("downstream only", report.downstream), ("in one manifest only", report.only_one))
    for title, lines in sections:
        if lines:
            print(f"{title}:")
            for line in lines:
                print(f"  {line}")
    if report.empty():
        print("manifests agree: every node has the same key and the same outputs")
        return EXIT_OK
    return EXIT_FAILED


def cmd_plan(args) -> int:
    from buildgraph import operations

    with _session(args, write=False) as s:
        rows, path, impure = operations.plan(s, args.targets)
    if args.format == "json":
        print(json.dumps({"nodes": [{"node": r.name, "key": r.key, "action_digest": r.action_digest,
                                     "status": r.status, "reasons": r.reasons, "prebuilt": r.prebuilt}
                                    for r in rows],
                          "critical_path": path, "not_hermetic": impure}, indent=2))
        return EXIT_OK
    width = max((len(r.name) for r in rows), default=4)
    for r in rows:
        key = (r.key or "?")[:16]
        line = f"{r.name:<{width}}  {key:<16}  {r.status}"
        if r.prebuilt:
            line += f" [prebuilt: {r.prebuilt}]"
        if r.reasons:
            line += ": " + "; ".join(r.reasons[:3]) + (f" (+{len(r.reasons) - 3} more)" if len(r.reasons) > 3 else "")
        print(line)
    runs = sum(r.status == "run" for r in rows)
    print(f"{len(rows)} nodes, {runs} to run; critical path: {' → '.join(path) if path else '-'}")
    for line in impure:
        print(f"not hermetic: {line}")
    return EXIT_OK


def cmd_why(args) -> int:
    from buildgraph import operations

    with _session(args, write=False) as s:
        name, lines = operations.why(s, args.node)
    if not lines:
        print(f"{name}: no input changed since its last build")
    for line in lines:
        print(f"{name}: {line}")
    return EXIT_OK


def cmd_graph(args) -> int:
    with _session(args, write=False) as s:
        selected = s.graph.select(args.targets)
        if args.format == "json":
            print(json.dumps(s.graph.to_json(selected), indent=2))
            return EXIT_OK
        from buildgraph import dot

        text = dot.render(s.graph, s.ws, selected, s.state_dir.read_outcomes(), set(s.state.materialized),
                          all_edges=args.all_edges)
    if args.format == "dot":
        sys.stdout.write(text)
    elif args.output:
        Path(args.output).write_bytes(dot.image(text, args.format))
    elif sys.stdout.isatty():
        raise UsageError(f"--format {args.format} writes an image: give -o FILE or redirect the output")
    else:
        sys.stdout.buffer.write(dot.image(text, args.format))
    return EXIT_OK


def cmd_query(args) -> int:
    with _session(args, write=False) as s:
        names = s.graph.resolve(args.node)
        found: set[str] = set()
        for n in names:
            if args.relation == "deps":
                found.update(s.graph.deps_of(n, transitive=not args.direct))
            else:
                found.update(s.graph.rdeps_of(n, transitive=not args.direct))
    for n in sorted(found):
        print(n)
    return EXIT_OK


def cmd_cache(args) -> int:
    from buildgraph.store.local import DEFAULT_MAX_BYTES, LocalStore

    if args.action == "clean":
        return _cache_clean(args)
    store = LocalStore(_cache_dir(args), DEFAULT_MAX_BYTES if args.max_size is None else args.max_size)
    try:
        if args.action == "gc":
            r = store.gc()
            print(f"evicted {r['evicted_entries']} action results, removed {r['removed_blobs']} blobs "
                  f"({r['removed_bytes'] / 1e6:.1f} MB); cache holds {r['bytes'] / 1e6:.1f} MB "
                  f"of {r['max_bytes'] / 1e6:.0f} MB allowed")
            return EXIT_OK
        if args.action == "verify":
            return _print_verify(store.verify(repair=args.repair), args.repair)
        st = store.stats()
        print(f"cache: {st['directory']}")
        print(f"  action results: {st['action_entries']}")
        print(f"  blobs: {st['blobs']} ({st['bytes'] / 1e6:.1f} MB of {st['max_bytes'] / 1e6:.0f} MB)")
        from buildgraph import compile_cache

        cc = compile_cache.stats(str(store.root / "compile-cache"))
        if cc["namespaces"]:
            print(f"  compile cache: {cc['hits']} hits ({cc['remote_hits']} from the remote), {cc['misses']} misses "
                  f"in {cc['namespaces']} toolchain namespaces")
    finally:
        store.close()
    from buildgraph.state import StateDir
    from buildgraph.workspace import find_root

    try:
        last = StateDir(find_root(Path(args.directory))).last_build()
    except BuildgraphError:
        last = None
    if last:
        print(f"last build: {last.get('nodes', 0)} nodes in {last.get('seconds', 0)}s; "
              f"ran {last.get('ran', 0)}, cached {last.get('cached', 0)}, up to date {last.get('up-to-date', 0)}, "
              f"failed {last.get('failed', 0)}")
        print(f"  local store: {last.get('local_hits', 0)} hits, {last.get('local_misses', 0)} misses, "
              f"{last.get('rejected', 0)} rejected entries, {last.get('bytes_stored', 0) / 1e6:.2f} MB stored")
        if "remote_hits" in last:
            print(f"  remote cache: {last['remote_hits']} hits, {last['remote_misses']} misses, "
                  f"{last['remote_rejected']} rejected, {last['remote_errors']} errors; "
                  f"{last['remote_bytes_down'] / 1e6:.2f} MB down, {last['remote_bytes_up'] / 1e6:.2f} MB up "
                  f"({last['remote_uploads']} results uploaded)")
        if "compile_remote_hits" in last:
            print(f"  remote compile cache: {last['compile_remote_hits']} entries found, "
                  f"{last['compile_remote_misses']} missing, {last['compile_remote_uploads']} uploaded")
    return EXIT_OK


def _print_verify(report: dict, repaired: bool) -> int:
    for name in report["damaged"]:
        print(f"damaged blob {name}: its content does not match its name" + ("; quarantined" if repaired else ""))
    for key, reason in report["entries"]:
        print(f"action result {key}: {reason}" + ("; dropped" if repaired else ""))
    bad = len(report["damaged"]) + len(report["entries"])
    print(f"checked {report['blobs']} blobs: {len(report['damaged'])} damaged, "
          f"{len(report['entries'])} action results affected" +
          ("" if not bad else "; repaired" if repaired else "; run `buildgraph cache verify --repair`"))
    return EXIT_OK if not bad or repaired else EXIT_FAILED


def cmd_toolchain(args) -> int:
    from buildgraph import operations

    with _session(args, write=False) as s:
        if args.action == "list":
            rows = operations.toolchain_list(s, args.names)
            nw = max([len(r["name"]) for r in rows] + [4])
            vw = max([len(r["version"]) for r in rows] + [7])
            print(f"{'name':<{nw}}  {'version':<{vw}}  {'provider':<8}  {'digest':<16}  {'hermetic':<8}  installed")
            for r in rows:
                print(f"{r['name']:<{nw}}  {r['version']:<{vw}}  {r['provider']:<8}  {(r['digest'] or '-')[:16]:<16}  "
                      f"{'yes' if r['hermetic'] else 'no':<8}  {r['installed']}")
            return EXIT_OK
        if args.action == "fetch":
            return _print_each(operations.toolchain_fetch(s, args.names, force=args.force),
                               lambda name, entry: f"{name}: {entry.digest[:16]} at {entry.path}")
        bad = 0
        for name, problems in operations.toolchain_verify(s, args.names):
            if problems is None:
                print(f"{name}: not fetched")
            elif problems:
                bad += 1
                print(f"{name}: TAMPERED ({len(problems)} files); keys now follow the files as they are; "
                      f"`buildgraph toolchain fetch --force {name}` restores it")
                for p in problems[:20]:
                    print(f"  {p}")
            else:
                print(f"{name}: ok")
        return EXIT_FAILED if bad else EXIT_OK


def cmd_info(args) -> int:
    """Bazel's `info`: where everything is, as this command line (and the rc files) set it."""
    from buildgraph import rcfile, signatures
    from buildgraph.errors import did_you_mean
    from buildgraph.locations import toolchain_dir
    from buildgraph.sandbox import detect_mode
    from buildgraph.store.remote import redact

    root = signatures.find_root(Path(args.directory))
    cache = _cache_dir(args)
    remote = _remote_url(args)
    items = {
        "version": _version(),
        "workspace": str(root) if root else f"none (no BUILD.yaml at or above {Path(args.directory).resolve()})",
        "output_root": str(root / ".buildgraph" / "out") if root else "none",
        "logs": str(root / ".buildgraph" / "logs") if root else "none",
        "cache_dir": str(cache),
        "toolchain_dir": str(toolchain_dir(cache, _toolchain_dir_arg(args))),
        "sources_dir": str(cache / "sources"),
        "sandbox": detect_mode(args.sandbox, cache if cache.is_dir() else None),
        "remote_cache": redact(remote) if remote else "none",
        "remote_read_only": str(bool(args.remote_read_only)).lower(),
        "mirrors": " ".join(args.mirror or ()) or os.environ.get("BUILDGRAPH_MIRROR") or "none",
        "rc_files": " ".join(str(f) for f in rcfile.rc_files(root)) or "none",
    }
    if args.key:
        if args.key not in items:
            raise UsageError(f"info: no item {args.key!r}; " + (did_you_mean(args.key, items) or
                                                                f"items: {', '.join(items)}"))
        print(items[args.key])
        return EXIT_OK
    for key, value in items.items():
        print(f"{key}: {value}")
    return EXIT_OK


def cmd_shutdown(args) -> int:
    from buildgraph import client, server

    where = client.server_dir()
    stopped = server.stop_all(where) if where else []
    print(f"stopped {len(stopped)} server{'s' if len(stopped) != 1 else ''}" + (f" in {where}" if where else ""))
    return EXIT_OK


def cmd_clean(args) -> int:
    from buildgraph.state import StateDir
    from buildgraph.workspace import find_root

    if args.cache:
        raise UsageError("`clean` removes this workspace's outputs and state only; the cache is shared by "
                         "every workspace: `buildgraph cache clean` removes its build results, "
                         "`buildgraph cache clean --all` also the fetched toolchains and sources")
    state_dir = StateDir(find_root(Path(args.directory)))
    state_dir.lock(lambda m: print(f"buildgraph: {m}", file=sys.stderr))
    try:
        state_dir.clear()
    finally:
        state_dir.close()
    print(f"removed the outputs, logs and build records of {state_dir.dir.parent}")
    return EXIT_OK


def _cache_clean(args) -> int:
    from buildgraph.cache_clean import DOWNLOADS, clean

    cache = _cache_dir(args)
    if not cache.is_dir():
        print(f"cache {cache}: nothing to remove")
        return EXIT_OK
    removed = clean(cache, args.all)
    for name, files, size in removed:
        print(f"  removed {name}: {files} files, {size / 1e6:.1f} MB")
    total = sum(size for _, _, size in removed)
    print(f"cache {cache}: removed {total / 1e6:.1f} MB"
          + ("" if args.all else f" of build results; kept {', '.join(d + '/' for d in DOWNLOADS)} (--all removes them)"))
    return EXIT_OK


# ---------------------------------------------------------------- parser

# Bazel's names for our flags (did-you-mean); the rest match with '_' read as '-'.
_BAZEL_FLAGS = {"--disk_cache": "--cache-dir", "--spawn_strategy": "--sandbox", "--output_base": "--cache-dir",
                "--execution_log_json_file": "--log-json", "--remote_upload_local_results": "--remote-read-only",
                "--sandbox_debug": "--sandbox-debug"}

EXAMPLES = {
    "build": ["buildgraph build                       # every node",
              "buildgraph build backend@cpu-dynamic -j 8 --keep-going",
              "buildgraph build --config=ci           # the options of build:ci in .buildgraphrc"],
    "publish": ["buildgraph publish release --to pypi:http://127.0.0.1:8080/ --git-sha $GIT_COMMIT"],
    "fetch": ["buildgraph fetch                       # every upstream source the targets need",
              "buildgraph fetch --mirror ../mirror  # and keep them there by digest"],
    "plan": ["buildgraph plan                        # what a build would do; downloads nothing",
             "buildgraph plan backend --format json"],
    "why": ["buildgraph why backend@cpu-dynamic"],
    "graph": ["buildgraph graph --format svg -o graph.svg   # laid out by Graphviz, coloured by last outcome",
              "buildgraph graph release@cpu-static | dot -Tpng > release.png",
              "buildgraph graph --format json backend"],
    "query": ["buildgraph query deps backend@cpu-dynamic",
              "buildgraph query rdeps openblas --direct"],
    "cache": ["buildgraph cache stats",
              "buildgraph cache gc --max-size 5G",
              "buildgraph cache verify --repair",
              "buildgraph cache clean                 # build results of every workspace",
              "buildgraph cache clean --all           # and fetched toolchains and sources"],
    "toolchain": ["buildgraph toolchain list", "buildgraph toolchain fetch portable", "buildgraph toolchain verify"],
    "toolchain list": ["buildgraph toolchain list              # name, version, provider, digest, installed"],
    "toolchain fetch": ["buildgraph toolchain fetch               # every toolchain the targets use",
                        "buildgraph toolchain fetch portable cuda-13.0"],
    "toolchain verify": ["buildgraph toolchain verify             # re-hash every fetched toolchain"],
    "verify": ["buildgraph verify backend@cpu-dynamic --report-dir reports/"],
    "manifest": ["buildgraph manifest -o here.json && buildgraph diff here.json ci.json"],
    "diff": ["buildgraph diff here.json ci.json"],
    "worker": ["buildgraph worker --server grpc://127.0.0.1:50051 --slots 4"],
    "audit": ["buildgraph audit dist/lib/libmxnet.so --policy manylinux_2_17",
              "buildgraph audit --explain release@cpu-dynamic"],
    "artifact": ["buildgraph artifact push release@cpu-dynamic --to ../artifacts",
                 "buildgraph artifact pull --from ../artifacts --prefix COMMIT/debian12/cpu/dynamic "
                 "--library libbackend.so -o out/"],
    "artifact push": ["buildgraph artifact push release@cpu-dynamic --to ../artifacts",
                      "buildgraph artifact push release@cpu-dynamic --to https://artifacts.example/backend "
                      "--git-sha 3f2c1a"],
    "artifact pull": ["buildgraph artifact pull --from ../artifacts --prefix COMMIT/debian12/cpu/dynamic "
                      "--library libbackend.so -o out/"],
    "env": ['eval "$(buildgraph env backend@cpu-dynamic)"',
            "buildgraph env backend@cpu-dynamic --format cmake-presets > CMakeUserPresets.json"],
    "shell": ["buildgraph shell backend@cpu-dynamic", "buildgraph shell backend@cpu-dynamic -- cmake --build build"],
    "clean": ["buildgraph clean                       # this workspace's outputs and state; not the cache"],
    "info": ["buildgraph info", "buildgraph info cache_dir"],
    "shutdown": ["buildgraph shutdown                    # the next build starts one again"],
}


class _Parser(argparse.ArgumentParser):
    """argparse with did-you-mean for commands and choices, and no abbreviated options (as
    Bazel: `--keep-goin` is a typo, and an abbreviation that works today breaks when an
    option that shares its prefix is added)."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message: str):
        import re

        from buildgraph.errors import did_you_mean

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            hint = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
            if hint:
                message = f"{message}; {hint}"
        super().error(message)


def suggest_option(option: str, command: argparse.ArgumentParser) -> str | None:
    """The option of `command` a mistyped or Bazel-spelled `option` most likely means."""
    from buildgraph.errors import closest

    known = [o for a in command._actions for o in a.option_strings]
    flag = option.split("=", 1)[0]
    for guess in (_BAZEL_FLAGS.get(flag), flag.replace("_", "-")):
        if guess in known:
            return guess
    return closest(flag.replace("_", "-"), [o for o in known if o.startswith("--")])


def _subcommand(p: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """(the command words at the start of argv, the parser they select)."""
    words, parser = [], p
    for word in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        words.append(word)
        parser = sub.choices[word]
    return words, parser


def _with_rc(p: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """argv with the rc files' options of its command inserted (rcfile.py)."""
    from buildgraph import rcfile, signatures

    words, command = _subcommand(p, argv)
    if not words:
        return argv
    rest = argv[len(words):]
    directory = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a in ("-C", "--directory")), None) or \
        next((a.split("=", 1)[1] for a in rest if a.startswith("--directory=")), ".")
    lines = rcfile.read(rcfile.rc_files(signatures.find_root(Path(directory))))
    options = {o: a for a in command._actions for o in a.option_strings}
    return words + rcfile.expand(words[0], rest, lines, options.get)


@functools.cache
def parser() -> argparse.ArgumentParser:
    """The command line's parser: built once per process (7-8 ms here; the server builds it
    before it forks, so a served build does not), never changed by parsing. Nothing in it
    depends on the environment, the directory or the rc files."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-C", "--directory", default=".", help="workspace directory (default: search upward from .)")
    common.add_argument("--cache-dir", help="local cache directory (default: $BUILDGRAPH_CACHE_DIR or ~/.cache/buildgraph)")
    common.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "unshare", "none"),
                        help="action isolation (default: the strongest available)")
    common.add_argument("--toolchain-dir", help="toolchain store (default: $BUILDGRAPH_TOOLCHAIN_DIR or "
                                                "CACHE_DIR/toolchains)")
    common.add_argument("--mirror", action="append", metavar="DIR_OR_URL",
                        help="look for sources here first (repeatable; then $BUILDGRAPH_MIRROR, then upstream)")

    p = _Parser(prog="buildgraph", description="Declarative build graph with Bazel-like caching.",
                epilog="Options also come from .buildgraphrc files (the workspace's, then ~/.buildgraphrc): "
                       "`buildgraph COMMAND --help` for each command's.")
    p.add_argument("--version", action="version", version=f"buildgraph {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    remote = argparse.ArgumentParser(add_help=False)
    r = remote.add_argument_group("remote cache (credentials: $BUILDGRAPH_REMOTE_HEADERS, a netrc file)")
    r.add_argument("--remote-cache", metavar="URL",
                   help="http(s)://host[:port][/prefix] (Bazel HTTP cache) or grpc(s)://host:port (REAPI); "
                        "default $BUILDGRAPH_REMOTE_CACHE")
    r.add_argument("--remote-read-only", action="store_true", help="use remote results, never upload")
    r.add_argument("--remote-instance-name", default="", help="REAPI instance name")
    r.add_argument("--remote-ca", metavar="FILE", help="CA certificates for https/grpcs")
    r.add_argument("--remote-timeout", type=_seconds, default=10.0, metavar="SECONDS", help="per request (default 10)")
    r.add_argument("--remote-retries", type=_count(0), default=2, help="retries of failed requests, with backoff (default 2)")
    r.add_argument("--remote-jobs", type=_count(1), default=8, help="parallel remote lookups and transfers (default 8)")
    b = sub.add_parser("build", parents=[common, remote], help="build targets (default: all nodes)")
    b.add_argument("targets", nargs="*", help="node (lib@cpu), target (all its variants) or target@value")
    b.add_argument("-j", "--jobs", type=_count(1, "one per CPU core"), default=0,
                   help="parallel slots, shared with nested make (default: one per CPU core)")
    b.add_argument("-k", "--keep-going", action="store_true", help="go on building what does not depend on a failure")
    b.add_argument("-s", "--subcommands", action="store_true",
                   help="print each action's commands and environment as it starts")
    b.add_argument("--sandbox-debug", action="store_true",
                   help="write an enter.sh into each failed action's kept sandbox: a shell inside it, as the "
                        "commands saw it")
    b.add_argument("--log-json", metavar="FILE", help="write one JSON event per node")
    b.add_argument("--profile", metavar="FILE",
                   help="write a Chrome trace (Perfetto): the build, each action and its phases, restored nodes")
    b.add_argument("--no-compile-cache", action="store_true",
                   help="compile every file again in cmake, make and autotools actions (no ccache)")
    b.add_argument("--max-size", type=_size, help="local cache size limit (default 10G); gc runs when exceeded")
    b.add_argument("--git-sha", help="the commit artifacts record (default $MXNET_SHA, $GIT_COMMIT, git rev-parse HEAD)")
    b.add_argument("--remote-executor", metavar="URL",
                   help="grpc(s)://host:port: run actions on a REAPI executor (BuildGrid with buildgraph workers); "
                        "when it cannot be reached, actions run locally")
    b.set_defaults(func=cmd_build)

    pu = sub.add_parser("publish", parents=[common, remote],
                        help="upload built artifacts' wheels to an index (never builds: results come from the caches)")
    pu.add_argument("targets", nargs="+", metavar="NODE", help="artifact nodes or targets (release: every variant)")
    pu.add_argument("--to", required=True, action="append", metavar="pypi:URL|maven:URL",
                    help="where: pypi:URL (an index's upload URL; credentials: $TWINE_USERNAME/$TWINE_PASSWORD, "
                         "~/.netrc or a keyring) or maven:URL (a repository; $MAVEN_USERNAME/$MAVEN_PASSWORD, "
                         "~/.netrc or a keyring; signing key: $BUILDGRAPH_GPG_KEY); repeatable")
    pu.add_argument("--index-url", metavar="URL", help="its simple index (default: URL/simple/)")
    pu.add_argument("--group", metavar="GROUP_ID", help="maven: the groupId (artifactId: the wheel name; "
                                                        "classifier: the variant)")
    pu.add_argument("--nightly", action="store_true",
                    help="publish as VERSION.devYYYYMMDDN (pypi: a PEP 440 dev release) or VERSION-SNAPSHOT (maven)")
    pu.add_argument("--nightly-date", metavar="YYYYMMDD", help="the nightly's date (default: today, UTC)")
    pu.add_argument("--prune-nightlies", action="store_true",
                    help="instead of uploading: delete all but the --keep newest nightlies of these artifacts' projects")
    pu.add_argument("--keep", type=_count(1), default=7, metavar="N", help="nightlies --prune-nightlies keeps (default 7)")
    pu.add_argument("--git-sha", help="the commit the artifacts were built for (as given to build)")
    pu.set_defaults(func=cmd_publish, restore_only=True)

    f = sub.add_parser("fetch", parents=[common], help="fetch the upstream sources targets need; with "
                                                       "--mirror DIR, store them there by digest")
    f.add_argument("targets", nargs="*")
    f.set_defaults(func=cmd_fetch)

    pl = sub.add_parser("plan", parents=[common], help="dry run: each node, its key, cached or why it must run; "
                                                       "downloads and installs nothing")
    pl.add_argument("targets", nargs="*")
    pl.add_argument("--fetch", action="store_true",
                    help="fetch missing toolchains to compute every key (default: a dry run downloads nothing)")
    pl.add_argument("--format", choices=("text", "json"), default="text",
                    help="json adds each node's remote action digest (SHA-256, as remote caches see it)")
    pl.set_defaults(func=cmd_plan)

    w = sub.add_parser("why", parents=[common], help="which inputs of NODE changed since its last build")
    w.add_argument("node")
    w.add_argument("--fetch", action="store_true", help="fetch a missing toolchain to compare its key's inputs")
    w.set_defaults(func=cmd_why)

    g = sub.add_parser("graph", parents=[common], help="print the configured graph")
    g.add_argument("targets", nargs="*")
    g.add_argument("--format", choices=("dot", "svg", "png", "json"), default="dot",
                   help="dot text (default); svg or png laid out by Graphviz; json for scripts")
    g.add_argument("-o", "--output", metavar="FILE", help="write the picture here (svg, png) instead of stdout")
    g.add_argument("--all-edges", action="store_true",
                   help="draw every dependency edge (default: those no longer path implies)")
    g.set_defaults(func=cmd_graph)

    q = sub.add_parser("query", parents=[common], help="dependencies or dependents of a node")
    q.add_argument("relation", choices=("deps", "rdeps"))
    q.add_argument("node")
    q.add_argument("--direct", action="store_true", help="only direct edges")
    q.set_defaults(func=cmd_query)

    c = sub.add_parser("cache", parents=[common], help="local cache: stats | gc | verify | clean")
    c.add_argument("action", choices=("stats", "gc", "verify", "clean"))
    c.add_argument("--all", action="store_true",
                   help="clean: also the fetched toolchains and sources, not only the build results")
    c.add_argument("--repair", action="store_true",
                   help="verify: quarantine damaged blobs and drop the action results naming them")
    c.add_argument("--max-size", type=_size, help="size to shrink to (gc) or the limit shown (stats)")
    c.set_defaults(func=cmd_cache)

    t = sub.add_parser("toolchain", help="pinned toolchains: list | fetch | verify")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("list", "name, version, provider, digest, hermetic, installed"),
                         ("fetch", "install into the toolchain store (default: those the targets use)"),
                         ("verify", "re-hash fetched toolchains and name any changed file")):
        ta = tsub.add_parser(action, parents=[common], help=text)
        ta.add_argument("names", nargs="*", help="toolchains (default: all declared)")
        if action == "fetch":
            ta.add_argument("--force", action="store_true", help="fetch again even if the store has it")
        ta.set_defaults(func=cmd_toolchain)

    v = sub.add_parser("verify", parents=[common], help="build again, perturbed, and compare outputs")
    v.add_argument("targets", nargs="*")
    v.add_argument("-j", "--jobs", type=_count(1, "one per CPU core"), default=0,
                   help="parallel slots (default: one per CPU core)")
    v.add_argument("--report-dir", help="keep diffoscope reports here (when diffoscope is installed)")
    v.set_defaults(func=cmd_verify)

    m = sub.add_parser("manifest", parents=[common], help="key, input and output digests of every node, as JSON")
    m.add_argument("targets", nargs="*")
    m.add_argument("-o", "--output", help="file to write (default: stdout)")
    m.set_defaults(func=cmd_manifest)

    d = sub.add_parser("diff", help="compare two manifests and name the root causes")
    d.add_argument("first")
    d.add_argument("second")
    d.set_defaults(func=cmd_diff)

    wk = sub.add_parser("worker", help="run actions for a REAPI executor (a Remote Workers API bot)")
    wk.add_argument("--server", required=True, help="grpc://host:port of the BuildGrid (bots service)")
    wk.add_argument("--instance-name", default="")
    wk.add_argument("--slots", type=_count(1, "one per CPU core"), default=0, help="CPU slots (jobserver) for each action (default: cores)")
    wk.add_argument("--cache-dir", help="the worker's local store (default CACHE_DIR/worker)")
    wk.add_argument("--toolchain-dir", help="where the worker fetches toolchains")
    wk.set_defaults(func=cmd_worker)

    au = sub.add_parser("audit", parents=[common],
                        help="symbol versions and libraries ELF files or wheels need; their true tags")
    au.add_argument("files", nargs="+", help="ELF files (audited as shipped together), or .whl files; "
                    "with --explain, nodes")
    au.add_argument("--explain", action="store_true",
                    help="audit nodes: an artifact as it would ship (its dependencies built if needed), any "
                         "other node's ELF outputs; each file's tags and origin, every symbol that breaks "
                         "the claim, and the tightest true tag")
    au.add_argument("--policy", help="report what keeps each file from this policy (e.g. manylinux_2_17)")
    au.set_defaults(func=cmd_audit)

    ar = sub.add_parser("artifact", help="push built artifacts to, or pull them from, an artifact repository")
    asub = ar.add_subparsers(dest="action", required=True, metavar="ACTION")
    ap = asub.add_parser("push", parents=[common], help="upload NODE's dist/ under <commit>/<os>/<variant>/<linking>/")
    ap.add_argument("node")
    ap.add_argument("--to", dest="url", required=True, help="a directory, http(s):// (WebDAV) or s3://bucket/prefix")
    ap.add_argument("--git-sha", help="refuse unless the artifact's .meta records this commit (the commit it is "
                                      "filed under always comes from the .meta)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="push an artifact built from a working tree with uncommitted changes")
    ap.add_argument("--remote-ca", metavar="FILE")
    ap.set_defaults(func=cmd_artifact)
    apl = asub.add_parser("pull", help="download and verify an artifact")
    apl.add_argument("--from", dest="url", required=True)
    apl.add_argument("--prefix", required=True, help="<commit>/<os>/<variant>/<linking>")
    apl.add_argument("--library", required=True, help="the library's file name (its .meta names the rest)")
    apl.add_argument("-o", "--output", required=True)
    apl.add_argument("--remote-ca", metavar="FILE")
    apl.set_defaults(func=cmd_artifact)

    dev = argparse.ArgumentParser(add_help=False)
    dev.add_argument("node", help="one node (target@variant), whose dependencies are built or restored first")
    dev.add_argument("--no-compile-cache", action="store_true", help="leave ccache out of the environment")
    en = sub.add_parser("env", parents=[common, remote, dev],
                        help="a node's build environment for a checkout: eval \"$(buildgraph env backend@cpu-dynamic)\"")
    en.add_argument("--format", choices=("sh", "json", "cmake-presets"), default="sh",
                    help="sh: export lines (default); json; cmake-presets: a CMakeUserPresets.json")
    en.set_defaults(func=cmd_env)
    sh = sub.add_parser("shell", parents=[common, remote, dev],
                        help="a shell (or -- COMMAND) in a node's build environment; writes the CMake preset "
                             "buildgraph-<node> into the project's CMakeUserPresets.json")
    sh.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                    help="run this instead of $SHELL")
    sh.set_defaults(func=cmd_shell)

    cl = sub.add_parser("clean", parents=[common], help="remove the workspace's outputs and state")
    cl.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)   # gone: says where it went
    cl.set_defaults(func=cmd_clean)

    sd = sub.add_parser("shutdown", help="stop this user's resident build servers (they also stop when idle)")
    sd.set_defaults(func=cmd_shutdown)

    i = sub.add_parser("info", parents=[common, remote],
                       help="where things are: workspace, cache, toolchain store, outputs, sandbox, remote")
    i.add_argument("key", nargs="?", help="print only this item's value")
    i.set_defaults(func=cmd_info)
    _describe(sub)
    return p


def _describe(sub, prefix: str = "") -> None:
    """Each command's --help: its one-line help as the description, and its examples
    (EXAMPLES by the command's words: `toolchain fetch` is not `fetch`)."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        words = f"{prefix}{name}"
        command.description = command.description or helps.get(name)
        if words in EXAMPLES:
            command.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[words])
            command.formatter_class = argparse.RawDescriptionHelpFormatter
        nested = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        if nested is not None:
            _describe(nested, f"{words} ")


def _version() -> str:
    from buildgraph import __version__

    return f"{__version__} (Python {sys.version.split()[0]})"


def _stop_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled) stops the build like Ctrl-C: children stopped, results kept."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A build allocates a few objects per node and keeps them all: at Python's default
    # (a young collection every 700 allocations) a restore of 10,000 nodes ran 670
    # collections, 0.3 s. Every 50,000: 8 collections, 0.1 s. Few of our objects form cycles.
    gc.set_threshold(50_000, 20, 100)
    p = parser()
    try:
        argv = _with_rc(p, argv)
        args, unknown = p.parse_known_args(argv)
        if unknown:
            words, command = _subcommand(p, argv)
            option = next((u for u in unknown if u.startswith("-")), unknown[0])
            guess = suggest_option(option, command) if option.startswith("-") else None
            command.error(f"unrecognized argument: {option}" + (f"; did you mean {guess}?" if guess else ""))
    except SystemExit as exc:  # argparse: --help exits 0, bad usage exits 2
        return int(exc.code or 0)
    except BuildgraphError as exc:   # an rc file
        print(f"buildgraph: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _stop_on_sigterm()
    try:
        return args.func(args)
    except BuildgraphError as exc:
        print(f"buildgraph: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("buildgraph: interrupted; finished results are kept in the cache", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:   # the machine said no: a permission, a full disk, a read-only directory
        from buildgraph.fsutil import os_error_text
        print(f"buildgraph: error: {os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        import sqlite3

        if not isinstance(exc, sqlite3.Error):
            raise
        print(f"buildgraph: error: the cache database in {_cache_dir(args)} failed: {exc} "
              "(a full disk or a read-only cache directory?); the cache stays consistent", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
