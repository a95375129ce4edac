"""`make bench` (issue 6): ingest and worker throughput, latency, zero loss and memory, in one run.

Starts its own durable redis-server, the three servers (A raw ASGI, B naive, C ours) and, per
phase, one worker. Rounds of A, B, C, D, E (interleaved, `reps` times), in the middle round C and D
again with tracing on (Ct, Dt: exporting to a sink that discards, benchmarks/otlp_sink.py), then P
(A, B and C with the server and wrk pinned to a core each, benchmarks/pinned.py), then F, then H
(the event history over `history_events` retained events, benchmarks/history.py). Prints a table with
PASS/FAIL per target and writes bench-results.json. Exits 0 whatever the speed, 1 if an event was
lost or run twice.

    python -m benchmarks.run [--smoke] [--out FILE] [--work-dir DIR] [--loadgen auto|wrk|httpx]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from benchmarks import history, phases, pinned, report
from benchmarks.bodies import lead_stories, signed
from benchmarks.loader import Loader
from benchmarks.otlp_sink import OtlpSink
from benchmarks.plan import FULL, SMOKE, Plan
from benchmarks.stack import ROOT, Proc, start_redis, start_server
from benchmarks.wrk_load import find_wrk

DEFAULT_WORK = ROOT / "benchmarks" / ".work"
_BUSY_SHARE = 0.2  # CPU share used by others before the start, above which the numbers are suspect


def _say(message: str) -> None:
    print(message, flush=True)


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.0f} s"


def _busy_share(seconds: float = 0.5) -> float:
    """The share of all CPUs that was not idle over `seconds` (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text(encoding="utf-8").split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _loader(choice: str, plan: Plan, work: Path, *, smoke: bool) -> Loader:
    wrk = None if choice == "httpx" else find_wrk(install=not smoke)
    if choice == "wrk" and wrk is None:
        raise SystemExit("bench: wrk is not installed and could not be: apt-get install wrk")
    if wrk is None and not smoke:
        _say("bench: no wrk (apt-get install wrk); httpx generates the load, so A/B/C are client-bound")
    return Loader(wrk, work, threads=plan.threads, connections=plan.connections)


def _rounds(bench: phases.Bench, results: report.Results, started: float) -> None:
    plan = bench.plan
    for rep in range(plan.reps):
        round_started = time.monotonic()
        results.limit.append(phases.ingest(bench, "raw", "load"))
        _say(f"  A {rep + 1}/{plan.reps}: {results.limit[-1].rps:,.0f} req/s")
        results.naive.append(phases.ingest(bench, "naive", "load"))
        _say(f"  B {rep + 1}/{plan.reps}: {results.naive[-1].rps:,.0f} req/s")
        phase_started = time.monotonic()
        ours = phases.ours(bench, rep)
        results.ours.append(ours)
        _say(f"  C {rep + 1}/{plan.reps}: {ours.load.rps:,.0f} req/s ({ours.tally.stored:,} events)")
        _say(
            f"  D {rep + 1}/{plan.reps}: {ours.worker.rate:,.0f} events/s ({_since(phase_started)}, C and D)"
        )
        if rep == plan.reps // 2:
            _traced(bench, results, ours, rep)
        results.ours2.append(phases.ours_2proc(bench, rep))
        two = results.ours2[-1]
        _say(
            f"  C2 {rep + 1}/{plan.reps}: {two.load.rps:,.0f} req/s ({two.stored:,} events, 2 API processes)"
        )
        if two.stored < two.load.accepted:
            results.notes.append(
                f"round {rep + 1}: C2 answered {two.load.accepted:,} 202s for {two.stored:,} stored"
            )
        phase_started = time.monotonic()
        results.limited.append(phases.limited(bench, rep, two))
        rate = results.limited[-1].worker.rate
        _say(f"  L {rep + 1}/{plan.reps}: {rate:,.0f} events/s limited ({_since(phase_started)})")
        phase_started = time.monotonic()
        results.ordered.append(phases.ordered(bench, rep))
        rate = results.ordered[-1].worker.rate
        _say(f"  O {rep + 1}/{plan.reps}: {rate:,.0f} events/s ordered ({_since(phase_started)})")
        phase_started = time.monotonic()
        results.bare.append(phases.bare(bench, rep))
        _say(f"  E {rep + 1}/{plan.reps}: {results.bare[-1].rate:,.0f} events/s ({_since(phase_started)})")
        for load in (results.limit[-1], results.naive[-1]):
            if load.exhausted:
                results.notes.append(f"round {rep + 1}: a load run used up its bodies before its end")
        if ours.tally.acknowledged != plan.events:
            got = ours.tally.acknowledged
            results.notes.append(f"round {rep + 1}: C got {got:,} of {plan.events:,} answers 202")
        drains = (ours.worker, results.bare[-1], results.ordered[-1].worker, results.limited[-1].worker)
        if not all(drain.complete for drain in drains):
            results.notes.append(f"round {rep + 1}: a drain did not finish in {plan.drain_timeout_s:g}s")
        round_s = time.monotonic() - round_started
        reserve_s = plan.latency_s + 15 + _pinned_s(plan)
        if rep + 1 < plan.reps and time.monotonic() - started + round_s + reserve_s > plan.budget_s:
            results.notes.append(f"only {rep + 1} of {plan.reps} rounds: the next would pass the time budget")
            return


def _pinned_s(plan: Plan) -> float:
    """About how long P takes: A, B and C, `ingest_s` each plus wrk's start, per round."""
    return plan.pinned_reps * 3 * (plan.ingest_s + 1)


def _pinned(bench: phases.Bench, results: report.Results, loader: Loader | None) -> None:
    """P, when wrk and two CPUs are there to pin to; else a note that says why not."""
    if loader is None:
        results.notes.append("no pinned variant (P): it needs wrk and CPUs 0 and 1")
        return
    plan = bench.plan
    _say(f"  P: {plan.pinned_reps} rounds of A, B, C, the server on CPU 0, wrk -t1 -c32 on CPU 1")
    results.pinned = pinned.rounds(bench, loader, plan.pinned_reps)
    for rep, (a, b, c) in enumerate(
        zip(results.pinned.limit, results.pinned.naive, results.pinned.ours, strict=True)
    ):
        _say(f"  P {rep + 1}/{plan.pinned_reps}: A {a.rps:,.0f}, B {b.rps:,.0f}, C {c.rps:,.0f} req/s")


def _traced(bench: phases.Bench, results: report.Results, plain: phases.OursRound, rep: int) -> None:
    """Ct and Dt: this round's C and D again, with tracing on; and what reached the sink."""
    assert bench.sink is not None
    bench.sink.take()  # nothing is traced before; start the count from here
    phase_started = time.monotonic()
    traced = phases.ours(bench, rep, traced=True)
    made = traced.load.accepted + traced.tally.runs
    # The worker exported its last spans as it stopped; the API exports its last batch within
    # OTEL_BSP_SCHEDULE_DELAY (5 s by default) of the load's end.
    phases.wait_until(lambda: bench.sink is not None and bench.sink.spans() >= made, 10, interval_s=0.5)
    results.traced.append(report.TracedRound(plain=plain, traced=traced, exported=bench.sink.take()))
    _say(f"  Ct: {traced.load.rps:,.0f} req/s, tracing on (C: {plain.load.rps:,.0f})")
    took = _since(phase_started)
    _say(
        f"  Dt: {traced.worker.rate:,.0f} events/s, tracing on (D: {plain.worker.rate:,.0f}; {took} for both)"
    )


def measure(plan: Plan, work: Path, loadgen: str, *, smoke: bool) -> report.Results:
    """Start everything, run the rounds and F, stop everything; the per-repetition results."""
    started = time.monotonic()
    loader = _loader(loadgen, plan, work, smoke=smoke)
    results = report.Results(mode="smoke" if smoke else "full", loadgen=loader.name)
    busy = _busy_share()
    if busy > _BUSY_SHARE:
        results.notes.append(f"something else used {busy:.0%} of the CPUs as the run began: noisy numbers")
    # The load set twice: once per wrk thread layout (the main rounds', and P's one thread).
    bodies = 2 * plan.load_bodies + plan.reps * (plan.events + 4 * plan.ordered_leads) + plan.history_events
    _say(f"bench: preparing {bodies:,} signed bodies in {work}")
    loader.prepare("load", signed("load", plan.load_bodies))
    for rep in range(plan.reps):
        loader.prepare(f"c{rep}", signed(f"c{rep}", plan.events))
        loader.prepare(f"o{rep}", lead_stories(f"o{rep}", plan.ordered_leads))
    loader.prepare(history.SET_NAME, signed(history.SET_NAME, plan.history_events))
    pinned_loader = None
    if loader.wrk and pinned.available():
        pinned_loader = pinned.loader_for(loader.wrk, work)
        pinned_loader.prepare(pinned.SET_NAME, signed(pinned.SET_NAME, plan.load_bodies))
    redis = start_redis(work / "redis")
    servers: dict[str, tuple[Proc, int]] = {}
    sink = OtlpSink()
    try:
        for kind in ("raw", "naive", "ours", "ours2"):
            servers[kind] = start_server(kind, redis.url, work)
        servers["ours-traced"] = start_server(
            "ours-traced", redis.url, work, OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint
        )
        with redis.client() as client:
            bench = phases.Bench(plan, work, client, redis.url, loader, servers, sink)
            rounds = "A, B, C, D, C2, L, O, E (Ct and Dt once)"
            _say(f"bench: {plan.reps} rounds of {rounds}; then P, F, H ({loader.name}, redis {redis.url})")
            _rounds(bench, results, started)
            _pinned(bench, results, pinned_loader)
            _say(f"  F: {plan.latency_rate:g} events/s for {plan.latency_s:g}s")
            results.latency = phases.latency(bench)
            results.api_rss_mb = servers["ours"][0].rss_mb()
            _say(f"  H: {plan.history_events:,} events in, then {plan.history_queries} of each query")
            results.history = history.history(bench)
    finally:
        for proc, _port in servers.values():
            proc.stop()
        sink.stop()
        redis.stop()
        loader.discard()
        if pinned_loader is not None:
            pinned_loader.discard()
        shutil.rmtree(work / "redis" / "appendonlydir", ignore_errors=True)
    results.wall_s = time.monotonic() - started
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; 1 only when an event was lost or run twice."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--work-dir", type=Path, default=None, help=f"default {DEFAULT_WORK} (emptied)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "httpx"], default="auto")
    args = parser.parse_args(argv)
    if args.work_dir is None:
        shutil.rmtree(DEFAULT_WORK, ignore_errors=True)
        args.work_dir = DEFAULT_WORK
    args.work_dir.mkdir(parents=True, exist_ok=True)
    plan = SMOKE if args.smoke else FULL
    summary = report.summarize(measure(plan, args.work_dir.resolve(), args.loadgen, smoke=args.smoke))
    _say("")
    _say(report.table(summary))
    report.write(summary, args.out)
    _say(f"wrote {args.out}")
    return 1 if summary["lost"] or summary["duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
