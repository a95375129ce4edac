"""`workers.testing.run_handler` and a real worker agree: same handlers, same event, same decisions.

The handlers run in the compose `worker` command against a real redis-server, with every retry setting
given (OA_RETRY_JITTER=0, so the worker's delay is exact); then the same handlers run in-process through
`run_handler` with the same settings, attempt by attempt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.store.ledger import event_key
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.processes import Stack, wait_for
from workers.events import sample_body
from workers.testing import make_event, run_handler

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_registry")]
MODULE = "toolkit_agree"
PREFIX = f"workers.handlers.{MODULE}"
SETTINGS = {
    "OA_RETRY_INITIAL_S": "1",
    "OA_RETRY_MAX_DELAY_S": "600",
    "OA_RETRY_JITTER": "0",
    "OA_MAX_TRIES": "3",
    "OA_RETRY_AFTER_MAX_S": "86400",
    "OA_JOB_TIMEOUT_S": "60",
}
HANDLERS = """
import httpx

from workers import Context, Event, PermanentError, RetryLater, on


@on("lead.created")
async def succeeds(event: Event, ctx: Context) -> None:
    ctx.log.info("done")


@on("lead.created")
async def fails(event: Event, ctx: Context) -> None:
    raise RuntimeError("CRM down")


@on("lead.created")
async def busy(event: Event, ctx: Context) -> None:
    request = httpx.Request("POST", "https://crm.example/leads")
    httpx.Response(429, headers={"Retry-After": "45"}, request=request).raise_for_status()


@on("lead.created")
async def later(event: Event, ctx: Context) -> None:
    raise RetryLater(after_s=12)


@on("lead.created")
async def refuses(event: Event, ctx: Context) -> None:
    raise PermanentError("no such lead")


@on("lead.created", retry_on=(httpx.HTTPError,))
async def narrow(event: Event, ctx: Context) -> None:
    raise KeyError("region")


@on("lead.created", max_tries=1)
async def once(event: Event, ctx: Context) -> None:
    raise RuntimeError("CRM down")
"""
NAMES = ("succeeds", "fails", "busy", "later", "refuses", "narrow", "once")
STATES = {"succeeded": "done", "retrying": "retry", "dead": "dead"}


def _decisions(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[str, float | None]]:
    """(handler, attempt) -> (state, retry_in_s), from the worker's one log line per run."""
    return {
        (r["handler"].removeprefix(PREFIX + "."), r["attempt"]): (STATES[r["outcome"]], r.get("retry_in_s"))
        for r in records
        if str(r.get("handler", "")).startswith(PREFIX) and r.get("outcome") in STATES
    }


def _stored(redis_sync: Redis) -> dict[str, str]:
    """Each handler's state in the event's ledger entry."""
    fields = redis_sync.hgetall(event_key("agree_1"))
    return {name: json.loads(fields[f"h:{PREFIX}.{name}".encode()])["state"] for name in NAMES}


async def test_run_handler_decides_as_a_real_worker_does(
    tmp_path: Path, redis_url: str, redis_sync: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Done, retries after the backoff, Retry-After and RetryLater, dead three ways: the same in both."""
    stack = Stack(tmp_path, redis_url, SECRET, **SETTINGS)
    try:
        stack.add_handler_module(MODULE, HANDLERS)
        stack.start()
        body = sample_body("lead.created", event_id="agree_1")
        answer = httpx.post(stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10)
        assert answer.status_code == 202, answer.text
        wanted = {(name, 1) for name in NAMES} | {("fails", 3)}
        wait_for(
            lambda: wanted <= set(_decisions(stack.worker.records())),
            timeout_s=30,
            what="each handler's first run, and the third (last) of `fails`",
        )
        wait_for(lambda: _stored(redis_sync)["fails"] == "dead", timeout_s=10, what="the ledger's record")
        worker, stored = _decisions(stack.worker.records()), _stored(redis_sync)

        for name in list(os.environ):
            if name.startswith("OA_"):
                monkeypatch.delenv(name)
        for name, value in SETTINGS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no .env
        event = make_event("lead.created", id="agree_1")
        in_process = {
            (name, number): await run_handler(f"{PREFIX}.{name}", event, attempt=number)
            for name, number in worker
        }
    finally:
        stack.close()
        sys.modules.pop(PREFIX, None)

    assert worker == {key: (o.state, o.retry_in_s) for key, o in in_process.items()}
    assert worker[("fails", 1)] == ("retry", 1)
    assert worker[("fails", 2)] == ("retry", 2)
    assert worker[("busy", 1)] == ("retry", 45)
    assert worker[("later", 1)] == ("retry", 12)
    assert {name: worker[(name, 1)][0] for name in ("succeeds", "refuses", "narrow", "once")} == {
        "succeeds": "done",
        "refuses": "dead",
        "narrow": "dead",
        "once": "dead",
    }
    expected = {"succeeds": "done", "fails": "dead", "busy": "pending", "later": "pending"}
    assert stored == expected | {"refuses": "dead", "narrow": "dead", "once": "dead"}
