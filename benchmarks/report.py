"""Medians, the issue's targets with PASS/FAIL, the printed table and bench-results.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.measures import median, percentile

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from benchmarks.history import HistoryRun
    from benchmarks.measures import LoadResult
    from benchmarks.phases import DrainRound, LatencyRun, OursRound, TwoProcessRound, WorkerRun
    from benchmarks.pinned import PinnedRun


@dataclass
class TracedRound:
    """Ct and Dt, with the same round's C and D; `exported`: (requests, bytes, spans) at the sink."""

    plain: OursRound
    traced: OursRound
    exported: tuple[int, int, int]

    @property
    def spans_made(self) -> int:
        """One span per accepted request (Ct) and per handler run (Dt)."""
        return self.traced.load.accepted + self.traced.tally.runs


@dataclass
class Results:
    """Everything one run measured, per repetition."""

    mode: str
    loadgen: str
    limit: list[LoadResult] = field(default_factory=list)
    naive: list[LoadResult] = field(default_factory=list)
    ours: list[OursRound] = field(default_factory=list)
    ordered: list[DrainRound] = field(default_factory=list)
    limited: list[DrainRound] = field(default_factory=list)
    ours2: list[TwoProcessRound] = field(default_factory=list)
    bare: list[WorkerRun] = field(default_factory=list)
    traced: list[TracedRound] = field(default_factory=list)
    latency: LatencyRun | None = None
    pinned: PinnedRun | None = None
    history: HistoryRun | None = None
    api_rss_mb: float = math.nan
    wall_s: float = math.nan
    notes: list[str] = field(default_factory=list)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _rps(load: LoadResult) -> float:
    return load.accepted / load.duration_s if load.duration_s else math.nan


def summarize(r: Results) -> dict[str, Any]:
    """The medians under the issue's key names, with the per-repetition values beside them."""
    limit = [_rps(x) for x in r.limit]
    naive = [_rps(x) for x in r.naive]
    ours = [_rps(x.load) for x in r.ours]
    ours2 = [_rps(x.load) for x in r.ours2]
    worker = [x.worker.rate for x in r.ours]
    ordered = [x.worker.rate for x in r.ordered]
    limited = [x.worker.rate for x in r.limited]
    bare = [x.rate for x in r.bare]
    tallies = [x.tally for x in r.ours + r.ordered + r.limited + [t.traced for t in r.traced]]
    tallies += [r.latency.tally] if r.latency else []
    ct = [_rps(t.traced.load) for t in r.traced]
    dt = [t.traced.worker.rate for t in r.traced]
    # Against the same round's C and D: this machine drifts by 10-30% over minutes.
    ct_c = [_ratio(_rps(t.traced.load), _rps(t.plain.load)) for t in r.traced]
    dt_d = [_ratio(t.traced.worker.rate, t.plain.worker.rate) for t in r.traced]
    workers_rss = [x.worker.rss_mb for x in r.ours] + ([r.latency.worker.rss_mb] if r.latency else [])
    f_202 = r.latency.from_202_ms if r.latency else []
    f_send = r.latency.from_send_ms if r.latency else []
    out: dict[str, Any] = {
        "ingest_limit_rps": median(limit),
        "ingest_naive_rps": median(naive),
        "ingest_rps": median(ours),
        "ingest_rps_2proc": median(ours2),
        "worker_events_per_s": median(worker),
        "worker_ordered_events_per_s": median(ordered),
        "worker_limited_events_per_s": median(limited),
        "worker_bare_arq_per_s": median(bare),
        "ingest_rps_traced": median(ct),
        "worker_events_per_s_traced": median(dt),
        "ratio_Ct_C": median(ct_c),
        "ratio_Dt_D": median(dt_d),
        "latency_p50_ms": percentile(f_202, 50),
        "latency_p99_ms": percentile(f_202, 99),
        "lost": sum(t.lost for t in tallies),
        "duplicated": sum(t.duplicated for t in tallies),
        "api_rss_mb": r.api_rss_mb,
        "worker_rss_mb": max([x for x in workers_rss if not math.isnan(x)], default=math.nan),
        "redis_bytes_per_event": median(x.retained_bytes_per_event for x in r.ours),
        "history_events": r.history.events if r.history else 0,
        "history_list_p99_ms": percentile(r.history.list_ms, 99) if r.history else math.nan,
        "history_lead_p99_ms": percentile(r.history.lead_ms, 99) if r.history else math.nan,
    }
    out |= _pinned(r)
    out["ratio_C_A"] = _ratio(out["ingest_rps"], out["ingest_limit_rps"])
    out["ratio_C_B"] = _ratio(out["ingest_rps"], out["ingest_naive_rps"])
    out["ratio_C2_C"] = _ratio(out["ingest_rps_2proc"], out["ingest_rps"])
    out["ratio_D_E"] = _ratio(out["worker_events_per_s"], out["worker_bare_arq_per_s"])
    out["ratio_O_D"] = _ratio(out["worker_ordered_events_per_s"], out["worker_events_per_s"])
    out["ratio_L_D"] = _ratio(out["worker_limited_events_per_s"], out["worker_events_per_s"])
    out["details"] = {
        "mode": r.mode,
        "load_generator": r.loadgen,
        "wall_time_s": r.wall_s,
        "repetitions": {
            "A": limit,
            "B": naive,
            "C": ours,
            "C2": ours2,
            "D": worker,
            "O": ordered,
            "L": limited,
            "E": bare,
        },
        "ingest_latency_p99_ms": {
            "A": median(x.p99_ms for x in r.limit),
            "B": median(x.p99_ms for x in r.naive),
            "C": median(x.load.p99_ms for x in r.ours),
            "C2": median(x.load.p99_ms for x in r.ours2),
        },
        "stored_2proc": [x.stored for x in r.ours2],
        "traced": [
            {
                "C": _rps(t.plain.load),
                "D": t.plain.worker.rate,
                "Ct": _rps(t.traced.load),
                "Dt": t.traced.worker.rate,
                "export_requests": t.exported[0],
                "export_bytes": t.exported[1],
                "spans_exported": t.exported[2],
                "spans_made": t.spans_made,
            }
            for t in r.traced
        ],
        "zero_loss": {
            "C": [vars(x.tally) for x in r.ours],
            "O": [vars(x.tally) for x in r.ordered],
            "L": [vars(x.tally) for x in r.limited],
            "Ct": [vars(t.traced.tally) for t in r.traced],
            "F": vars(r.latency.tally) if r.latency else None,
        },
        "latency_offered": {
            "events": r.latency.load.completed + r.latency.load.errors if r.latency else 0,
            "seconds": r.latency.load.duration_s if r.latency else math.nan,
        },
        "latency_from_send_p50_ms": percentile(f_send, 50),
        "latency_from_send_p99_ms": percentile(f_send, 99),
        "redis_bytes_per_queued_event": median(x.queued_bytes_per_event for x in r.ours),
        "history": {
            "ingest_rps": _rps(r.history.load) if r.history else math.nan,
            "list_p50_ms": percentile(r.history.list_ms, 50) if r.history else math.nan,
            "lead_p50_ms": percentile(r.history.lead_ms, 50) if r.history else math.nan,
            "queries_each": len(r.history.list_ms) if r.history else 0,
        },
        "worker_rss_mb_each": workers_rss,
        "notes": r.notes,
    }
    return out


