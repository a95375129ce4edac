"""OpenTelemetry traces, switched on only by the standard `OTEL_*` variables (docs/tracing.md).

Tracing is on in a process when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
set, unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `start` then builds the SDK's
tracer provider, which exports OTLP over HTTP/protobuf from a `BatchSpanProcessor` thread and reads
every other standard variable itself (service name, resource attributes, sampler, batch delays,
headers, timeout, compression). It also joins the logs to the trace: a log record made while a span is
current carries `trace_id` and `span_id`, which service/logs.py prints.

Off, `start` returns None and imports nothing of the SDK: no thread, no exporter. The API and the
worker keep None instead of a tracer and take their untraced path, so tracing off costs nothing.

The spans: the webhook request (SERVER, service/api/ingest.py), each handler run (CONSUMER,
workers/runtime/spans.py), and each `ctx.http` call (CLIENT, opentelemetry-instrumentation-httpx).
Between the processes, the webhook span's W3C `traceparent` is stored with the event
(service/store/ledger.py) and read back by the worker's `begin`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import AfterValidator

from service import logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    import httpx
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

API_SERVICE = "oa-webhooks-api"
WORKER_SERVICE = "oa-webhooks-worker"
# `messaging.system`: ours is arq's queue in Redis (the conventions list no value for it).
MESSAGING_SYSTEM = "arq"
INSTRUMENTATION = "oa-webhooks"
# The context stored with an event is always W3C Trace Context, whatever OTEL_PROPAGATORS says for
# HTTP: it is our own hand-off between our own processes.
_HANDOFF = TraceContextTextMapPropagator()
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
log = logging.getLogger("oa.tracing")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the standard variables ask for traces: an OTLP endpoint, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


@dataclass(frozen=True, slots=True)
class Tracing:
    """The process's tracer provider while tracing is on; `stop` exports what is left and ends it."""

    provider: TracerProvider
    tracer: Tracer
    _unjoin_logs: Callable[[], None]

    def instrument(self, client: httpx.AsyncClient) -> None:
        """Give each request of `client` a CLIENT span and send the trace's `traceparent` with it."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def stop(self) -> None:
        """Export the spans still waiting (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stop the thread."""
        self._unjoin_logs()
        self.provider.shutdown()


def start(default_service_name: str) -> Tracing | None:
    """Start tracing for this process if the variables ask for it (see `wanted`); None when off.

    `default_service_name` is used only when neither OTEL_SERVICE_NAME nor `service.name` in
    OTEL_RESOURCE_ATTRIBUTES names the service: passing it to `Resource.create` would override both.
    Call it once per process, from the API's lifespan or the worker's start-up, never at import.
    """
    if not wanted():
        return None
    # Imported here: with tracing off, the SDK and the exporter are never loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting over http/protobuf", protocol)
    named = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create(None if named else {SERVICE_NAME: default_service_name})
    provider = TracerProvider(resource=_hashed_once(resource))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Global too, so that a handler's own spans (`opentelemetry.trace.get_tracer(...)`) join the trace.
    trace.set_tracer_provider(provider)
    tracer = provider.get_tracer(INSTRUMENTATION)
    log.info("tracing on", extra={"detail": f"service.name={resource.attributes[SERVICE_NAME]!s}"})
    return Tracing(provider, tracer, _join_logs())


def _hashed_once(resource: Resource) -> Resource:
    """The same resource, hashed once instead of for every span it is exported with.

    The OTLP encoder groups spans by resource in a dict, and `Resource.__hash__` dumps every
    attribute to JSON: about a sixth of the export thread's time per span (cProfile, 512-span
    batches). A resource never changes, so its hash need not be computed again.
    """
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - the SDK only with tracing on

    class HashedOnce(Resource):
        def __init__(self, attributes: Mapping[str, Any], schema_url: str | None) -> None:
            super().__init__(dict(attributes), schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


@asynccontextmanager
async def running(default_service_name: str) -> AsyncIterator[Tracing | None]:
    """`start` for the block, then `stop` (in a thread: the last export may take a few seconds)."""
    traces = start(default_service_name)
    try:
        yield traces
    finally:
        if traces:
            await asyncio.to_thread(traces.stop)


def _join_logs() -> Callable[[], None]:
    """Put the current span's ids on every log line; returns what undoes it."""

    def span_ids() -> dict[str, str]:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": format_trace_id(context.trace_id), "span_id": format_span_id(context.span_id)}

    return logs.stamp_records(span_ids)


