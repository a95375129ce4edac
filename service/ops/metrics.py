"""`GET /metrics`: Prometheus text format.

Two kinds of series, both prefixed `oa_webhooks_`:

- per API process: `http_requests_total{status}` and `signature_failures_total{reason}`
  (sum them over replicas);
- system-wide, read from Redis at scrape time (the same on every replica, so aggregate them
  with `max`, not `sum`): queue gauges, event counters by type, handler-duration and
  end-to-end latency histograms, live workers, the time of the last received event.

`redis_up` says whether that read worked. When Redis cannot be read, the answer is still 200
with this process's series and `redis_up 0`: the system-wide series are left out, never
reported as 0, so an alert on them has no data rather than a false all-clear, and Prometheus
does not take the API itself for down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.responses import Response

from service.api.state import runtime_of
from service.store.stats import HANDLER_BUCKETS_S, LATENCY_BUCKETS_S, SEPARATOR, Snapshot, read_snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request

log = logging.getLogger("oa.api")
PREFIX = "oa_webhooks"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `_created` series double the output and mean nothing for counters that live in Redis.
disable_created_metrics()  # type: ignore[no-untyped-call]
REQUESTS = Counter(
    f"{PREFIX}_http_requests", "Webhook requests answered, by status code (this process).", ["status"]
)
SIGNATURE_FAILURES = Counter(
    f"{PREFIX}_signature_failures",
    "Requests refused for their signature, by reason (this process).",
    ["reason"],
)
_EVENT_COUNTERS = {
    "received": "Events accepted (202), by type.",
    "processed": "Events whose handlers all succeeded (or that no handler matched), by type.",
    "retried": "Event runs that ended with a retry scheduled, by type.",
    "failed": "Events dead-lettered, by type.",
    "unhandled": "Events that no handler matched, by type.",
}
_METRIC_NAMES = {"failed": "dead_lettered"}


def _counters(name: str, doc: str, label: str, counts: dict[str, int]) -> Metric:
    """One counter family with one label: a series per key of `counts`, in key order."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _histogram(
    name: str, doc: str, raw: dict[str, float], buckets: tuple[float, ...], labels: list[str]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for field, value in raw.items():
        *parts, slot = field.split(SEPARATOR)
        series.setdefault(tuple(parts[: len(labels)]), {})[slot] = value
    for key, slots in sorted(series.items()):
        cumulative, points = 0.0, []
        for index, bound in enumerate([*buckets, float("inf")]):
            cumulative += slots.get(str(index), 0)
            points.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        family.add_metric(list(key), points, sum_value=slots.get("sum", 0.0))
    return family


class SnapshotCollector(Collector):
    """Turns one `Snapshot` into metric families."""

    def __init__(self, snapshot: Snapshot, *, held_alert_s: float, tripped_alert_s: float) -> None:
        self.snapshot = snapshot
        self.held_alert_s = held_alert_s
        self.tripped_alert_s = tripped_alert_s

    def collect(self) -> Iterator[Metric]:
        """Yield every system-wide series."""
        s = self.snapshot
        for name, doc, value in (
            ("queue_ready_events", "Events due to run now, not yet claimed by a worker.", s.ready),
            ("queue_scheduled_events", "Events waiting for a retry.", s.scheduled),
            ("queue_in_progress_events", "Events being run by a worker.", s.in_progress),
            ("dead_letter_events", "Dead-lettered events awaiting replay or purge.", s.dead),
            (
                "oldest_ready_age_seconds",
                "Age of the oldest event that is due and not running (the lag).",
                s.oldest_ready_age_s,
            ),
            ("held_events", "Events an ordered handler holds back behind a dead one.", s.held),
            (
                "oldest_held_age_seconds",
                "How long the longest-held event has been held.",
                s.oldest_held_age_s,
            ),
            (
                "held_alert_seconds",
                "OA_HELD_ALERT_S: the alert rule fires when an event is held longer than this.",
                self.held_alert_s,
            ),
            (
                "tripped_alert_seconds",
                "OA_TRIPPED_ALERT_S: the alert rule fires when a handler stays tripped longer than this.",
                self.tripped_alert_s,
            ),
            ("live_workers", "Workers with a heartbeat in the last three intervals.", len(s.workers)),
            (
                "last_received_timestamp_seconds",
                "When the last event was accepted (Unix time).",
                s.last_received_s or 0,
            ),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        for name, doc in _EVENT_COUNTERS.items():
            yield _counters(f"events_{_METRIC_NAMES.get(name, name)}", doc, "type", s.per_type(name))
        yield _counters(
            "payload_mismatch",
            "Events whose payload did not fit their type's model (handlers got the plain Payload), by type.",
            "type",
            s.per_type("payload_mismatch"),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_duplicates", "Redeliveries answered 200.", value=s.total("duplicate")
        )
        yield CounterMetricFamily(
            f"{PREFIX}_conflicts", "Reused ids with another body (409).", value=s.total("conflict")
        )
        yield _counters(
            "secret_matches",
            "Accepted events by the position (0-based) of the secret that verified them.",
            "secret_index",
            s.per_type("secret"),
        )
        yield from _handler_families(s)
        yield _histogram(
            f"{PREFIX}_handler_duration_seconds",
            "Handler run time, by event type and handler.",
            s.handler_histogram,
            HANDLER_BUCKETS_S,
            ["type", "handler"],
        )
        yield _histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "From receipt to the success of the last handler, by event type.",
            s.latency_histogram,
            LATENCY_BUCKETS_S,
            ["type"],
        )


