"""One Redis connection for many batches at once: each written the moment it closes, replies read in order.

Taking a pooled connection for each batch, writing on the loop's next turn, reading the replies and
giving the connection back cost the API a quarter of its throughput under load (pinned, wrk -c32):
the pool's lock, its check of the connection for unread data, a timer per batch, and above all the
wait. A batch went out only after every request of its turn had been parsed, so Redis idled while
the API parsed, then the API idled while Redis ran the scripts (it was busy three quarters of the
time). Here `submit` writes a batch at once, on one connection kept for the purpose, and one reader
task takes the replies in the order the batches went: Redis runs one batch while the API parses the
next.

- A connection that breaks, or a batch not answered within `timeout_s`, fails every batch still
  waiting on it (each caller answers 503; the sender retries) and is closed. The next batch takes a
  new connection from the pool.
- The reader waits for replies even when nothing is in flight, so a connection that Redis closed
  (a restart) is dropped at once, not found broken by the next batch.
- While no connection is ready, `submit` returns None and starts making one; the caller sends that
  batch its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis.asyncio.connection import AbstractConnection, ConnectionPool


@dataclass(slots=True)
class _InFlight:
    """A written batch: how many replies it is owed, those read so far, and who takes them."""

    size: int
    answer: Callable[[list[Any] | Exception], None]
    timer: asyncio.TimerHandle | None = None
    replies: list[Any] = field(default_factory=list)


class Pipeline:
    """Batches of commands on one connection of `pool`, written at once and answered in order."""

    def __init__(self, pool: ConnectionPool, *, timeout_s: float | None) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._connection: AbstractConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._background: set[asyncio.Task[None]] = set()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        commands: Sequence[tuple[Any, ...]],
        answer: Callable[[list[Any] | Exception], None],
    ) -> bool:
        """Write `commands` now; `answer` gets their replies, or the exception that failed them all.

        An error reply is kept as its exception, in its place. False while no connection is ready
        (one is then being made): send this batch another way.
        """
        connection = self._connection
        if connection is None or connection._writer is None:  # noqa: SLF001 - see tests/test_pinned_internals.py
            self._connect(loop)
            return False
        batch = _InFlight(len(commands), answer)
        # redis-py's own write is a coroutine, which would wait for the loop's next turn; its stream's
        # writelines sends at once, and batches leave in the order their replies are read.
        connection._writer.writelines(connection.pack_commands(commands))  # noqa: SLF001
        if self.timeout_s is not None:
            batch.timer = loop.call_later(self.timeout_s, self._timed_out, connection)
        self._in_flight.append(batch)
        return True

    def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            connection = await self.pool.get_connection()
        except Exception:  # Redis is down: the batches sent the other way say why
            return
        self._connection = connection
        self._reader = asyncio.get_running_loop().create_task(self._read(connection))

    async def _read(self, connection: AbstractConnection) -> None:
        in_flight = self._in_flight
        try:
            while True:
                try:
                    reply: Any = await connection.read_response()
                except ResponseError as exc:
                    reply = exc
                if not in_flight:
                    self._drop(connection, RedisConnectionError("a reply came that no batch waited for"))
                    return
                batch = in_flight[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.size:
                    in_flight.popleft()
                    if batch.timer is not None:
                        batch.timer.cancel()
                    batch.answer(batch.replies)
        except asyncio.CancelledError:
            self._drop(connection, RedisConnectionError("the connection to Redis was closed"))
            raise
        except Exception as exc:  # whatever broke the connection, its batches get it
            self._drop(connection, exc)

    def _timed_out(self, connection: AbstractConnection) -> None:
        if connection is self._connection:
            self._drop(connection, TimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))

    def _drop(self, connection: AbstractConnection, exc: Exception) -> None:
        """Fail every batch still waiting on `connection`, and close it and give it back to the pool."""
        if connection is not self._connection:
            return
        self._connection = None
        while self._in_flight:
            batch = self._in_flight.popleft()
            if batch.timer is not None:
                batch.timer.cancel()
            batch.answer(exc)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        task = asyncio.get_running_loop().create_task(self._retire(connection))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, connection: AbstractConnection) -> None:
        # Nobody awaits this task but `aclose`: nothing may escape it.
        with contextlib.suppress(Exception):
            await connection.disconnect()
        with contextlib.suppress(Exception):
            await self.pool.release(connection)

    async def aclose(self) -> None:
        """Stop reading, fail what still waits, and give the connection back (before the pool closes)."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        reader = self._reader
        if self._connection is not None:
            self._drop(self._connection, RedisConnectionError("the connection to Redis was closed"))
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
