"""`oa-webhooks api` serves two listeners: the public port (webhook, /healthz) and the admin port."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET
from tests.processes import BIN, Stack
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e

ADMIN_ONLY = ["/metrics", "/readyz"]


@pytest.fixture
def api_only(tmp_path: Path, redis_url: str) -> Stack:
    """The compose `api` command, as a real process, with its admin port on 127.0.0.1 (the default)."""
    return Stack(tmp_path, redis_url, SECRET)


def _listening_hosts(port: int) -> set[str]:
    """The addresses on which some socket listens on TCP `port`, from /proc/net/tcp and tcp6 (Linux)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="utf-8").splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(address)
    return hosts


def test_operations_endpoints_are_on_the_admin_port_only(api_only: Stack) -> None:
    """/metrics and /readyz: 404 JSON on the public port, 200 on the admin port; /healthz only public."""
    api_only.start(worker=False)
    try:
        with httpx.Client(timeout=10) as http:
            for path in ADMIN_ONLY:
                public = http.get(api_only.base_url + path)
                assert (public.status_code, public.json()["error"]) == (404, "not_found"), path
                assert http.get(api_only.admin_url + path).status_code == 200, path
            assert http.get(api_only.base_url + "/healthz").json() == {"status": "ok"}
            assert http.get(api_only.admin_url + "/healthz").status_code == 404
            metrics = http.get(api_only.admin_url + "/metrics").text
    finally:
        api_only.close()
    assert "oa_webhooks_live_workers" in metrics


@pytest.mark.parametrize("path", ["/nope", "/console", "/webhooks", "/metrics/", "/docs"])
def test_unknown_paths_are_404_json_on_both_ports(api_only: Stack, path: str) -> None:
    """Anything but the listed routes answers 404 `{"error": "not_found", ...}` on either port."""
    api_only.start(worker=False)
    try:
        with httpx.Client(timeout=10) as http:
            answers = [http.get(base + path) for base in (api_only.base_url, api_only.admin_url)]
    finally:
        api_only.close()
    for answer in answers:
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/json"
        assert set(answer.json()) == {"error", "detail"}
        assert answer.json()["error"] == "not_found"


def test_admin_port_binds_loopback_by_default(api_only: Stack) -> None:
    """Without OA_ADMIN_HOST the admin port listens on 127.0.0.1 only; OA_HOST moves the public port alone."""
    api_only.api.env["OA_HOST"] = "0.0.0.0"  # noqa: S104 - what compose sets; the admin port must not follow
    api_only.start(worker=False)
    try:
        admin_port = int(api_only.api.env["OA_ADMIN_PORT"])
        admin_hosts, public_hosts = _listening_hosts(admin_port), _listening_hosts(api_only.port)
    finally:
        api_only.close()
    assert admin_hosts == {"0100007F"}  # 127.0.0.1, as /proc/net/tcp writes it
    assert public_hosts == {"00000000"}  # 0.0.0.0


def test_healthcheck_api_needs_both_listeners(api_only: Stack) -> None:
    """`oa-webhooks healthcheck api` exits 0 while both listeners answer, 1 once the admin port is wrong."""
    api_only.start(worker=False)
    try:
        env = api_only.api.env
        healthy = subprocess.run(
            [BIN / "oa-webhooks", "healthcheck", "api"], env=env, check=False, timeout=30
        )
        # A port nobody listens on (the admin port + 1 could be another test's listener).
        wrong = {**env, "OA_ADMIN_PORT": str(free_port())}
        unhealthy = subprocess.run(
            [BIN / "oa-webhooks", "healthcheck", "api"], env=wrong, check=False, timeout=30
        )
    finally:
        api_only.close()
    assert (healthy.returncode, unhealthy.returncode) == (0, 1)
