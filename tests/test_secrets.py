"""Secrets and personal data stay out of logs, error bodies, tracebacks and CLI output (real processes).

The secret, the Redis password and a payload's personal data are grepped for in everything the api
and worker processes printed, every HTTP answer, the CLI's output, and every value left in Redis
(the ledger keeps bodies by design, so Redis is only grepped for the secrets).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.store.ledger import DEAD_KEY, PENDING_KEY
from tests.conftest import ENDPOINT, SECRET, envelope, signed_headers
from tests.processes import Service, Stack, service_env, wait_for, wait_until_ready
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
REDIS_PASSWORD = "redis-pw-Qx7-never-logged"
EMAIL = "jan.jansen.pii@example.nl"
IBAN = "NL91ABNA0417164300"
PERSONAL = {"lead_id": 7, "email": EMAIL, "iban": IBAN, "name": "Jan Jansen-PII"}
NEEDLES = (SECRET, REDIS_PASSWORD, EMAIL, IBAN, "Jan Jansen-PII")


# A misfit payload reaches handlers as the plain Payload (and the worker warns, naming the field);
# this handler re-validates it, and pydantic's message quotes the IBAN: it must reach no log.
STRICT_LEAD_PAID = """
from workers import Context, Event, LeadPaid, on


@on("lead.paid")
async def strict_lead_paid(event: Event, ctx: Context) -> None:
    LeadPaid.model_validate(event.payload.model_dump())
"""


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with a password, so the password can be looked for too."""
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


def _redis_values(redis: Redis) -> bytes:
    values = []
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"string":
            values.append(redis.get(key) or b"")
        elif kind == b"hash":
            values += [k + b"=" + v for k, v in redis.hgetall(key).items()]
        elif kind == b"zset":
            values += [m for m, _ in redis.zrange(key, 0, -1, withscores=True)]
    return b"\n".join(values)


def _cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(BIN / "oa-webhooks"), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout + result.stderr


def test_no_secret_or_personal_data_in_logs_answers_or_cli_output(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Every outcome from 202 to dead logs ids and types, never secrets or payload."""
    stack = Stack(tmp_path, private_redis.url, SECRET)
    stack.add_handler_module("strict_lead_paid", STRICT_LEAD_PAID)
    stack.start()
    answers: list[str] = []
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:

            def post(body: bytes, headers: dict[str, str] | None = None) -> int:
                response = http.post(ENDPOINT, content=body, headers=headers or signed_headers(body))
                answers.append(response.text)
                return response.status_code

            good = envelope("evt_pii_1", "lead.created", **PERSONAL)
            assert post(good) == 202
            assert post(good) == 200
            assert post(envelope("evt_pii_1", "lead.created", **PERSONAL, extra=1)) == 409
            assert post(json.dumps({"id": "evt_pii_2", "type": "t", "payload": [EMAIL]}).encode()) == 422
            assert post(b'{"id": "evt_pii_3", "payload": {"email": "' + EMAIL.encode() + b'"') == 400
            assert post(good, {"x-offerte-adviseur-signature": "0" * 64}) == 401
            assert post(envelope("evt_pii_dead", "lead.paid", **{**PERSONAL, "lead_id": IBAN})) == 202
            assert post(envelope("evt_pii_unhandled", "lead.unknown", **PERSONAL)) == 202
        env = {**stack.api.env, "OA_PORT": str(stack.port)}
        cli = _cli("send", "lead.created", "--id", "evt_pii_cli", "--data", json.dumps(PERSONAL), env=env)
        assert cli.startswith("202 ")
        redis = private_redis.client()
        wait_for(lambda: redis.zcard(PENDING_KEY) == 0, timeout_s=20, what="the worker to finish every event")
        assert redis.zrange(DEAD_KEY, 0, -1) == [b"evt_pii_dead"]
        stored = _redis_values(redis)
        redis.close()
    finally:
        stack.close()
    logs = stack.api.output() + stack.worker.output()
    for needle in NEEDLES:
        assert needle not in logs, f"{needle!r} is in a log"
        assert needle not in cli, f"{needle!r} is in the CLI output"
        assert all(needle not in answer for answer in answers), f"{needle!r} is in an HTTP answer"
    assert SECRET.encode() not in stored
    assert REDIS_PASSWORD.encode() not in stored
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    received = [line for line in lines if line.get("msg") == "event received"]
    assert {line["event_id"] for line in received} >= {"evt_pii_1", "evt_pii_dead", "evt_pii_cli"}
    assert all({"event_id", "type", "outcome"} <= set(line) for line in received)
    assert any(line.get("outcome") == "dead" and line.get("event_id") == "evt_pii_dead" for line in lines)
    assert any(line.get("fields") == "lead_id" and line.get("event_id") == "evt_pii_dead" for line in lines)


def test_short_secret_warns_at_start_without_showing_it(tmp_path: Path, redis_url: str) -> None:
    """With a second secret under 16 bytes, the api warns about entry 2 and prints neither secret."""
    short, long = "short-but-set", "a-long-enough-secret-0123456789"
    port = free_port()
    env = service_env(redis_url, f"{long},{short}", port)
    api = Service("api", env, tmp_path / "api.log")
    api.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
    finally:
        api.stop()
    output = api.output()
    assert "OA_WEBHOOK_SECRET entry 2 is shorter than 16 bytes" in output
    assert "entry 1" not in output
    assert short not in output
    assert long not in output


def test_worker_that_cannot_reach_redis_does_not_print_the_password(tmp_path: Path) -> None:
    """The worker's reconnect lines name the error type, never the REDIS_URL or its password."""
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    worker = Service("worker", service_env(url, SECRET, free_port()), tmp_path / "worker.log")
    worker.start()
    try:
        wait_for(lambda: "lost Redis" in worker.output(), timeout_s=10, what="the worker to notice")
    finally:
        worker.stop()
    assert REDIS_PASSWORD not in worker.output()
    assert SECRET not in worker.output()


@pytest.mark.parametrize(
    ("args", "overrides"),
    [
        (["--help"], {}),
        (["api", "--help"], {}),
        (["send", "--help"], {}),
        (["send", "lead.created", "--data", "@/nonexistent/payload.json"], {}),
        (["send", "lead.created", "--data", "{not json"], {}),
        (["send", "lead.created", "--url", f"http://127.0.0.1:{free_port()}/x"], {}),
        (["api"], {"OA_PORT": "not-a-port"}),
        (["worker"], {"REDIS_URL": f"http://user:{REDIS_PASSWORD}@example:1/0"}),
        (["healthcheck", "api"], {"OA_PORT": str(free_port())}),
    ],
    ids=[
        "help",
        "api-help",
        "send-help",
        "send-missing-file",
        "send-bad-json",
        "send-unreachable",
        "bad-port",
        "bad-redis-url",
        "healthcheck-down",
    ],
)
def test_cli_output_never_shows_the_secrets(args: list[str], overrides: dict[str, str]) -> None:
    """Help, usage and settings errors, and connection failures print neither secret nor password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env |= {"OA_WEBHOOK_SECRET": SECRET, "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", **overrides}
    output = _cli(*args, env=env)
    assert SECRET not in output
    assert REDIS_PASSWORD not in output
    assert "Traceback" not in output
