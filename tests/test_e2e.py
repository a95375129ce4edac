"""End to end: the compose `api` and `worker` commands as real processes, a real HTTP client, real Redis."""

from __future__ import annotations

import httpx
import pytest
from redis import Redis

from service.ops.cli.sender import sample_body
from tests.conftest import ENDPOINT, signed_headers
from tests.processes import Stack, wait_for

pytestmark = pytest.mark.e2e

PROBE = '''
from workers import Context, Event, on


@on("*")
async def probe(event: Event, ctx: Context) -> None:
    """Count runs per event id, where the test can read them."""
    await ctx.redis.hincrby("e2e:runs", event.id, 1)
'''

TYPES = [
    "lead.created",
    "lead.sold",
    "lead.invoiced",
    "lead.paid",
    "invoice.created",
    "invoice.paid",
    "lead.archived",
]


def test_every_type_reaches_a_handler_once_and_redelivery_is_not_run(stack: Stack, redis_sync: Redis) -> None:
    """Six documented types and an unknown one each run the handler once; a redelivery gets 200 and no run."""
    stack.add_handler_module("e2e_probe", PROBE)
    stack.start()
    bodies = {f"e2e_{i}": sample_body(t, event_id=f"e2e_{i}") for i, t in enumerate(TYPES)}
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        for body in bodies.values():
            assert http.post(ENDPOINT, content=body, headers=signed_headers(body)).status_code == 202
        wait_for(lambda: redis_sync.hlen("e2e:runs") == len(TYPES), timeout_s=20, what="every event to run")
        redelivered = http.post(ENDPOINT, content=bodies["e2e_3"], headers=signed_headers(bodies["e2e_3"]))
    assert redelivered.status_code == 200
    assert redelivered.json() == {"status": "duplicate", "id": "e2e_3"}
    wait_for(lambda: redis_sync.zcard("oa:pending") == 0, timeout_s=10, what="the ledger to settle")
    runs = {k.decode(): int(v) for k, v in redis_sync.hgetall("e2e:runs").items()}
    assert runs == dict.fromkeys(bodies, 1)
    assert "example handler saw lead.created" in {record["msg"] for record in stack.worker.records()}
