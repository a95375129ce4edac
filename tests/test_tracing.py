"""Tracing's switches, its cost when off, and the traced run in-process (the SDK's in-memory exporter).

The end-to-end tests, with the real processes and an OTLP receiver, are in tests/test_tracing_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from arq import Retry
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis import Redis

from service.api import ingest
from service.api.envelope import parse_envelope
from service.api.state import Runtime, open_runtime
from service.ops.admin import create_admin_app
from service.settings import SettingsError, load_settings
from service.store.history import show_event
from service.store.ledger import Ledger, event_key
from service.tracing import wanted
from tests.conftest import envelope, make_settings, signed_headers
from tests.processes import ROOT
from tests.redis_server import free_port
from workers import Context, Event, on
from workers.registry import handlers_for
from workers.runtime.claim import ClaimedJob
from workers.runtime.job import process_event
from workers.runtime.journal import Journal

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TOKEN = "console-token-0123456789abcdef"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_only_an_otlp_endpoint_turns_tracing_on_and_the_sdk_switch_turns_it_off(
    environ: dict[str, str], on: bool
) -> None:
    """On with either endpoint variable; off without one, with OTEL_SDK_DISABLED=true or exporter none."""
    assert wanted(environ) is on


_PROBE = """
import json, sys, threading
from service import tracing
started = tracing.start("oa-webhooks-api")
print(json.dumps({
    "on": started is not None,
    "threads": sorted(t.name for t in threading.enumerate()),
    "sdk_loaded": any(m.startswith("opentelemetry.sdk") for m in sys.modules),
    "service": started.provider.resource.attributes["service.name"] if started else None,
}))
if started:
    started.stop()
"""


def _probe(**environ: str) -> dict[str, Any]:
    """`tracing.start` in a fresh Python process with only these OTEL_* variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | environ
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


# Port 9 (discard) on loopback: nothing listens, and nothing is exported by these probes anyway.
_NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "environ", [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": _NOWHERE, "OTEL_SDK_DISABLED": "true"}]
)
def test_off_means_no_sdk_loaded_and_no_exporter_thread(environ: dict[str, str]) -> None:
    """Off, `start` returns None without importing the SDK or starting the batch processor's thread."""
    probe = _probe(**environ)
    assert probe == {"on": False, "threads": ["MainThread"], "sdk_loaded": False, "service": None}


def test_on_starts_the_batch_exporter_thread() -> None:
    """On, the same probe sees the SDK loaded and its export thread: the check above can fail."""
    probe = _probe(OTEL_EXPORTER_OTLP_ENDPOINT=_NOWHERE)
    assert probe["on"]
    assert probe["sdk_loaded"]
    assert probe["threads"] == ["MainThread", "OtelBatchSpanRecordProcessor"]


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({}, "oa-webhooks-api"),
        ({"OTEL_SERVICE_NAME": "receiver-eu"}, "receiver-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"}, "from-attrs"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "wins"}, "wins"),
    ],
)
def test_the_default_service_name_yields_to_the_standard_variables(
    environ: dict[str, str], name: str
) -> None:
    """`oa-webhooks-api` only when neither OTEL_SERVICE_NAME nor service.name in the resource names one."""
    assert _probe(OTEL_EXPORTER_OTLP_ENDPOINT=_NOWHERE, **environ)["service"] == name