def _pinned(r: Results) -> dict[str, Any]:
    """P's medians, and the CPU per event of C (unpinned) and of P's C (issue 23)."""
    p = r.pinned
    out = {
        "cpu_api_us_per_event": median(x.cost.api_us for x in r.ours),
        "cpu_redis_us_per_event": median(x.cost.redis_us for x in r.ours),
        "pinned_limit_rps": median(_rps(x) for x in p.limit) if p else math.nan,
        "pinned_naive_rps": median(_rps(x) for x in p.naive) if p else math.nan,
        "pinned_rps": median(_rps(x) for x in p.ours) if p else math.nan,
        "pinned_cpu_api_us_per_event": median(x.api_us for x in p.cost) if p else math.nan,
        "pinned_cpu_redis_us_per_event": median(x.redis_us for x in p.cost) if p else math.nan,
    }
    out["ratio_pinned_C_A"] = _ratio(out["pinned_rps"], out["pinned_limit_rps"])
    out["ratio_pinned_C_B"] = _ratio(out["pinned_rps"], out["pinned_naive_rps"])
    out["pinned_repetitions"] = {
        "A": [_rps(x) for x in p.limit] if p else [],
        "B": [_rps(x) for x in p.naive] if p else [],
        "C": [_rps(x) for x in p.ours] if p else [],
        "C_cpu_api_us": [x.api_us for x in p.cost] if p else [],
        "C_cpu_redis_us": [x.redis_us for x in p.cost] if p else [],
    }
    out["cpu_repetitions"] = {
        "C_cpu_api_us": [x.cost.api_us for x in r.ours],
        "C_cpu_redis_us": [x.cost.redis_us for x in r.ours],
    }
    return out


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: a label and a test of the summary."""

    label: str
    passes: Callable[[dict[str, Any]], bool]


TARGETS = [
    Target("C >= 3 x B (issue 23; issue 6 asked 2.5)", lambda s: s["ratio_C_B"] >= 3),
    Target("P: C >= 2.5 x B, pinned (issue 23)", lambda s: s["ratio_pinned_C_B"] >= 2.5),
    Target("P: C >= 0.25 x A, pinned (issue 23)", lambda s: s["ratio_pinned_C_A"] >= 0.25),
    Target("D >= 600 events/s", lambda s: s["worker_events_per_s"] >= 600),
    Target("D >= 0.8 x E", lambda s: s["ratio_D_E"] >= 0.8),
    Target("O >= 0.8 x D (issue 15)", lambda s: s["ratio_O_D"] >= 0.8),
    Target("L >= 0.8 x D (issue 20)", lambda s: s["ratio_L_D"] >= 0.8),
    Target("Ct >= 0.75 x C, tracing on (issue 22)", lambda s: s["ratio_Ct_C"] >= 0.75),
    Target("Dt >= 0.75 x D, tracing on (issue 22)", lambda s: s["ratio_Dt_D"] >= 0.75),
    Target("latency p50 <= 50 ms", lambda s: s["latency_p50_ms"] <= 50),
    Target("latency p99 <= 250 ms", lambda s: s["latency_p99_ms"] <= 250),
    Target("zero lost, zero run twice", lambda s: s["lost"] == 0 and s["duplicated"] == 0),
    Target("API RSS <= 150 MB", lambda s: s["api_rss_mb"] <= 150),
    Target("worker RSS <= 150 MB", lambda s: s["worker_rss_mb"] <= 150),
    Target("history: >= 200,000 events retained", lambda s: s["history_events"] >= 200_000),
    Target("history list p99 <= 50 ms", lambda s: s["history_list_p99_ms"] <= 50),
    Target("history --lead p99 <= 50 ms", lambda s: s["history_lead_p99_ms"] <= 50),
    Target("Redis per event <= 1,200 B", lambda s: s["redis_bytes_per_event"] <= 1200),
]


def _n(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _reps(values: list[float]) -> str:
    return "[" + ", ".join(_n(v) for v in values) + "]"


def _traced(d: dict[str, Any], plain: str) -> str:
    """The untraced figure of the round Ct and Dt ran in, for the repetitions column."""
    return "".join(f"[{plain}: {_n(t[plain])}]" for t in d["traced"])


def _spans(d: dict[str, Any]) -> str:
    return ", ".join(f"{t['spans_exported']:,} / {t['spans_made']:,}" for t in d["traced"]) or "n/a"


def _cpu(api: float, redis: float) -> str:
    return f"{_n(api)} / {_n(redis)} us"


def _pinned_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    p = s["pinned_repetitions"]
    cpu = s["cpu_repetitions"]
    return [
        (
            "   C: CPU per event, API / Redis",
            _cpu(s["cpu_api_us_per_event"], s["cpu_redis_us_per_event"]),
            _reps(cpu["C_cpu_api_us"]) + " / " + _reps(cpu["C_cpu_redis_us"]),
        ),
        (
            "P  pinned A (server on CPU 0, wrk -t1 -c32 on 1)",
            f"{_n(s['pinned_limit_rps'])} req/s",
            _reps(p["A"]),
        ),
        ("P  pinned B", f"{_n(s['pinned_naive_rps'])} req/s", _reps(p["B"])),
        ("P  pinned C", f"{_n(s['pinned_rps'])} req/s", _reps(p["C"])),
        ("   P: C / A", _n(s["ratio_pinned_C_A"], 2), ""),
        ("   P: C / B", _n(s["ratio_pinned_C_B"], 2), ""),
        (
            "   P: C's CPU per event, API / Redis",
            _cpu(s["pinned_cpu_api_us_per_event"], s["pinned_cpu_redis_us_per_event"]),
            _reps(p["C_cpu_api_us"]) + " / " + _reps(p["C_cpu_redis_us"]),
        ),
    ]


def table(s: dict[str, Any]) -> str:
    """The printed report."""
    d = s["details"]
    reps = d["repetitions"]
    zero = d["zero_loss"]
    c_ack = sum(t["acknowledged"] for t in zero["C"])
    c_runs = sum(t["runs"] for t in zero["C"])
    rows = [
        ("A  limit: raw ASGI, drain body, 202", f"{_n(s['ingest_limit_rps'])} req/s", _reps(reps["A"])),
        ("B  naive: FastAPI + HMAC + arq", f"{_n(s['ingest_naive_rps'])} req/s", _reps(reps["B"])),
        ("C  ours: oa-webhooks api", f"{_n(s['ingest_rps'])} req/s", _reps(reps["C"])),
        ("   C / A", _n(s["ratio_C_A"], 2), ""),
        ("   C / B", _n(s["ratio_C_B"], 2), ""),
        ("C2 ours, OA_API_PROCESSES=2", f"{_n(s['ingest_rps_2proc'])} req/s", _reps(reps["C2"])),
        ("   C2 / C", _n(s["ratio_C2_C"], 2), ""),
        *_pinned_rows(s),
        ("D  ours: oa-webhooks worker, no-op", f"{_n(s['worker_events_per_s'])} ev/s", _reps(reps["D"])),
        ("O  ours, one ordered=True no-op", f"{_n(s['worker_ordered_events_per_s'])} ev/s", _reps(reps["O"])),
        ("   O / D", _n(s["ratio_O_D"], 2), ""),
        (
            "L  ours, one handler with limits that never bind",
            f"{_n(s['worker_limited_events_per_s'])} ev/s",
            _reps(reps["L"]),
        ),
        ("   L / D", _n(s["ratio_L_D"], 2), ""),
        ("Ct C again, tracing on (one round)", f"{_n(s['ingest_rps_traced'])} req/s", _traced(d, "C")),
        ("   Ct / C of that round", _n(s["ratio_Ct_C"], 2), ""),
        (
            "Dt D again, tracing on (one round)",
            f"{_n(s['worker_events_per_s_traced'])} ev/s",
            _traced(d, "D"),
        ),
        ("   Dt / D of that round", _n(s["ratio_Dt_D"], 2), ""),
        ("   spans at the sink / made (Ct, Dt)", _spans(d), ""),
        ("E  bare arq, tuned, no-op", f"{_n(s['worker_bare_arq_per_s'])} ev/s", _reps(reps["E"])),
        ("   D / E", _n(s["ratio_D_E"], 2), ""),
        ("F  202 -> handler start, p50", f"{_n(s['latency_p50_ms'], 1)} ms", ""),
        ("F  202 -> handler start, p99", f"{_n(s['latency_p99_ms'], 1)} ms", ""),
        ("G  C: 202s / handler runs", f"{c_ack:,} / {c_runs:,}", ""),
        ("G  lost / run twice (C, O, L, Ct and F)", f"{s['lost']} / {s['duplicated']}", ""),
        ("   API RSS after the run", f"{_n(s['api_rss_mb'], 1)} MB", ""),
        ("   worker RSS after the run (max)", f"{_n(s['worker_rss_mb'], 1)} MB", ""),
        ("   Redis per retained event", f"{_n(s['redis_bytes_per_event'])} B", ""),
        ("H  history: events retained", f"{s['history_events']:,}", ""),
        ("H  ingest with them retained", f"{_n(d['history']['ingest_rps'])} req/s", ""),
        ("H  list --type --since, p50", f"{_n(d['history']['list_p50_ms'], 1)} ms", ""),
        ("H  list --type --since, p99", f"{_n(s['history_list_p99_ms'], 1)} ms", ""),
        ("H  list --lead, p50", f"{_n(d['history']['lead_p50_ms'], 1)} ms", ""),
        ("H  list --lead, p99", f"{_n(s['history_lead_p99_ms'], 1)} ms", ""),
    ]
    if zero["F"]:
        f = zero["F"]
        after_c = next(i for i, row in enumerate(rows) if row[0].startswith("G  C:")) + 1
        rows.insert(after_c, ("G  F: 202s / handler runs", f"{f['acknowledged']:,} / {f['runs']:,}", ""))
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"medians of {len(reps['C'])} interleaved repetitions (A, B, C, D, C2, L, O, E), F and H once; one",
        "uvicorn process per server (C2: two) with the settings of `oa-webhooks api`; Redis with AOF",
        "appendfsync always; D drains each C run's events, L C2's (the same ids) with one handler whose",
        "limits never bind, E as many jobs as the plan's bare_events (benchmarks/plan.py), O the plan's",
        "ordered_leads x 4 lead events with one ordered=True handler",
        "",
        f"{'measure':<{width}}{'median':>16}   repetitions",
        "-" * (width + 50),
    ]
    lines += [f"{label:<{width}}{value:>16}   {rep}".rstrip() for label, value, rep in rows]
    lines += ["", "targets (issues 6 and 13; O: issue 15; L: issue 20; Ct, Dt: issue 22; P: issue 23):"]
    lines += [f"  {'PASS' if t.passes(s) else 'FAIL'}  {t.label}" for t in TARGETS]
    lines += [f"note: {note}" for note in d["notes"]]
    lines.append(f"load generator: {d['load_generator']}; wall time {d['wall_time_s']:.0f} s ({d['mode']})")
    return "\n".join(lines)


def write(s: dict[str, Any], path: Path) -> None:
    """bench-results.json: the summary, each target's verdict, NaN as null."""
    verdicts = {t.label: t.passes(s) for t in TARGETS}

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(s | {"targets": verdicts}), indent=2) + "\n", encoding="utf-8")
