"""The scheduler: walk the DAG in parallel, in critical-path order.

`Scheduler.run` is the one long loop of buildgraph. Before it, the nodes the no-op record
proves up to date (Engine.settled) are done; the loop walks the rest, and each pass does
four things:
  1. check ready nodes (all dependencies done) inline: compute the action key and
     ask the engine whether a stored result can be reused — cheap local work, so
     a no-op build of 10,000 nodes never touches a thread; a local miss goes to a
     pool of remote-cache lookups (when a remote is configured), whose answers
     come back as events: a hit is restored, a miss joins the nodes to run. Once
     something can run, a pass checks at most CHECK_BATCH: the first actions of a cold
     build start after a few checks, not after all of its leaves (5,000 leaves took
     ~0.12 s here with the cores idle), which are checked while those run;
  2. start nodes that must run, highest remaining critical path first, each as
     soon as the jobserver yields `weight` tokens (the same tokens nested make and
     cmake builds draw from, so all of them together stay within -j). `weight` is
     admission: a heavy node starts only when that many slots are free at once (it holds
     none while it waits, so running makes use them meanwhile); it then keeps
     one (its make's implicit slot) and hands the rest back, for its own make to draw
     on as fast as it can use them; a node whose
     key is already queued or running waits for that one and is then restored
     from its result instead of running the same action twice;
  3. store the results of the actions that finished since the last pass and make their
     dependents ready — after step 2 has started the next actions on the tokens they
     released, so the cores run actions while this thread stores;
  4. wait for a running action to finish and release its tokens; while nodes are left to
     check, only take what has finished already.
A failure stops new starts (unless --keep-going) but lets running actions finish
and keeps every result already recorded. Ctrl-C stops the children and returns;
finished results are in the cache already.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from dataclasses import dataclass

from buildgraph.action import Action, ActionResult
from buildgraph.engine import Engine, Status
from buildgraph.graph import BuildGraph
from buildgraph.sandbox import RunOutcome
from buildgraph.ui import subcommand_lines

CHECK_BATCH = 8   # nodes one pass checks once there is an action to start


@dataclass
class NodeOutcome:
    name: str
    status: Status
    key: str | None = None
    duration: float = 0.0
    start: float = 0.0          # seconds since the build began (ran nodes)
    error: str | None = None
    log: str = ""
    lane: int = 0               # which of the -j lanes it ran on (for traces)
    command: str | None = None  # the command that failed, when known
    remote: bool = False        # restored from the remote cache
    phases: tuple = ()          # (name, start, seconds) inside a ran action: stage, run, collect, store


class Interrupted(Exception):
    def __init__(self, outcomes):
        self.outcomes = outcomes


class Scheduler:
    def __init__(self, graph: BuildGraph, engine: Engine, jobs: int, jobserver, reporter,
                 keep_going: bool = False, subcommands: bool = False):
        self.graph, self.engine, self.jobs = graph, engine, jobs
        self.jobserver, self.reporter, self.keep_going = jobserver, reporter, keep_going
        self.subcommands = subcommands

    def run(self, selected: list[str]) -> dict[str, NodeOutcome]:
        graph, engine = self.graph, self.engine
        self.reporter.begin(len(selected), self.jobs)
        outcomes: dict[str, NodeOutcome] = {}
        # What the no-op record proves up to date is done before the walk: only the nodes
        # downstream of a change are walked (and their critical paths computed).
        for name, (key, output_digest) in engine.settled(selected).items():
            engine.outputs[name] = output_digest
            outcomes[name] = NodeOutcome(name, Status.UP_TO_DATE, key)
            self.reporter.finished(outcomes[name])
        if outcomes:
            selected = [n for n in selected if n not in outcomes]
        chosen = set(selected)
        durations = {n: r.duration for n, r in engine.state.nodes.items() if r.duration > 0}
        priority: dict[str, float] = {}
        waiting = {n: sum(1 for _, d in graph.nodes[n].deps if d in chosen) for n in selected}
        ready: list = []
        to_run: list[tuple[float, str, Action]] = []
        same_key: dict[str, list[str]] = {}   # key queued or running -> nodes waiting for it
        events: queue.Queue = queue.Queue()
        running: set[str] = set()   # nodes whose action a worker thread has
        work_queue: queue.SimpleQueue = queue.SimpleQueue()
        workers: list[threading.Thread] = []
        lookups = 0
        pool = None
        if engine.remote is not None:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(max_workers=max(1, engine.remote.options.jobs),
                                      thread_name_prefix="bg-lookup")

        def lookup(name: str, action: Action) -> None:
            try:
                result = engine.fetch_remote(action)
            except Exception:  # a broken lookup is a miss, never a failed build
                result = None
            events.put(("lookup", name, action, result))
        free_lanes = list(range(self.jobs))
        stopping = False
        t0 = time.monotonic()

        def done(name: str, outcome: NodeOutcome, output_digest: str | None) -> None:
            if not outcome.start:   # decided now (up to date, restored): when, for the trace
                outcome.start = time.monotonic() - t0
            outcomes[name] = outcome
            self.reporter.finished(outcome)
            if output_digest is not None:
                engine.outputs[name] = output_digest
                for r in graph.rdeps[name]:
                    if r in chosen:
                        waiting[r] -= 1
                        if waiting[r] == 0:
                            heapq.heappush(ready, (-priority[r], r))
            else:
                skip = list(graph.rdeps[name])
                while skip:
                    r = skip.pop()
                    if r in chosen and r not in outcomes:
                        outcomes[r] = NodeOutcome(r, Status.SKIPPED, error=f"{name} failed",
                                                  start=time.monotonic() - t0)
                        self.reporter.finished(outcomes[r])
                        skip.extend(graph.rdeps[r])

        def work(name: str, action: Action, deps: dict[str, ActionResult], tools, tokens: bytes, lane: int):
            try:
                outcome = (engine.executor or engine.sandbox).run(action, deps, tools)
            except Exception as exc:  # the tool broke, not the action: report it as a failure
                outcome = RunOutcome(None, f"internal error: {exc!r}", "", 0.0)
            events.put(("ran", name, action, tokens, lane, outcome))

        def serve() -> None:
            while (job := work_queue.get()) is not None:
                work(*job)

        def finish(name: str, action: Action, lane: int, outcome: RunOutcome) -> None:
            """Store a finished action's result, restore it to out/ and make its dependents
            ready; or report its failure."""
            nonlocal stopping
            for waiter in same_key.pop(action.key, []):   # check again: a hit now, or run
                heapq.heappush(ready, (-priority[waiter], waiter))
            phases = [(p, began - t0, seconds) for p, began, seconds in outcome.phases]
            start = phases[0][1] if phases else time.monotonic() - t0 - outcome.duration
            if outcome.result is not None:
                if outcome.note:
                    engine.warn(f"{name}: {outcome.note}")
                storing = time.monotonic()
                result = engine.keep_first(graph.nodes[name], action, outcome.result)
                if not engine.adopt(graph.nodes[name], action.key, result, action):
                    done(name, NodeOutcome(name, Status.FAILED, action.key, outcome.duration, start,
                                           error="its outputs could not be restored", lane=lane), None)
                    stopping = stopping or not self.keep_going
                    return
                if engine.remote is not None and result is outcome.result:
                    engine.remote.upload(action, result)
                phases.append(("store", storing - t0, time.monotonic() - storing))
                done(name, NodeOutcome(name, Status.RAN, action.key, outcome.duration, start,
                                       log=outcome.log, lane=lane, phases=tuple(phases)), result.output_digest)
            else:
                error, log, command = engine.describe_failure(graph.nodes[name], action, outcome)
                engine.write_log(name, log)
                status = Status.CANCELLED if engine.sandbox.cancelled else Status.FAILED
                done(name, NodeOutcome(name, status, action.key, outcome.duration, start,
                                       error=error, log=log, lane=lane, command=command,
                                       phases=tuple(phases)), None)
                if not self.keep_going:
                    stopping = True

        # Actions that succeeded, their tokens released: their results are stored after the
        # next actions have started, so that a core does not idle while this thread stores.
        finishing: list[tuple[str, Action, int, RunOutcome]] = []
        looking: set[str] = set()         # nodes whose remote lookup is out
        looking_first: list = []          # (-priority, node) of those; stale entries dropped on peek

        def longest_lookup() -> float:
            while looking_first and looking_first[0][1] not in looking:
                heapq.heappop(looking_first)
            return -looking_first[0][0] if looking_first else -1.0
        try:
            if engine.remote is not None:
                # A fresh machine has recorded nothing: what others recorded under the same
                # remote (the node's last run, whatever its key) orders the build before any
                # estimate. Inside the try: Ctrl-C here aborts the remote like anywhere else.
                durations.update(engine.remote.durations([n for n in selected if n not in durations]))
            priority.update(graph.critical_path(selected, durations)[0])
            ready.extend((-priority[n], n) for n in selected if waiting[n] == 0)
            heapq.heapify(ready)
            while True:
                checked = 0
                while ready and not stopping:                                  # 1. check
                    if to_run and checked >= CHECK_BATCH:
                        break   # start what is found: the rest is checked while it runs
                    checked += 1
                    _, name = heapq.heappop(ready)
                    node = graph.nodes[name]
                    reuse = engine.unchanged(node)
                    if reuse is not None:   # its inputs are as its last build's: no key to compute
                        done(name, NodeOutcome(name, reuse.status, engine.state.nodes[name].key), reuse.output_digest)
                        continue
                    action = engine.action_for(node, {d: engine.outputs[d] for _, d in node.deps})
                    reuse = engine.check(node, action)
                    if reuse is not None:
                        done(name, NodeOutcome(name, reuse.status, action.key), reuse.output_digest)
                    elif action.key in same_key:
                        same_key[action.key].append(name)
                    elif pool is not None and engine.remote.healthy:
                        same_key[action.key] = []
                        lookups += 1
                        looking.add(name)
                        heapq.heappush(looking_first, (-priority[name], name))
                        pool.submit(lookup, name, action)
                    else:
                        same_key[action.key] = []
                        heapq.heappush(to_run, (-priority[name], name, action))
                while to_run and not stopping:                                 # 2. start
                    _, name, action = to_run[0]
                    if longest_lookup() > priority[name]:
                        break   # a longer chain's lookup is still out (milliseconds): its miss goes first
                    need = min(action.weight, self.jobs)
                    taken = self.jobserver.try_acquire(need)
                    if len(taken) < need:
                        # Too few free: put them back at once. Holding them until enough
                        # were free would idle a core a running make could use.
                        self.jobserver.release(taken)
                        break
                    heapq.heappop(to_run)
                    tokens, extra = taken[:1], taken[1:]
                    self.jobserver.release(extra)  # admitted: extra slots go back to the pool its make draws on
                    node = graph.nodes[name]
                    wanted = dict(action.deps)   # the dependency outputs its key names, and no others
                    deps = {d: engine.result_of(dn, engine.state.nodes[dn].key, wanted[d]) for d, dn in node.deps}
                    lane = free_lanes.pop(0) if free_lanes else 0
                    self.reporter.started(name)
                    if self.subcommands:
                        self.reporter.say(subcommand_lines(name, action, engine.sandbox_mode))
                    running.add(name)
                    if len(running) > len(workers):   # as many threads as actions running at once
                        workers.append(threading.Thread(target=serve, name="bg-action", daemon=True))
                        workers[-1].start()
                    work_queue.put((name, action, deps, engine.tools_for(node), tokens, lane))
                if finishing:                                                  # 3. finish
                    while finishing:
                        finish(*finishing.pop(0))
                    continue
                if not running and not lookups and (stopping or (not ready and not to_run)):
                    break
                self.reporter.idle()   # nothing printed waits while the build does
                try:                                                           # 4. wait
                    if ready and not stopping:   # more to check: only what has already happened
                        event = events.get_nowait()
                    else:
                        event = events.get(timeout=0.05 if to_run else None)
                except queue.Empty:
                    continue
                if event[0] == "lookup":
                    _, name, action, result = event
                    lookups -= 1
                    looking.discard(name)
                    if result is not None and engine.adopt(graph.nodes[name], action.key, result, action):
                        for waiter in same_key.pop(action.key, []):
                            heapq.heappush(ready, (-priority[waiter], waiter))
                        done(name, NodeOutcome(name, Status.CACHED, action.key, remote=True), result.output_digest)
                    else:
                        heapq.heappush(to_run, (-priority[name], name, action))
                    continue
                _, name, action, tokens, lane, outcome = event
                running.discard(name)
                self.jobserver.release(tokens)
                free_lanes.append(lane)
                if outcome.result is None:   # a failure stops new starts at once
                    finish(name, action, lane, outcome)
                else:
                    finishing.append((name, action, lane, outcome))
        except KeyboardInterrupt:
            if engine.remote is not None:
                engine.remote.abort()   # lookups stuck on a slow remote end now
            engine.sandbox.cancel_all()
            for _ in workers:
                work_queue.put(None)
            for thread in workers:
                thread.join(timeout=5)
            while not events.empty():  # keep what finished before the interrupt
                event = events.get()
                if event[0] != "ran":
                    continue
                _, name, action, tokens, lane, outcome = event
                self.jobserver.release(tokens)
                finishing.append((name, action, lane, outcome))
            for name, action, lane, outcome in finishing:
                if outcome.result is not None:
                    kept = engine.keep_first(graph.nodes[name], action, outcome.result)
                    engine.record(name, action.key, kept, action)
                    outcomes[name] = NodeOutcome(name, Status.RAN, action.key, outcome.duration)
            raise Interrupted(outcomes) from None
        finally:
            for _ in workers:   # no-ops after an interrupt's
                work_queue.put(None)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)   # each lookup is bounded by its deadline
        return outcomes