@pytest.mark.parametrize(
    "template",
    [
        "tempo.example/{trace_id}",
        "https://tempo.example/trace/",
        "https://t/{trace}",
        "https://t/{trace_id}{0}",
    ],
)
def test_a_trace_url_template_without_a_usable_trace_id_stops_start_up(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OA_TRACE_URL_TEMPLATE must be an http(s) URL with {trace_id}: else start-up names the variable."""
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "whsec_test_secret_0123456789")
    monkeypatch.setenv("OA_TRACE_URL_TEMPLATE", template)
    with pytest.raises(
        SettingsError, match=r"^OA_TRACE_URL_TEMPLATE must be an http\(s\) URL with \{trace_id\}"
    ):
        load_settings()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """An SDK tracer provider of this test's own, exporting to memory (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.usefixtures("clean_registry")
async def test_each_run_is_a_consumer_span_under_the_stored_context_and_its_ids_are_kept(
    worker_ctx: dict[str, Any],
    redis_sync: Redis,
    redis_url: str,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A failing then passing handler: two CONSUMER spans, child of and linked to the stored context."""
    provider, exporter = spans
    ctx = {**worker_ctx, "oa": replace(worker_ctx["oa"], tracer=provider.get_tracer("test"))}

    @on("lead.paid")
    async def book(event: Event, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("the CRM hung up")

    body = envelope("evt_traced", "lead.paid")
    ledger = Ledger(ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    now_ms = time.time_ns() // 1_000_000
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=now_ms, traceparent=TRACEPARENT)
    assert redis_sync.hget(event_key("evt_traced"), "traceparent") == TRACEPARENT.encode()
    with pytest.raises(Retry):
        await process_event(ctx, "evt_traced", "lead.paid")
    await process_event(ctx, "evt_traced", "lead.paid")

    first, second = exporter.get_finished_spans()
    for attempt, span in enumerate((first, second), start=1):
        assert span.name == "process lead.paid"
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None
        assert span.parent is not None
        assert (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
        assert [f"{link.context.span_id:016x}" for link in span.links] == [PARENT_ID]
        assert span.attributes is not None
        assert {k: span.attributes[k] for k in ("messaging.message.id", "oa.attempt", "oa.handler")} == {
            "messaging.message.id": "evt_traced",
            "oa.attempt": attempt,
            "oa.handler": handlers_for("lead.paid")[0].name,
        }
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert first.attributes is not None
    assert (first.attributes["oa.outcome"], first.attributes["error.type"]) == ("retrying", "ConnectionError")
    assert second.status.status_code is StatusCode.UNSET
    assert second.attributes is not None
    assert second.attributes["oa.outcome"] == "succeeded"

    record = await show_event(ctx["redis"], "evt_traced")
    assert record is not None
    runs = record.handlers[0].runs
    assert [(a.trace_id, a.span_id) for a in runs] == [
        (TRACE_ID, f"{s.context.span_id:016x}") for s in (first, second) if s.context
    ]
    assert runs[0].error is not None
    assert runs[1].error is None

    # The console links each attempt through OA_TRACE_URL_TEMPLATE.
    settings = make_settings(
        redis_url, OA_ADMIN_TOKEN=TOKEN, OA_TRACE_URL_TEMPLATE="https://tempo.example/trace/{trace_id}"
    )
    app = create_admin_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            assert (await http.post("/console/login", data={"token": TOKEN})).status_code == 303
            page = (await http.get("/console/events/evt_traced")).text
    links = re.findall(r'<a href="https://tempo\.example/trace/([0-9a-f]{32})"', page)
    assert links == [TRACE_ID, TRACE_ID]


@pytest.mark.usefixtures("clean_registry")
async def test_untraced_runs_keep_the_stored_run_as_before(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Without a tracer, a run's entry is [start, duration, attempt]: no trace fields, no null."""

    @on("lead.created")
    async def noop(event: Event, ctx: Context) -> None: ...

    body = envelope("evt_plain", "lead.created")
    ledger = Ledger(worker_ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)
    await process_event(worker_ctx, "evt_plain", "lead.created")
    assert redis_sync.hget(event_key("evt_plain"), "traceparent") is None
    name = handlers_for("lead.created")[0].name
    stored = json.loads(redis_sync.hget(event_key("evt_plain"), f"h:{name}") or b"{}")
    assert [len(run) for run in stored["runs"]] == [3]


async def test_begin_hands_the_stored_traceparent_to_the_worker(worker_ctx: dict[str, Any]) -> None:
    """`Journal.begin` returns the traceparent `Ledger.accept` stored, and '' for an event without one."""
    redis = worker_ctx["redis"]
    ledger = Ledger(redis, queue_expiry_ms=10_000, retention_s=3600)
    journal = Journal(redis, retention_s=3600, queue_expiry_ms=10_000)
    for event_id, traceparent in (("evt_a", TRACEPARENT), ("evt_b", "")):
        body = envelope(event_id)
        now_ms = time.time_ns() // 1_000_000
        await ledger.accept(
            parse_envelope(body), body, secret_index=0, now_ms=now_ms, traceparent=traceparent
        )
        claimed = await journal.begin(event_id, ["h.one"], now_ms=now_ms)
        assert not isinstance(claimed, str | None)
        assert claimed.traceparent == traceparent
        assert list(claimed.handlers) == ["h.one"]


async def test_the_webhook_span_says_what_became_of_each_request(
    redis_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Accepted: 202 and the event's id; refused: 401 and why, not an error; Redis down: 503, an error."""
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    body = envelope("evt_span", "lead.sold")

    async def post(runtime: Runtime, headers: dict[str, str]) -> int:
        scope = {
            "type": "http",
            "scheme": "http",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
        answered: list[ingest.Reply] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def answer(reply: ingest.Reply) -> None:
            answered.append(reply)

        await ingest.receive_webhook(runtime, scope, receive, answer, tracer=tracer)
        return answered[0].status

    async with open_runtime(make_settings(redis_url)) as runtime:
        assert await post(runtime, signed_headers(body)) == 202
        assert await post(runtime, signed_headers(body, secret="whsec_another_secret_0123456")) == 401
    down = f"redis://127.0.0.1:{free_port()}/0"
    async with open_runtime(make_settings(down, OA_REDIS_TIMEOUT_S=0.5)) as runtime:
        assert await post(runtime, signed_headers(body)) == 503

    accepted, refused, unavailable = exporter.get_finished_spans()
    for span in (accepted, refused, unavailable):
        assert (span.name, span.kind) == ("POST /webhooks/offerte-adviseur", SpanKind.SERVER)
        assert span.attributes is not None
    assert accepted.attributes is not None
    assert refused.attributes is not None
    assert unavailable.attributes is not None
    assert accepted.attributes["messaging.message.id"] == "evt_span"
    assert accepted.attributes["messaging.destination.name"] == "lead.sold"
    assert (accepted.attributes["http.response.status_code"], accepted.attributes["oa.outcome"]) == (
        202,
        "accepted",
    )
    assert accepted.status.status_code is StatusCode.UNSET
    assert (refused.attributes["http.response.status_code"], refused.attributes["oa.outcome"]) == (
        401,
        "signature_mismatch",
    )
    assert "messaging.message.id" not in refused.attributes  # refused before the body was read as an event
    assert refused.status.status_code is StatusCode.UNSET  # a client's mistake is not the server's error
    assert unavailable.attributes["oa.outcome"] == "redis_unavailable"
    assert (unavailable.attributes["error.type"], unavailable.status.status_code) == ("503", StatusCode.ERROR)


@pytest.mark.usefixtures("clean_registry")
async def test_a_run_the_sampler_dropped_exports_nothing_and_keeps_no_trace_id(
    worker_ctx: dict[str, Any], redis_sync: Redis, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A stored context that is not sampled (flags 00): the run follows it, no span, no id to link to."""
    provider, exporter = spans
    ctx = {**worker_ctx, "oa": replace(worker_ctx["oa"], tracer=provider.get_tracer("test"))}

    @on("lead.created")
    async def noop(event: Event, ctx: Context) -> None: ...

    body = envelope("evt_unsampled", "lead.created")
    ledger = Ledger(ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    now_ms = time.time_ns() // 1_000_000
    unsampled = TRACEPARENT.removesuffix("01") + "00"
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=now_ms, traceparent=unsampled)
    await process_event(ctx, "evt_unsampled", "lead.created")
    assert exporter.get_finished_spans() == ()
    name = handlers_for("lead.created")[0].name
    stored = json.loads(redis_sync.hget(event_key("evt_unsampled"), f"h:{name}") or b"{}")
    assert [len(run) for run in stored["runs"]] == [3]


@pytest.mark.usefixtures("clean_registry")
async def test_a_run_that_waited_says_for_what_and_how_long_on_its_span(
    worker_ctx: dict[str, Any], spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """The claim's `waited` (here: a pause lifted 1.5 s ago) becomes oa.waited.reason and oa.waited.ms."""
    provider, exporter = spans
    state = replace(worker_ctx["oa"], tracer=provider.get_tracer("test"))
    ctx = {**worker_ctx, "oa": state}

    @on("lead.created")
    async def paused_one(event: Event, ctx: Context) -> None: ...

    name = handlers_for("lead.created")[0].name
    body = envelope("evt_waited", "lead.created")
    ledger = Ledger(ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    now_ms = time.time_ns() // 1_000_000
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=now_ms, traceparent=TRACEPARENT)
    # What the claim script hands the job for a handler that runs now after waiting (claim.py).
    state.claims["evt_waited"] = ClaimedJob("evt_waited", now_ms, waited={name: ("paused", now_ms - 1500)})
    await process_event(ctx, "evt_waited", "lead.created")
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["oa.waited.reason"] == "paused"
    assert 1500 <= int(str(span.attributes["oa.waited.ms"])) < 60_000
