"""The webhook served straight from our HTTP protocol: no ASGI dispatch, and one write per answer.

Over ASGI, a request reaches the endpoint through the app's `__call__`, and its answer leaves as two
messages that uvicorn checks header by header before writing them. Under load that machinery took
about a tenth of the API's time, more than verifying and parsing together (py-spy, issue 23). So for
`POST /webhooks/offerte-adviseur` to our own app, service/api/server.py's protocol starts `run` in
place of uvicorn's `run_asgi`:

- the endpoint is the same (`app.serve_webhook`), and it reads the body through uvicorn's own
  `receive`, so 100-continue, flow control and a client that leaves mid-body behave as before;
- `write_reply` writes the status line, headers and body at once, with what uvicorn's `send` adds:
  its default headers (`date`), `connection: close` when the connection ends, the access log line.

Everything else stays uvicorn's: the parsing, keep-alive, pipelining, the concurrency limit, and a
graceful shutdown's wait for the request. Any other request, and this one through another server
(the tests' in-process client), goes through the ASGI app. tests/test_pinned_internals.py checks
that both paths put the same bytes on the wire.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from service.api import ingest
from service.api.app import ReceiverApp, serve_webhook

if TYPE_CHECKING:
    from starlette.types import Receive, Scope
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

_log = logging.getLogger("oa.api")
_CONTENT_TYPE = b"content-type: application/json\r\ncontent-length: %d\r\n"


def serves(app: object, scope: Any) -> bool:
    """Whether `run` serves this request: the webhook's POST, to our app with nothing wrapped around it."""
    return scope["method"] == "POST" and scope["path"] == ingest.PATH and isinstance(app, ReceiverApp)


async def run(cycle: RequestResponseCycle, app: ReceiverApp) -> None:
    """What `cycle.run_asgi(app)` does, for the webhook: nothing raised escapes into the loop."""
    try:
        # uvicorn's scope and receive, typed by uvicorn; the endpoint takes Starlette's names for them.
        scope, receive = cast("Scope", cycle.scope), cast("Receive", cycle.receive)
        await serve_webhook(app, scope, receive, partial(write_reply, cycle))
    except BaseException:
        # As uvicorn's run_asgi: a task's error goes to the log, not the loop. `serve_webhook` answers
        # a bug with a 500 itself, so this is a failure of the answer itself, or a cancel.
        _log.exception("the webhook could not be answered")
        cycle.transport.close()
    finally:
        cycle.on_response = _nothing


def _nothing() -> None:
    """A finished cycle's `on_response`, as uvicorn leaves it."""


async def write_reply(cycle: RequestResponseCycle, reply: ingest.Reply) -> None:
    """Write the whole answer in one go, as uvicorn's `send` would write it in two, and count it."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return  # uvicorn's `send` drops it too: nobody is there to read it
    if cycle.response_started:
        raise RuntimeError("the webhook's answer was already sent")
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.access_log:
        _access_log(cycle, reply.status)
    cycle.transport.write(_response(cycle, reply))
    cycle.response_complete = True
    cycle.message_event.set()  # a `receive` still waiting for body learns that the answer went
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    ingest.count_answer(reply.status)


def _response(cycle: RequestResponseCycle, reply: ingest.Reply) -> bytes:
    """Status line, headers and body; a `connection: close` header or a closing cycle ends keep-alive."""
    parts = [STATUS_LINE[reply.status]]
    for name, value in cycle.default_headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(_CONTENT_TYPE % len(reply.body))
    says_close = False
    for header, text in (reply.headers or {}).items():
        lowered = header.lower()
        if lowered == "connection" and "close" in text.lower():
            cycle.keep_alive = False
            says_close = True
        parts.append(f"{lowered}: {text}\r\n".encode())
    if not cycle.keep_alive and not says_close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", reply.body)
    return b"".join(parts)


def _access_log(cycle: RequestResponseCycle, status: int) -> None:
    """Uvicorn's access log line (`OA_ACCESS_LOG`), as its `send` writes it."""
    scope = cycle.scope
    cycle.access_logger.info(
        '%s - "%s %s HTTP/%s" %d',
        get_client_addr(scope),
        scope["method"],
        get_path_with_query_string(scope),
        scope["http_version"],
        status,
    )
