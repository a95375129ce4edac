"""The endpoint in-process against a real Redis: each status code of the receiving pipeline."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
from redis import Redis

from service.api.app import create_app
from service.ops.admin import create_admin_app
from service.settings import Settings
from service.store.ledger import PENDING_KEY, event_key
from service.store.queue import QUEUE_NAME, job_key
from tests.conftest import ENDPOINT, SECRET, envelope, make_settings, signed_headers
from tests.redis_server import RedisServer, free_port

ALL_TYPES = ["lead.created", "lead.sold", "lead.invoiced", "lead.paid", "invoice.created", "invoice.paid"]


async def test_new_event_is_acknowledged_after_it_is_stored(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """A signed event gets 202 and is then in the ledger, the pending set and arq's queue."""
    body = envelope("evt_new", "lead.paid")
    response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "evt_new"}
    entry = redis_sync.hgetall(event_key("evt_new"))
    assert entry[b"body"] == body
    assert entry[b"state"] == b"queued"
    assert entry[b"secret"] == b"0"
    assert redis_sync.zscore(QUEUE_NAME, "evt_new") is not None
    assert redis_sync.zscore(PENDING_KEY, "evt_new") is not None
    job = json.loads(redis_sync.get(job_key("evt_new")) or b"null")
    assert job["f"] == "process_event"
    assert job["a"] == ["evt_new", "lead.paid"]


async def test_redelivery_is_a_duplicate_and_not_queued_again(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """The same id and body again gets 200 duplicate and leaves exactly one job."""
    body = envelope("evt_dup")
    first = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    second = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "id": "evt_dup"}
    assert redis_sync.zcard(QUEUE_NAME) == 1


async def test_same_id_other_body_is_a_conflict(client: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A reused id with a different body gets 409 and the first body is kept."""
    first = envelope("evt_c", lead_id=1)
    other = envelope("evt_c", lead_id=2)
    assert (await client.post(ENDPOINT, content=first, headers=signed_headers(first))).status_code == 202
    response = await client.post(ENDPOINT, content=other, headers=signed_headers(other))
    assert response.status_code == 409
    assert response.json()["error"] == "id_conflict"
    assert redis_sync.hget(event_key("evt_c"), "body") == first


async def test_all_documented_and_unknown_types_are_accepted(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """The six documented types and an unknown one are all queued (the provider adds types)."""
    for index, event_type in enumerate([*ALL_TYPES, "lead.reopened"]):
        body = envelope(f"evt_t{index}", event_type)
        response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
        assert response.status_code == 202, event_type
    assert redis_sync.zcard(QUEUE_NAME) == 7


async def test_bad_signature_is_401_and_stores_nothing(client: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A wrong signature gets 401 with a JSON error code, and Redis stays empty."""
    body = envelope()
    response = await client.post(ENDPOINT, content=body, headers=signed_headers(body, "another-secret-xyz"))
    assert response.status_code == 401
    assert response.json()["error"] == "signature_mismatch"
    assert redis_sync.dbsize() == 0


async def test_missing_signature_is_401(client: httpx.AsyncClient) -> None:
    """No signature header gets 401 `signature_missing`."""
    response = await client.post(ENDPOINT, content=envelope())
    assert response.status_code == 401
    assert response.json()["error"] == "signature_missing"


async def test_signed_bad_json_is_400(client: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A signed body that is not JSON gets 400 `invalid_json` with a detail."""
    body = b'{"id": "x", '
    response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert "line 1" in response.json()["detail"]
    assert redis_sync.dbsize() == 0


async def test_signed_bad_envelope_is_422(client: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A signed JSON object without a valid envelope gets 422 naming the field."""
    body = json.dumps({"id": "", "type": "lead.created", "payload": {}}).encode()
    response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_envelope", "detail": "'id' must not be empty"}
    assert redis_sync.dbsize() == 0


async def test_declared_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    """A Content-Length past OA_MAX_BODY_BYTES gets 413 before the body is read."""
    body = b"x" * 262_145
    response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_rotation_records_which_secret_matched(redis_url: str, redis_sync: Redis) -> None:
    """With `old,new` configured, an event signed with the new secret is accepted and marked secret 1."""
    settings = make_settings(redis_url, OA_WEBHOOK_SECRET=f"{SECRET},new-secret-0123456789abc")
    app = create_app(settings)
    body = envelope("evt_rot")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        response = await http.post(
            ENDPOINT, content=body, headers=signed_headers(body, "new-secret-0123456789abc")
        )
    assert response.status_code == 202
    assert redis_sync.hget(event_key("evt_rot"), "secret") == b"1"


async def test_unreachable_redis_is_503_with_retry_after() -> None:
    """With Redis down, an event gets 503 with Retry-After and the admin readyz 503; healthz stays 200."""
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", OA_REDIS_TIMEOUT_S=0.5)
    app, admin = create_app(settings), create_admin_app(settings)
    body = envelope()
    async with (
        app.router.lifespan_context(app),
        admin.router.lifespan_context(admin),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin") as admin_http,
    ):
        response = await http.post(ENDPOINT, content=body, headers=signed_headers(body))
        ready = await admin_http.get("/readyz")
        healthy = await http.get("/healthz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "redis_unavailable"
    assert ready.status_code == 503
    assert healthy.status_code == 200


async def test_connections_redis_closed_are_replaced_without_a_503(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """Redis closing the API's connections (its idle `timeout`, a failover) costs the next event nothing."""
    for round_ in range(3):
        body = envelope(f"evt_kill_{round_}")
        response = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
        assert response.status_code == 202, response.text
        # Every connection but this one: the API's, idle in their pools now.
        assert redis_sync.client_kill_filter(_type="normal", skipme=True) >= 1


async def test_readyz_is_ok_with_redis(admin_client: httpx.AsyncClient) -> None:
    """The admin app's readyz answers 200 when Redis answers."""
    response = await admin_client.get("/readyz")
    assert response.status_code == 200


async def test_wrong_method_and_path_get_json_errors(client: httpx.AsyncClient) -> None:
    """GET on the endpoint is 405 and an unknown path 404, both as JSON errors."""
    wrong_method = await client.get(ENDPOINT)
    unknown = await client.post("/nope")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"


async def test_frozen_redis_is_503_within_the_redis_timeout(tmp_path: Path) -> None:
    """A Redis that stops answering mid-run (SIGSTOP) gets a 503 after OA_REDIS_TIMEOUT_S, not a hang."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    app = create_app(make_settings(server.url, OA_REDIS_TIMEOUT_S=0.5))
    first, late = envelope("evt_before"), envelope("evt_frozen")
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        ):
            assert (
                await http.post(ENDPOINT, content=first, headers=signed_headers(first))
            ).status_code == 202
            server.signal(signal.SIGSTOP)
            started = time.monotonic()
            response = await http.post(ENDPOINT, content=late, headers=signed_headers(late))
            waited_s = time.monotonic() - started
            server.signal(signal.SIGCONT)
    finally:
        server.signal(signal.SIGCONT)
        server.stop()
    assert (response.status_code, response.json()["error"]) == (503, "redis_unavailable")
    assert 0.4 < waited_s < 3


async def test_an_app_without_its_lifespan_answers_500_json(settings: Settings) -> None:
    """A bug in the endpoint (here: no runtime, as lifespan never ran) is a JSON 500, never a traceback."""
    app = create_app(settings)
    body = envelope()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "the request could not be processed"}
