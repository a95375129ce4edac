"""`ctx.http`, the HTTP client that handlers share, is bounded by OA_HANDLER_HTTP_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import make_settings
from workers.runtime.main import handler_http_client


async def test_a_silent_server_times_out_after_the_setting() -> None:
    """A server that accepts and never answers: ReadTimeout after OA_HANDLER_HTTP_TIMEOUT_S, not 10 s."""
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings("redis://127.0.0.1:1/0", OA_HANDLER_HTTP_TIMEOUT_S=0.3)
    try:
        async with handler_http_client(settings) as http:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{port}/")
            took_s = time.monotonic() - started
        assert 0.25 < took_s < 3, took_s
        assert connections, "the request never reached the server"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


def test_the_default_is_ten_seconds() -> None:
    """Unset, the bound is the 10 s that was hard-coded before it became a setting."""
    assert make_settings("redis://127.0.0.1:1/0").handler_http_timeout_s == 10
