"""`oa-webhooks events` with real processes: the API, the worker and the CLI, on a real Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.ops.cli.sender import SAMPLES, sample_body
from service.store.ledger import PENDING_KEY, event_key
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.processes import Stack, service_env, wait_for
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
FAST = {
    "OA_RETRY_INITIAL_S": "0.1",
    "OA_RETRY_JITTER": "0",
    "OA_MAX_TRIES": "3",
    "OA_RECONCILE_INTERVAL_S": "1",
}

# Counts its runs per event id in Redis; `history_flaky` fails its first two attempts of lead.sold
# and refuses lead.invoiced for good.
COUNTER = """
from workers import Context, Event, PermanentError, on


@on({types})
async def {name}(event: Event, ctx: Context) -> None:
    await ctx.redis.hincrby("test:{name}", event.id, 1)
    if event.type == "lead.sold" and ctx.attempt <= 2:
        raise ConnectionError(f"CRM down on attempt {{ctx.attempt}}")
    if event.type == "lead.invoiced":
        raise PermanentError("CRM refuses this lead")
"""


def _module(name: str, *types: str) -> str:
    return COUNTER.format(name=name, types=", ".join(repr(t) for t in types))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "oa-webhooks"), "events", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _post(stack: Stack, event_id: str, event_type: str, lead: int) -> None:
    payload = {**SAMPLES[event_type], "lead_id": lead}
    body = sample_body(event_type, event_id=event_id, payload=payload)
    response = httpx.post(stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10)
    assert response.status_code == 202, response.text


def _runs(redis: Redis, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(f"test:{name}").items()}


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_backfill_runs_only_the_new_handler_once_per_event(
    tmp_path: Path, redis_url: str, redis_sync: Redis
) -> None:
    """A handler added later runs once on each past lead.paid (after a restart); nothing else runs again."""
    stack = Stack(tmp_path, redis_url, SECRET, **FAST)
    try:
        stack.add_handler_module("history_crm", _module("crm", "lead.paid", "lead.created"))
        stack.start()
        for index in range(3):
            _post(stack, f"paid_{index}", "lead.paid", 100 + index)
        _post(stack, "created_0", "lead.created", 100)
        wait_for(
            lambda: redis_sync.zcard(PENDING_KEY) == 0 and len(_runs(redis_sync, "crm")) == 4, timeout_s=30
        )
        before = {i: redis_sync.hgetall(event_key(i)) for i in ("paid_0", "paid_1", "paid_2", "created_0")}

        stack.add_handler_module("history_late", _module("late", "lead.paid", "lead.created"))
        stack.worker.stop()
        stack.worker.start()
        late = "workers.handlers.history_late.late"
        env = stack.api.env
        args = ["replay", "--type", "lead.paid", "--since", "1h", "--handler", late]

        dry = _cli(*args, "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert f"would replay 3 event(s): {late} (3)" in dry.stdout
        assert {i: redis_sync.hgetall(event_key(i)) for i in before} == before

        done = _cli(*args, "--yes", "--rate", "20/s", env=env)
        assert done.returncode == 0, done.stderr
        assert f"replayed 3 event(s): {late} (3)" in done.stdout
        wait_for(lambda: len(_runs(redis_sync, "late")) == 3, timeout_s=30, what="the backfill")
        wait_for(lambda: redis_sync.zcard(PENDING_KEY) == 0, timeout_s=30, what="the replays to finish")
        wait_for(lambda: redis_sync.hget(event_key("paid_2"), "state") == b"done", timeout_s=10)
        assert _runs(redis_sync, "late") == {"paid_0": 1, "paid_1": 1, "paid_2": 1}
        assert _runs(redis_sync, "crm") == {"paid_0": 1, "paid_1": 1, "paid_2": 1, "created_0": 1}
        shown = _json(_cli("show", "paid_1", "--json", env=env))
        handlers = {h["name"]: h for h in shown["handlers"]}
        assert handlers[late]["state"] == "done"
        assert len(handlers[late]["replays"]) == 1
        assert handlers["workers.handlers.history_crm.crm"]["replays"] == []
        assert handlers["workers.handlers.leads.log_lead_event"]["attempts"] == 1
        assert [r["handlers"] for r in shown["replays"]] == [[late]]
        assert shown["state"] == "done"
        assert redis_sync.hget(event_key("created_0"), f"h:{late}") is None
    finally:
        stack.close()


def test_list_show_and_timeline_from_the_command_line(
    tmp_path: Path, redis_url: str, redis_sync: Redis
) -> None:
    """The list (filters, JSON, paging), the lead timeline, show of a retried-then-done and a dead event."""
    stack = Stack(tmp_path, redis_url, SECRET, **FAST)
    try:
        stack.add_handler_module("history_flaky", _module("flaky", "lead.*"))
        stack.start()
        for index, event_type in enumerate(["lead.created", "lead.sold", "lead.invoiced"]):
            _post(stack, f"l7_{index}", event_type, 7)
        for index in range(4):
            _post(stack, f"other_{index}", "lead.created", 8 + index)
        wait_for(lambda: redis_sync.zcard(PENDING_KEY) == 0, timeout_s=30, what="the worker")
        env = stack.api.env

        rows = _json(_cli("list", "--json", env=env))
        assert [r["id"] for r in rows][:4] == ["other_3", "other_2", "other_1", "other_0"]
        assert {"id", "type", "state", "received_at", "lead_id", "invoice_id", "attempts"} <= set(rows[0])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rows[0]["received_at"])
        dead = _json(_cli("list", "--json", "--state", "dead", "--lead", "7", env=env))
        assert [(r["id"], r["type"], r["lead_id"]) for r in dead] == [("l7_2", "lead.invoiced", 7)]
        by_type = _json(
            _cli("list", "--json", "--type", "invoice.*", "--type", "lead.sold", "--since", "5m", env=env)
        )
        assert [r["id"] for r in by_type] == ["l7_1"]

        seen: list[str] = []
        cursor: list[str] = []
        for _ in range(5):
            page = _cli("list", "--json", "--limit", "3", "--type", "lead.created", *cursor, env=env)
            seen += [r["id"] for r in _json(page)]
            more = re.search(r"--cursor (\S+)", page.stderr)
            if more is None:
                break
            cursor = ["--cursor", more[1]]
        assert seen == ["other_3", "other_2", "other_1", "other_0", "l7_0"]

        # As a terminal shows it (TTY_COMPATIBLE=1): piped, the title is left out of the rows.
        timeline = _cli("list", "--lead", "7", env=env | {"TTY_COMPATIBLE": "1", "COLUMNS": "120"})
        assert timeline.returncode == 0, timeline.stderr
        assert "created (done) -> sold (done) -> invoiced (dead) -> paid (not yet)" in " ".join(
            timeline.stdout.split()
        )

        retried = _json(_cli("show", "l7_1", "--json", env=env))
        flaky = next(h for h in retried["handlers"] if h["name"].endswith(".flaky"))
        assert (retried["state"], flaky["state"], flaky["attempts"]) == ("done", "done", 3)
        assert [(r["attempt"], r["error"] and r["error"]["type"]) for r in flaky["runs"]] == [
            (1, "ConnectionError"),
            (2, "ConnectionError"),
            (3, None),
        ]
        assert all(r["started_at"] and r["duration_ms"] >= 0 for r in flaky["runs"])
        assert "CRM down on attempt 1" in flaky["runs"][0]["error"]["traceback"]
        assert retried["finished_at"] >= retried["received_at"]
        assert retried["secret_index"] == 0
        assert retried["body"]["payload"]["lead_id"] == 7
        text = _cli("show", "l7_2", env=env)
        assert text.returncode == 0
        assert "PermanentError: CRM refuses this lead" in text.stdout
        assert '"lead_id": 7' in text.stdout
        missing = _cli("show", "nope", env=env)
        assert missing.returncode == 1
        assert "no event 'nope'" in missing.stderr
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (["list", "--state", "finished"], "one of queued, running, retrying, done, dead, unhandled"),
        (["list", "--since", "yesterday"], "a duration such as 15m, 2h or 7d"),
        (["list", "--until", "2026-13-45"], "ISO-8601"),
        (["list", "--type", "lead paid"], "a wildcard such as"),
        (["list", "--lead", "12 34"], "a number such as 12345"),
        (["list", "--limit", "0"], "--limit"),
        (["list", "--cursor", "page2"], "use the one a page printed"),
        (["replay", "--since", "7x"], "a duration such as 15m"),
        (["replay", "--type", "lead.paid", "--rate", "fast"], "replays per second"),
        (["replay"], "give event IDs"),
    ],
)
def test_bad_filter_values_are_usage_errors(args: list[str], accepted: str, redis_url: str) -> None:
    """A bad filter value exits 2 with a line that says what is accepted."""
    result = _cli(*args, env=service_env(redis_url, SECRET, free_port()))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert accepted in " ".join(result.stderr.replace("│", " ").split())
