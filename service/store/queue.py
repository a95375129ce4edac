"""Everything that knows arq's Redis layout lives here, so the queue could be swapped later.

We write arq jobs ourselves (inside the ledger's Lua scripts) so that the ledger entry and
the job land in one atomic step. A job carries only the event id and type; the body stays
in the ledger. Jobs are JSON, never pickle: whoever can write to Redis must not be able to
run code in the worker.

The Redis clients of the API, the worker and the CLI are made here too (`connect`, `connect_arq`):
timeouts, TLS defaults, commands packed in C, and, with Sentinel, a pool that follows the primary.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import hiredis
import orjson
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import DataError

if TYPE_CHECKING:
    from service.settings import SentinelSettings

QUEUE_NAME = "oa:queue"
JOB_FUNCTION = "process_event"


def job_key(event_id: str) -> str:
    """Arq's key for the job of one event (the job id is the event id)."""
    return job_key_prefix + event_id


def in_progress_key(event_id: str) -> str:
    """Arq's claim on a running job; it expires `arq_job_timeout_s + 10` after the claim."""
    return in_progress_key_prefix + event_id


def retry_key(event_id: str) -> str:
    """Arq's per-job try counter."""
    return retry_key_prefix + event_id


def serialize(data: dict[str, Any]) -> bytes:
    """Arq job serializer: compact JSON."""
    return json.dumps(data, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    """Arq job deserializer: JSON only, so a forged job can at worst name a missing function."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("an arq job must be a JSON object")
    return data


def encode_job(event_id: str, event_type: str, *, enqueue_ms: int) -> bytes:
    """The bytes arq's worker expects under `job_key(event_id)`: `process_event(id, type)`.

    The same compact JSON as `serialize`, by orjson: this runs for every received event.
    """
    return orjson.dumps({"t": 1, "f": JOB_FUNCTION, "a": [event_id, event_type], "k": {}, "et": enqueue_ms})


class PackedInC(AbstractConnection):
    """Commands packed by hiredis (C), as redis-py's sync client does when hiredis is installed.

    redis-py's asyncio client packs in Python whatever is installed: about 10 us for the ingest
    script's 18 arguments against 1.5 us here, on every received event; the API used 98 instead
    of 112 us of CPU per request (interleaved runs). The bytes are the same (tests/test_packing.py).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in Redis's wire format; `"CONFIG GET"` is sent as two arguments, as redis-py does."""
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # None, bool, ...: redis-py's encoder raises DataError for these
            raise DataError(str(exc)) from None


class _TCP(PackedInC, Connection):
    pass


class _TLS(PackedInC, SSLConnection):
    pass


class _Unix(PackedInC, UnixDomainSocketConnection):
    pass


class _SentinelTCP(PackedInC, SentinelManagedConnection):
    pass


class _SentinelTLS(PackedInC, SentinelManagedSSLConnection):
    pass


_PACKED_IN_C: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TCP,
    SSLConnection: _TLS,
    UnixDomainSocketConnection: _Unix,
}


def _pack_in_c(pool: ConnectionPool) -> ConnectionPool:
    # The URL chose the class (redis://, rediss://, unix://); swap it for its twin before any
    # connection exists. A class we do not know stays as it is.
    pool.connection_class = _PACKED_IN_C.get(pool.connection_class, pool.connection_class)
    return pool


def connect(
    url: str,
    *,
    timeout_s: float,
    sentinel: SentinelSettings | None = None,
    max_connections: int | None = None,
    read_timeouts: bool = True,
    health_checks: bool = True,
) -> Redis:
    """A redis-py client for `url` (redis://, rediss:// with TLS, unix://; user and password as given).

    With `sentinel`, the client asks the Sentinels for the current primary of that name whenever it
    opens a connection, and `url` only gives the password, the database and TLS (`follow_primary`).

    Socket timeouts bound every call, so an unreachable Redis turns into an error, not a hang.
    `read_timeouts=False` leaves reads unbounded, for a caller that puts one timer around a whole
    pipeline instead (the ingest batcher): redis-py arms a timer per reply read, which on Python 3.11
    costs three getpid() system calls per reply. `health_checks=False` drops redis-py's PING of a
    connection idle for 30 s, which costs one more getpid() per reply (it reads the loop's clock
    after each); a connection that Redis closed is still replaced when the pool hands it out.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_s if read_timeouts else None,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30 if health_checks else 0,
        "max_connections": max_connections,
        **tls_defaults(url),
    }
    if sentinel is not None:
        return Redis.from_pool(follow_primary(url, sentinel, timeout_s=timeout_s, **options))
    client: Redis = Redis.from_url(url, **options)
    _pack_in_c(client.connection_pool)
    return client


def tls_defaults(url: str) -> dict[str, bool]:
    """For `rediss://`: check the server's hostname too (redis-py only checks the chain by default).

    A `?ssl_check_hostname=false` in the URL still wins, for a server reached by IP address.
    """
    return {"ssl_check_hostname": True} if url.startswith("rediss://") else {}


def connect_arq(url: str, *, timeout_s: float, sentinel: SentinelSettings | None = None) -> ArqRedis:
    """An arq client for the worker, with our JSON serializer (and the primary Sentinel names, if given).

    Connecting is bounded by `timeout_s`; reads are not: redis-py arms a timer per reply read,
    which on Python 3.11 costs three getpid() system calls each, about 40 per job (a quarter of
    the worker's time, py-spy). The worker's watchdog PINGs instead (workers/runtime/main.py).
    """
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": timeout_s,
        **tls_defaults(url),
    }
    if sentinel is not None:
        pool: ConnectionPool = follow_primary(url, sentinel, timeout_s=timeout_s, **options)
    else:
        pool = _pack_in_c(ConnectionPool.from_url(url, **options))
    return ArqRedis(
        pool, job_serializer=serialize, job_deserializer=deserialize, default_queue_name=QUEUE_NAME
    )


class _PrimaryPool(SentinelConnectionPool):
    """Sentinel's pool, which also closes its connections to the Sentinels when it is closed."""

    def __init__(self, master: str, manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(master, manager, **kwargs)  # type: ignore[no-untyped-call]  # redis-py is untyped here

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the pool's connections; a full close (the client's `aclose`) closes the Sentinel ones too."""
        await super().disconnect(inuse_connections)
        if inuse_connections:  # redis-py passes False when it only drops connections to an old primary
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def follow_primary(
    url: str, sentinel: SentinelSettings, *, timeout_s: float, **options: Any
) -> ConnectionPool:
    """A pool whose connections go to the primary that the Sentinels name, whichever it is now.

    Each new connection asks the Sentinels first (the first that answers and sees a primary that is
    up); a connection to a primary that died fails, and the next one asks again, so clients follow
    a failover without a restart. A connection to an old primary that came back as a replica fails
    on its first write (READONLY) and is replaced the same way. The Sentinels themselves are
    reached without password or TLS, with the same timeouts.
    """
    # Host and port come from the Sentinels; the rest of the URL gives user, password, database, TLS.
    kwargs: dict[str, Any] = dict(parse_url(url))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    tls = kwargs.pop("connection_class", Connection) is SSLConnection
    manager = Sentinel(  # type: ignore[no-untyped-call]  # redis-py is untyped here
        list(sentinel.addresses),
        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
    )
    return _PrimaryPool(
        sentinel.master,
        manager,
        connection_class=_SentinelTLS if tls else _SentinelTCP,
        **{**options, **kwargs},  # what the URL says wins, as with `Redis.from_url`
    )
