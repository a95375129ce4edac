"""`make bench-instructions`: the API's CPU instructions per request, a figure that load does not move.

On a shared 2-core machine, throughput and CPU time per request drift by 10-30% within minutes, which
hides a change of a few percent. valgrind's callgrind counts instructions instead: the same code and
inputs give the same count, whatever else runs. This runs the server (C: `oa-webhooks api`, as compose
runs it; A or B with `--kind`) under callgrind against its own redis-server, has wrk send `--requests`
unique signed events once each, one at a time, and stops it; then the same with no request at all. The
difference, divided by the requests, is printed: instructions per request.

One connection, because the count must not depend on timing: under load, how many requests share an
accept batch (one Redis round trip) depends on how fast Redis answers, and so would the count. With
one request at a time every batch holds one request, the costliest case per request. Under callgrind
SHA-256 also takes the CPU's generic path. Compare the figure between two versions of the code, not
with `make bench`'s microseconds. About 2 minutes; needs valgrind (apt-get install valgrind).

    python -m benchmarks.instructions [--requests N] [--kind ours|raw|naive]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.bodies import signed
from benchmarks.loader import Loader
from benchmarks.otlp_sink import OtlpSink
from benchmarks.stack import Proc, service_env, start_redis, wait_for_port
from benchmarks.wrk_load import find_wrk
from service.api.ingest import PATH
from tests.processes import compose_command
from tests.redis_server import free_port

# --tracing: every request sampled, then the sampler docs/tracing.md suggests for a busy receiver.
_TRACED = (
    ("tracing on", {}),
    (
        "tracing on, 1 in 10 sampled",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
)
_COLLECTED = re.compile(r"Collected : ([\d,]+)")
# Start-up under callgrind takes about 30 s on the development machine.
_START_S = 300


def _argv(kind: str, out: Path) -> list[str]:
    server = compose_command("api") if kind == "ours" else [sys.executable, "-m", "benchmarks.serve", kind]
    # --trace-children: the console script may start Python through a launcher.
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/%p.out",
        *server,
    ]


def instructions(
    kind: str, requests: int, work: Path, wrk: str, *, otel: dict[str, str] | None = None
) -> int:
    """Every instruction the server ran from start to exit, with `requests` events posted meanwhile.

    `otel`: OTEL_* variables that turn tracing on; the export at exit of the spans still waiting is
    counted too.
    """
    work.mkdir(parents=True)
    redis = start_redis(work / "redis")
    try:
        loader = Loader(wrk, work, threads=1, connections=1)
        if requests:
            loader.prepare("events", signed("events", requests))
        port = free_port()
        env = service_env(redis.url, OA_PORT=str(port), OA_ADMIN_PORT=str(free_port()), **(otel or {}))
        server = Proc("server", _argv(kind, work), env, work).start()
        try:
            wait_for_port(port, server, timeout_s=_START_S)
            if requests:
                load = loader.run(f"http://127.0.0.1:{port}{PATH}", "events")
                expected = 202
                if load.statuses.get(expected, 0) != requests:
                    raise RuntimeError(
                        f"{kind}: expected {requests} answers {expected}, got {dict(load.statuses)}"
                    )
        finally:
            server.stop(timeout_s=_START_S)
    finally:
        redis.stop()
    counts = _COLLECTED.findall((work / "server.log").read_text(encoding="utf-8", errors="replace"))
    if not counts:
        raise RuntimeError(f"callgrind reported nothing; see {work / 'server.log'}")
    return sum(int(count.replace(",", "")) for count in counts)


def main(argv: list[str] | None = None) -> int:
    """Print the instructions per request of one server."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--kind", choices=["ours", "raw", "naive"], default="ours")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="ours only: then with tracing on, every request sampled, exporting to a sink that discards",
    )
    parser.add_argument(
        "--sampled", action="store_true", help="with --tracing: then with 1 request in 10 sampled"
    )
    args = parser.parse_args(argv)
    wrk = find_wrk(install=True)
    if wrk is None or shutil.which("valgrind") is None:
        raise SystemExit("bench-instructions needs wrk and valgrind: apt-get install wrk valgrind")
    if args.tracing and args.kind != "ours":
        raise SystemExit("--tracing: only our server traces (--kind ours)")
    with tempfile.TemporaryDirectory(prefix="oa-instructions-") as tmp:
        off = _per_request(args.kind, args.requests, Path(tmp) / "off", wrk)
        print(f"{args.kind}: {off:,.0f} instructions per request ({args.requests:,} requests)")
        if args.tracing:
            sink = OtlpSink()
            try:
                for label, sampler in _TRACED[: 2 if args.sampled else 1]:
                    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, **sampler}
                    on = _per_request(args.kind, args.requests, Path(tmp) / label, wrk, otel=otel)
                    spans = sink.take()[2]
                    ratio = f"{on / off:.2f} x off"
                    print(
                        f"{args.kind}, {label}: {on:,.0f} instructions per request, {ratio} ({spans:,} spans)"
                    )
            finally:
                sink.stop()
    return 0


def _per_request(
    kind: str, requests: int, work: Path, wrk: str, *, otel: dict[str, str] | None = None
) -> float:
    """Instructions per request: a run with `requests` events, less one with none (start-up and exit)."""
    idle = instructions(kind, 0, work / "idle", wrk, otel=otel)
    loaded = instructions(kind, requests, work / "loaded", wrk, otel=otel)
    return (loaded - idle) / requests


if __name__ == "__main__":
    sys.exit(main())
