"""Traces end to end: the real API and worker processes, a real OTLP/HTTP receiver, a real CRM on loopback.

One webhook whose handler posts to the CRM; the CRM answers the first call 503, so the handler runs
twice. The receiver (tests/otlp_receiver.py) decodes what both processes export with
opentelemetry-proto. The scenario runs once for the module; each test checks one promise of issue 22.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.store.ledger import event_key
from tests.conftest import ENDPOINT, SECRET, envelope, signed_headers
from tests.crm_server import Call, Crm
from tests.otlp_receiver import OtlpReceiver, Received, span_tree
from tests.processes import BIN, Stack, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e
MODULE = "tracing_probe"
HANDLER = """
import os

from workers import Context, Event, on

CRM = os.environ["CRM_URL"]


@on("lead.created")
async def push_lead(event: Event, ctx: Context) -> None:
    ctx.log.info("posting the lead to the CRM")
    answer = await ctx.http.post(CRM + "/leads", json={"id": event.id})
    answer.raise_for_status()
"""
HANDLER_NAME = f"workers.handlers.{MODULE}.push_lead"
EVENT_ID = "evt_traced_001"


@dataclass(frozen=True)
class Scenario:
    """What one traced webhook left behind: spans, CRM calls, log lines and `events show --json`."""

    spans: list[Received]
    calls: list[Call]
    api_lines: list[dict[str, Any]]
    worker_lines: list[dict[str, Any]]
    shown: dict[str, Any]
    shown_text: str

    def one(self, kind: str) -> Received:
        """The only span of this kind."""
        found = [s for s in self.spans if s.kind == kind]
        assert len(found) == 1, span_tree(self.spans)
        return found[0]

    def of(self, kind: str) -> list[Received]:
        """The spans of this kind, oldest first."""
        return sorted((s for s in self.spans if s.kind == kind), key=lambda s: s.start_ns)

    def tries(self) -> list[Received]:
        """The CONSUMER spans of the handler that calls the CRM, oldest first."""
        return [s for s in self.of("CONSUMER") if s.attributes["oa.handler"] == HANDLER_NAME]

    def runs(self) -> list[dict[str, Any]]:
        """`events show --json`'s runs of that handler."""
        [handler] = [h for h in self.shown["handlers"] if h["name"] == HANDLER_NAME]
        return list(handler["runs"])


