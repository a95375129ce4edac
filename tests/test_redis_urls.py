"""REDIS_URL for a managed Redis: TLS, an ACL user and a percent-encoded password reach redis-py intact.

Offline: the clients are built but never connect; we inspect what their pools would connect with.
The last test runs the stack as docs/deployment.md's least-privilege ACL user, against a local redis-server.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from service.ops.cli.sender import sample_body
from service.store import queue
from service.store.ledger import PENDING_KEY
from tests.conftest import ENDPOINT, SECRET, make_settings, signed_headers
from tests.processes import ROOT, Stack, wait_for
from tests.redis_server import RedisServer

BIN = Path(sys.executable).parent
MANAGED = "rediss://oa-webhooks:p%40ss%3Aw%2Frd%25%20x@redis.example.net:6380/2"
EXPECTED = {
    "username": "oa-webhooks",
    "password": "p@ss:w/rd% x",
    "host": "redis.example.net",
    "port": 6380,
    "db": 2,
}


def _connection(client: Redis) -> Any:
    """The connection the pool would open (not opened)."""
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def _both(url: str) -> list[Redis]:
    return [queue.connect(url, timeout_s=1.5), queue.connect_arq(url, timeout_s=1.5)]


@pytest.mark.parametrize("which", ["api", "arq"])
def test_rediss_url_with_acl_user_and_encoded_password(which: str) -> None:
    """`rediss://user:pct-encoded@host:port/db` gives a TLS connection with the decoded user and password."""
    client = dict(zip(["api", "arq"], _both(MANAGED), strict=True))[which]
    pool = client.connection_pool
    assert issubclass(pool.connection_class, SSLConnection)
    kwargs: dict[str, Any] = pool.connection_kwargs
    assert {k: kwargs[k] for k in EXPECTED} == EXPECTED
    # The worker bounds reads with its watchdog's PING instead (workers/runtime/main.py).
    assert kwargs["socket_timeout"] == (1.5 if which == "api" else None)
    assert kwargs["socket_connect_timeout"] == 1.5


def test_tls_verifies_certificates_and_the_hostname() -> None:
    """`rediss://` verifies the certificate chain and the hostname; the URL may turn the latter off."""
    for client in _both(MANAGED):
        connection = _connection(client)
        assert isinstance(connection, SSLConnection)
        assert connection.ssl_context.cert_reqs == ssl.CERT_REQUIRED
        assert connection.ssl_context.check_hostname is True
    by_address = MANAGED + "?ssl_check_hostname=false&ssl_ca_certs=/etc/ssl/certs/ca-certificates.crt"
    for client in _both(by_address):
        connection = _connection(client)
        assert isinstance(connection, SSLConnection)
        assert connection.ssl_context.check_hostname is False
        assert connection.ssl_context.ca_certs == "/etc/ssl/certs/ca-certificates.crt"


def test_plain_url_with_password_only() -> None:
    """`redis://:password@host/db` (compose's form) is a plain TCP connection with no username."""
    for client in _both("redis://:s3cr%23t@redis:6379/0"):
        pool = client.connection_pool
        assert issubclass(pool.connection_class, Connection)
        assert pool.connection_kwargs["password"] == "s3cr#t"
        assert pool.connection_kwargs.get("username") is None
        assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"]) == ("redis", 6379)


def test_unix_socket_url() -> None:
    """`unix://:password@/path?db=N` connects over the socket with the password and database."""
    for client in _both("unix://:pw%2F1@/run/redis/redis.sock?db=3"):
        pool = client.connection_pool
        assert issubclass(pool.connection_class, UnixDomainSocketConnection)
        kwargs = pool.connection_kwargs
        assert (kwargs["path"], kwargs["password"], kwargs["db"]) == ("/run/redis/redis.sock", "pw/1", 3)


def test_settings_keep_the_url_secret() -> None:
    """REDIS_URL is a secret setting: repr shows neither it nor its password; the value passes unchanged."""
    settings = make_settings(MANAGED)
    assert "p%40ss" not in repr(settings)
    assert "oa-webhooks:" not in repr(settings)
    assert settings.redis_url.get_secret_value() == MANAGED


ACL_RULES = "~oa:* ~arq:* +@all -@dangerous -@admin +info"


@pytest.mark.e2e
def test_the_documented_acl_user_is_enough(tmp_path: Path) -> None:
    """As the guide's least-privilege ACL user: api, worker, `status`, `dlq list`, `events list` work."""
    guide = (ROOT / "docs" / "deployment.md").read_text("utf-8")
    assert f"ACL SETUSER oa-webhooks on >PASSWORD {ACL_RULES}" in guide
    server = RedisServer(tmp_path / "redis", password="admin-password")
    server.start()
    admin = server.client()
    stack: Stack | None = None
    try:
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "oa-webhooks", "on", ">user-pw", *ACL_RULES.split()
        )
        stack = Stack(tmp_path, f"redis://oa-webhooks:user-pw@127.0.0.1:{server.port}/0", SECRET)
        stack.start()
        for index, event_type in enumerate(["lead.created", "lead.paid", "lead.unknown"]):
            body = sample_body(event_type, event_id=f"acl_{index}")
            response = httpx.post(
                stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10
            )
            assert response.status_code == 202
        assert httpx.get(stack.admin_url + "/metrics", timeout=10).status_code == 200
        wait_for(
            lambda: admin.zcard(PENDING_KEY) == 0, timeout_s=20, what="the worker to finish as the ACL user"
        )
        for command in (["status", "--json"], ["dlq", "list"], ["events", "list", "--json"]):
            result = subprocess.run(
                [str(BIN / "oa-webhooks"), *command], env=stack.api.env, capture_output=True, check=False
            )
            assert result.returncode == 0, result.stderr
        denied = admin.acl_log()
    finally:
        if stack is not None:
            stack.close()
        admin.close()
        server.stop()
    assert denied == []
    assert "NoPermission" not in stack.api.output() + stack.worker.output()
