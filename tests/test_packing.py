"""Our Redis clients pack commands with hiredis: the same bytes as redis-py's own packer, on every URL."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import pytest
from redis import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from service.store import queue

ARGUMENTS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),  # a two-word command is sent as two arguments
    (b"SCRIPT LOAD", "return 1"),
    ("EVALSHA", "a" * 40, 2, "oa:event:é✓", b"\x00\xff" * 300, 1764000000000, -1, 10**20, 0.5, 1e-7),
    ("SET", "k", memoryview(b"viewed bytes")),
    ("SET", "k", b"x" * 200_000),  # past redis-py's buffer cutoff, where it sends chunks
]
URLS = ["redis://127.0.0.1:6379/0", "rediss://redis.example.net:6380/0", "unix:///run/redis.sock?db=1"]


def _clients(url: str) -> list[Any]:
    return [queue.connect(url, timeout_s=1), queue.connect_arq(url, timeout_s=1)]


def _connection(client: Any) -> Any:
    """The connection the client's pool would open (not opened)."""
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


@pytest.mark.parametrize("args", ARGUMENTS, ids=range(len(ARGUMENTS)))
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    """For each command, the bytes sent are exactly those redis-py's Python packer would send."""
    ours = _connection(queue.connect("redis://127.0.0.1:6379/0", timeout_s=1))
    assert type(ours) is not Connection
    assert b"".join(ours.pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("url", URLS)
def test_every_url_packs_in_c(url: str) -> None:
    """redis://, rediss:// and unix:// clients, API and worker, all get the hiredis packer."""
    for client in _clients(url):
        assert isinstance(_connection(client), queue.PackedInC), (url, client.connection_pool)


@pytest.mark.parametrize("bad", [None, True, object()])
def test_unencodable_arguments_raise_data_error(bad: object) -> None:
    """An argument Redis cannot take raises redis-py's DataError, as its own packer does."""
    connection = _connection(queue.connect("redis://127.0.0.1:6379/0", timeout_s=1))
    with pytest.raises(DataError):
        connection.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)


async def test_round_trip_through_a_real_server(redis_url: str, redis_sync: Redis) -> None:
    """Binary, non-ASCII and numeric values written through the packer come back unchanged."""
    client = queue.connect(redis_url, timeout_s=2)
    try:
        written = client.hset("oa:test:packing", mapping={"bin": b"\x00\r\n\xff", "text": "é✓", "n": 10**20})
        assert await cast("Awaitable[int]", written) == 3
    finally:
        await client.aclose()
    assert redis_sync.hgetall("oa:test:packing") == {
        b"bin": b"\x00\r\n\xff",
        b"text": "é✓".encode(),
        b"n": b"100000000000000000000",
    }