def trace_url(template: str, trace_id: str, span_id: str) -> str | None:
    """`OA_TRACE_URL_TEMPLATE` filled in for one run's span; None when it is unset or names no trace."""
    if "{trace_id}" not in template:
        return None
    return template.replace("{trace_id}", trace_id).replace("{span_id}", span_id)


def checked_trace_url_template(value: str) -> str:
    """`OA_TRACE_URL_TEMPLATE` as the settings keep it; else ValueError, with the message for the operator."""
    value = value.strip()
    filled = trace_url(value, "0", "0") or "{"
    if value and (not value.startswith(("https://", "http://")) or "{" in filled or "}" in filled):
        raise ValueError(
            "OA_TRACE_URL_TEMPLATE must be an http(s) URL with {trace_id} (and maybe {span_id}) in it, "
            "such as https://tempo.example/trace/{trace_id}"
        )
    return value


# Where `events show` and the console link a run's trace: `OA_TRACE_URL_TEMPLATE` (service/settings.py).
TraceUrlTemplate = Annotated[str, AfterValidator(checked_trace_url_template)]


def current_ids() -> tuple[str, str] | None:
    """The trace id and span id of the current span, as hex, if it is sampled (a trace backends will have).

    None outside a span, with tracing off, or for a span the sampler dropped: a link to it would find
    nothing. (Log lines carry the ids of any span, sampled or not: they still tie the lines together.)
    """
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def traceparent_of(span: Span) -> str:
    """The W3C `traceparent` of `span`, to store with the event it accepted."""
    carrier: dict[str, str] = {}
    _HANDOFF.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_of(traceparent: str) -> Context | None:
    """The context a stored `traceparent` names, or None for none (or one that does not parse)."""
    if not traceparent:
        return None
    context = _HANDOFF.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class WebhookSpan:
    """The SERVER span of one webhook request, and what the steps learn for it, set at its end at once.

    Its parent is the request's own `traceparent` when it has one (a tracing proxy in front of us sends
    one; the provider does not). A span is tens of microseconds of CPU on the ingest path: its attributes
    are set in two calls, at the start and at the end.
    """

    __slots__ = ("noted", "span")

    def __init__(self, tracer: Tracer, scope: Mapping[str, Any], route: str) -> None:
        headers = scope["headers"]
        parent = None
        if any(name == b"traceparent" for name, _ in headers):
            from opentelemetry.propagate import extract  # noqa: PLC0415 - rare: only with a tracing proxy

            parent = extract({name.decode("latin-1"): value.decode("latin-1") for name, value in headers})
        self.span = tracer.start_span(
            f"POST {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": route,
                "url.path": route,
                "url.scheme": scope.get("scheme", "http"),
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        self.noted: dict[str, str | int] = {}

    def event(self, event_id: str, event_type: str) -> str:
        """Note the event; returns the span's `traceparent`, to store with it."""
        self.noted |= {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": event_type,
            "messaging.message.id": event_id,
        }
        return traceparent_of(self.span)

    def outcome(self, code: str) -> None:
        """What became of the request: `accepted`, `duplicate`, `conflict`, or why it was refused."""
        self.noted["oa.outcome"] = code

    def answered(self, status: int) -> None:
        """The answer's status code, with everything noted; a 5xx makes the span an error."""
        self.noted["http.response.status_code"] = status
        if status >= 500:
            self.noted["error.type"] = str(status)
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.set_attributes(self.noted)
