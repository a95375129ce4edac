"""docker-compose.yml keeps Redis private: internal network only, a password, no published port."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.processes import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    spec: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return spec


def _networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks", [])
    return set(networks if isinstance(networks, list) else networks.keys())


def test_redis_publishes_no_port_and_sits_on_the_internal_network_only(compose: dict[str, Any]) -> None:
    """The redis service has no `ports:`, and its only network is marked `internal: true`."""
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert redis.get("network_mode") is None
    assert _networks(redis) == {"internal"}
    assert compose["networks"]["internal"]["internal"] is True


def test_redis_requires_a_password_that_compose_refuses_to_leave_empty(compose: dict[str, Any]) -> None:
    """Redis runs with --requirepass "${REDIS_PASSWORD:?...}", so compose stops when no password is set."""
    redis = compose["services"]["redis"]
    assert '--requirepass "${REDIS_PASSWORD:?' in redis["command"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "-a" in redis["healthcheck"]["test"][1]


def test_api_and_worker_reach_redis_with_the_password(compose: dict[str, Any]) -> None:
    """The api and worker use `redis://:${REDIS_PASSWORD:?...}@redis:6379/0`; only the api is public."""
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert service["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert service["environment"]["REDIS_URL"].endswith("@redis:6379/0")
        assert "OA_WEBHOOK_SECRET:?" in service["environment"]["OA_WEBHOOK_SECRET"]
    assert _networks(compose["services"]["api"]) == {"internal", "public"}
    assert _networks(compose["services"]["worker"]) == {"internal"}
    assert "ports" not in compose["services"]["worker"]
