"""How much a bench run does: the full run of `make bench`, and the smoke run of the test suite."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run (seconds, events, events per second)."""

    reps: int
    ingest_s: float  # each A and B run
    threads: int  # wrk threads
    connections: int  # wrk connections (httpx: concurrent requests)
    events: int  # N: each C run posts this many, D drains them, E drains as many
    load_bodies: int  # distinct bodies for the A and B runs: more than they can send
    latency_rate: float  # F: offered events per second...
    latency_s: float  # ...for this long
    drain_timeout_s: float  # the longest a drain may take
    budget_s: float  # no new round starts unless it can end (with F) within this


FULL = Plan(
    reps=3,
    ingest_s=5,
    threads=2,
    connections=64,
    events=20_000,
    load_bodies=260_000,
    latency_rate=200,
    latency_s=30,
    drain_timeout_s=120,
    budget_s=290,
)
SMOKE = Plan(
    reps=1,
    ingest_s=1,
    threads=2,
    connections=16,
    events=300,
    load_bodies=40_000,
    latency_rate=50,
    latency_s=3,
    drain_timeout_s=30,
    budget_s=90,
)