def _handler_families(s: Snapshot) -> Iterator[Metric]:
    """Per handler: paused (by an operator) or tripped, how long tripped, and the events that wait for it."""
    paused = GaugeMetricFamily(
        f"{PREFIX}_handler_paused",
        "1 while a handler is paused by an operator (reason=operator) or tripped (reason=tripped).",
        labels=["handler", "reason"],
    )
    tripped = GaugeMetricFamily(
        f"{PREFIX}_handler_tripped_seconds",
        "How long a handler has been tripped (0 when not).",
        labels=["handler"],
    )
    waiting = GaugeMetricFamily(
        f"{PREFIX}_handler_waiting_events",
        "Events waiting for a handler that is paused, tripped or at a limit: apart from the lag.",
        labels=["handler"],
    )
    for h in s.handlers:
        paused.add_metric([h.name, "operator"], int(h.state == "paused"))
        paused.add_metric([h.name, "tripped"], int(h.state == "tripped"))
        since_s = (h.since_ms or 0) / 1000
        tripped.add_metric([h.name], max(0.0, s.now_s - since_s) if h.state == "tripped" else 0.0)
        waiting.add_metric([h.name], h.waiting)
    yield from (paused, tripped, waiting)


class RedisUpCollector(Collector):
    """`redis_up`: 1 when this scrape read the system-wide figures from Redis, else 0."""

    def __init__(self, *, up: bool) -> None:
        self.up = up

    def collect(self) -> Iterator[Metric]:
        """Yield the one gauge."""
        yield GaugeMetricFamily(
            f"{PREFIX}_redis_up", "Whether this scrape could read Redis (1) or not (0).", value=int(self.up)
        )


async def metrics(request: Request) -> Response:
    """Per-process counters, `redis_up`, and the system-wide figures when Redis could be read: always 200."""
    runtime = runtime_of(request)
    settings = runtime.settings
    registry = CollectorRegistry(auto_describe=False)
    try:
        async with asyncio.timeout(settings.redis_timeout_s):
            snapshot = await read_snapshot(runtime.redis, heartbeat_interval_s=settings.heartbeat_interval_s)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "/metrics could not read Redis (%s)", type(exc).__name__, extra={"error": type(exc).__name__}
        )
        registry.register(RedisUpCollector(up=False))
    else:
        registry.register(RedisUpCollector(up=True))
        registry.register(
            SnapshotCollector(
                snapshot, held_alert_s=settings.held_alert_s, tripped_alert_s=settings.tripped_alert_s
            )
        )
    return Response(generate_latest(REGISTRY) + generate_latest(registry), media_type=CONTENT_TYPE)
