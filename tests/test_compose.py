"""docker-compose.yml: Redis private, api and worker with egress, only the webhook port public.

Parsing proves only the layout; `make compose-test` (tests/compose/) runs the stack for real.
"""

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
    assert "--dir /data" in redis["command"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "-a" in redis["healthcheck"]["test"][1]


def test_api_and_worker_reach_redis_and_the_outside_world(compose: dict[str, Any]) -> None:
    """The api and worker use `redis://:${REDIS_PASSWORD:?...}@redis:6379/0`, on internal and on egress."""
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert service["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert service["environment"]["REDIS_URL"].endswith("@redis:6379/0")
        assert "OA_WEBHOOK_SECRET:?" in service["environment"]["OA_WEBHOOK_SECRET"]
        assert _networks(service) == {"internal", "egress"}
    assert compose["networks"]["egress"].get("internal", False) is False
    assert "ports" not in compose["services"]["worker"]


def test_only_the_webhook_port_is_public_and_the_admin_port_is_on_loopback(compose: dict[str, Any]) -> None:
    """The api publishes 8000 to all, 8001 (admin) to the host's 127.0.0.1 only, and binds admin inside."""
    api = compose["services"]["api"]
    assert api["ports"] == ["8000:8000", "127.0.0.1:8001:8001"]
    assert api["environment"]["OA_ADMIN_HOST"] == "0.0.0.0"  # noqa: S104 - inside the stack's networks
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            webhook = port == "8000:8000" or (name == "api-ha" and port == "8010:8000")
            assert webhook or port.startswith("127.0.0.1:"), (name, port)


def test_grafana_is_on_loopback_and_needs_a_password_only_with_its_profile(compose: dict[str, Any]) -> None:
    """Grafana: on 127.0.0.1:3000; its password is `${GRAFANA_ADMIN_PASSWORD:?...}`, in its env_file only."""
    # Compose interpolates the whole file whatever the profile (measured with Compose 2.40: a `:?` in
    # docker-compose.yml stops `docker compose up` without the profile too), but reads a service's
    # env_file only when the service is used: there, the requirement applies to the profile alone.
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    assert "environment" not in grafana or "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert grafana["env_file"] == ["./deploy/monitoring/grafana.env"]
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/monitoring/grafana.env").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert values["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?set ")
    assert values["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "${GRAFANA_ADMIN_PASSWORD" not in (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


HA_NODES = ("redis-primary", "redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3")


def test_ha_profile_keeps_redis_private_and_its_api_beside_the_main_one(compose: dict[str, Any]) -> None:
    """Profile ha: nodes and Sentinels on `internal` only, no port; api-ha 8010 and admin 127.0.0.1:8011."""
    services = compose["services"]
    for name in HA_NODES:
        assert services[name]["profiles"] == ["ha"]
        assert _networks(services[name]) == {"internal"}, name
        assert "ports" not in services[name], name
    for name in ("api-ha", "worker-ha"):
        assert _networks(services[name]) == {"internal", "egress"}, name
        assert services[name]["environment"]["OA_REDIS_SENTINEL_MASTER"] == "oa"
        assert services[name]["environment"]["OA_REDIS_MIN_REPLICAS"] == "1"
    assert services["api-ha"]["ports"] == ["8010:8000", "127.0.0.1:8011:8001"]
    assert services["api-ha"]["environment"]["OA_ADMIN_HOST"] == "0.0.0.0"  # noqa: S104 - inside the stack
    assert "ports" not in services["worker-ha"]