def _cli(stack: Stack, *args: str, **env: str) -> str:
    done = subprocess.run(
        [str(BIN / "oa-webhooks"), *args],
        env=stack.api.env | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


@dataclass
class Running:
    """The receiver, the CRM (503 once, then 200) and the stack with the handler module."""

    receiver: OtlpReceiver
    crm: Crm
    stack: Stack

    @classmethod
    def start(cls, tmp: Path, redis_url: str, *, endpoint: bool, **otel: str) -> Running:
        """Start all three (the stack exporting to the receiver when `endpoint`) and send the one event."""
        receiver = OtlpReceiver().start()
        crm = Crm(script={"/leads": ["down"]}).start()
        if endpoint:
            otel["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        stack = Stack(tmp, redis_url, SECRET, CRM_URL=crm.url, OA_RETRY_INITIAL_S="0", **otel)
        running = cls(receiver, crm, stack)
        try:
            stack.add_handler_module(MODULE, HANDLER)
            stack.start()
            body = envelope(EVENT_ID, "lead.created", lead_id=4711)
            answer = httpx.post(
                stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10
            )
            assert answer.status_code == 202, answer.text
        except BaseException:
            running.close()
            raise
        return running

    def wait_done(self, redis_server: RedisServer) -> None:
        """Until the event is done (its second try passed)."""
        with redis_server.client() as client:
            wait_for(
                lambda: client.hget(event_key(EVENT_ID), "state") == b"done",
                timeout_s=30,
                what="the event done",
            )

    def close(self) -> None:
        """Stop the processes (they export what is left), then the CRM and the receiver."""
        self.stack.close()
        self.crm.stop()
        self.receiver.stop()


@pytest.fixture(scope="module")
def traced(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The scenario with tracing on (both processes export every 100 ms), run and stopped for the module."""
    with redis_server.client() as client:
        client.flushall()
    tmp = tmp_path_factory.mktemp("traced")
    running = Running.start(tmp, redis_server.url, endpoint=True, OTEL_BSP_SCHEDULE_DELAY="100")
    template = "https://tempo.example/trace/{trace_id}?span={span_id}"
    try:
        running.wait_done(redis_server)
        wait_for(
            lambda: sum(s.kind == "CLIENT" for s in running.receiver.received()) >= 2,
            timeout_s=20,
            what="the worker's spans at the receiver, while it runs",
        )
        shown = json.loads(_cli(running.stack, "events", "show", EVENT_ID, "--json"))
        shown_text = _cli(running.stack, "events", "show", EVENT_ID, OA_TRACE_URL_TEMPLATE=template)
    finally:
        running.close()  # no process of this scenario may take the other tests' events
    return Scenario(
        spans=running.receiver.received(),
        calls=running.crm.on("/leads"),
        api_lines=running.stack.api.records(),
        worker_lines=running.stack.worker.records(),
        shown=shown,
        shown_text=shown_text,
    )


def test_spans_of_both_processes_make_one_trace_that_the_crm_joins(traced: Scenario) -> None:
    """SERVER (API) -> CONSUMER per try (worker, child and link) -> CLIENT; the CRM got that traceparent."""
    server = traced.one("SERVER")
    tries, calls = traced.tries(), traced.of("CLIENT")
    assert len(tries) == 2, span_tree(traced.spans)
    assert len(calls) == 2, span_tree(traced.spans)
    # The example handler of lead.created (workers/handlers/leads.py) ran once: a span of its own.
    [example] = [s for s in traced.of("CONSUMER") if s not in tries]
    assert (example.parent_span_id, example.attributes["oa.outcome"]) == (server.span_id, "succeeded")
    assert {s.trace_id for s in traced.spans} == {server.trace_id}
    assert (server.service, server.name, server.parent_span_id) == (
        "oa-webhooks-api",
        "POST /webhooks/offerte-adviseur",
        "",
    )
    assert server.attributes["messaging.message.id"] == EVENT_ID
    assert server.attributes["messaging.destination.name"] == "lead.created"
    assert server.attributes["http.response.status_code"] == 202
    for number, (run, call) in enumerate(zip(tries, calls, strict=True), start=1):
        assert (run.service, run.name) == ("oa-webhooks-worker", "process lead.created")
        assert run.parent_span_id == server.span_id
        assert run.links == [(server.trace_id, server.span_id)]
        assert {k: run.attributes.get(k) for k in _CONSUMER_KEYS} == {
            "messaging.system": "arq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "lead.created",
            "messaging.message.id": EVENT_ID,
            "messaging.consumer.group.name": HANDLER_NAME,
            "oa.handler": HANDLER_NAME,
            "oa.attempt": number,
        }
        assert (call.service, call.parent_span_id) == ("oa-webhooks-worker", run.span_id)
    # What the CRM received: the trace, with the CLIENT span of that very call as parent, sampled.
    sent = [c.traceparent.split("-") for c in traced.calls]
    assert [fields[:3] for fields in sent] == [["00", server.trace_id, c.span_id] for c in calls]
    assert all(int(fields[3], 16) & 1 for fields in sent)


_CONSUMER_KEYS = (
    "messaging.system",
    "messaging.operation.type",
    "messaging.operation.name",
    "messaging.destination.name",
    "messaging.message.id",
    "messaging.consumer.group.name",
    "oa.handler",
    "oa.attempt",
)


def test_a_failed_try_is_an_error_span_with_its_exception_and_the_retry_a_new_span(traced: Scenario) -> None:
    """Try 1: status ERROR, the HTTPStatusError recorded, outcome retrying; try 2: unset status, succeeded."""
    failed, passed = traced.tries()
    assert failed.status == "ERROR"
    assert failed.attributes["error.type"] == "httpx.HTTPStatusError"
    assert failed.attributes["oa.outcome"] == "retrying"
    [(name, exception)] = failed.events
    assert name == "exception"
    assert exception["exception.type"] == "httpx.HTTPStatusError"
    assert "503 Service Unavailable" in exception["exception.message"]
    assert "raise_for_status" in exception["exception.stacktrace"]
    assert (passed.status, passed.attributes["oa.outcome"], passed.events) == ("UNSET", "succeeded", [])
    assert failed.attributes["messaging.message.id"] == passed.attributes["messaging.message.id"] == EVENT_ID
    assert failed.span_id != passed.span_id


def test_log_lines_written_in_a_span_carry_its_ids(traced: Scenario) -> None:
    """The handler's own line and each outcome line carry their run's span; the API's line its span."""
    tries = traced.tries()
    server = traced.one("SERVER")
    run_lines = [line for line in traced.worker_lines if line.get("handler") == HANDLER_NAME]
    seen = [
        (line["msg"], line.get("attempt"), line.get("trace_id"), line.get("span_id")) for line in run_lines
    ]
    assert seen == [
        ("posting the lead to the CRM", 1, server.trace_id, tries[0].span_id),
        ("handler retrying", 1, server.trace_id, tries[0].span_id),
        ("posting the lead to the CRM", 2, server.trace_id, tries[1].span_id),
        ("handler succeeded", 2, server.trace_id, tries[1].span_id),
    ]
    [received] = [line for line in traced.api_lines if line["msg"] == "event received"]
    assert (received["trace_id"], received["span_id"]) == (server.trace_id, server.span_id)


def test_events_show_prints_each_attempts_trace(traced: Scenario) -> None:
    """`events show --json` has each run's trace and span id; the text links them via the template."""
    tries = traced.tries()
    assert [(r["attempt"], r["trace_id"], r["span_id"]) for r in traced.runs()] == [
        (n, s.trace_id, s.span_id) for n, s in enumerate(tries, start=1)
    ]
    for span in tries:
        assert (
            f"\n    trace https://tempo.example/trace/{span.trace_id}?span={span.span_id}\n"
            in traced.shown_text
        )


@pytest.mark.parametrize(
    ("endpoint", "otel"),
    [(False, {}), (True, {"OTEL_SDK_DISABLED": "true"})],
    ids=["no-endpoint", "disabled"],
)
def test_with_tracing_off_nothing_is_exported_and_everything_works(
    endpoint: bool, otel: dict[str, str], tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    """No endpoint, or OTEL_SDK_DISABLED=true: the event runs as ever, with no span, id or traceparent."""
    running = Running.start(tmp_path, redis_url, endpoint=endpoint, **otel)
    try:
        running.wait_done(redis_server)
        shown = json.loads(_cli(running.stack, "events", "show", EVENT_ID, "--json"))
        with redis_server.client() as client:
            assert client.hget(event_key(EVENT_ID), "traceparent") is None
    finally:
        running.close()  # the processes are stopped: whatever they would export is sent by now
    assert running.receiver.requests == 0
    assert [c.traceparent for c in running.crm.on("/leads")] == ["", ""]
    [handler] = [h for h in shown["handlers"] if h["name"] == HANDLER_NAME]
    assert [(r["trace_id"], r["span_id"]) for r in handler["runs"]] == [(None, None), (None, None)]
    lines = running.stack.api.records() + running.stack.worker.records()
    assert any(line["msg"] == "handler succeeded" for line in lines)
    assert [line for line in lines if "trace_id" in line or line["msg"] == "tracing on"] == []
