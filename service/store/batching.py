"""Send the Lua calls of concurrent requests to Redis together: one round trip for many requests.

Under load, many requests reach the `record` step in the same turn of the event loop. Each
call joins the current batch; the batch is flushed on the loop's next turn (or at `max_batch`)
as one pipeline of EVALSHA commands. Each script still runs atomically on its own, so the
answer each caller gets is exactly what a lone EVALSHA would have given: batching changes the
number of round trips, never the outcome. With one request at a time, a batch is one call.
`JoinedScriptBatcher` goes further for a script written for it (the accept script): the whole
batch is one EVALSHA, and each caller gets what the calls in that order would have given one by
one.
A batch that takes longer than `timeout_s` fails every caller in it with `TimeoutError` (one
timer per batch, not per caller).

With `replicas=N`, a `WAIT N` ends each pipeline: Redis answers it once N replicas hold every
write of that connection so far, which covers the whole batch (and, the replication stream being
one sequence, every earlier write it found, such as the first copy of a duplicate). Fewer within
the time left fails every caller with `NotReplicated`, whatever their scripts did: one round trip
per batch buys the replicas' confirmation for all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from service.store.pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable

    from redis.asyncio import Redis

_Call = tuple[list[Any], list[Any], "asyncio.Future[Any]"]
# Of the batch's time, the share WAIT may take; the rest is for the round trip itself, so that
# too few replicas end as `NotReplicated` rather than as the batch's timeout.
WAIT_SHARE = 0.9


class NotReplicated(RedisError):
    """Fewer replicas than required confirmed the batch's writes in time (they may still be stored)."""


class ScriptBatcher:
    """Runs one Lua script for many concurrent callers, batched into pipelines."""

    def __init__(
        self,
        redis: Redis,
        script: str,
        *,
        max_batch: int = 256,
        timeout_s: float | None = None,
        replicas: int = 0,
        pipelined: bool = False,
    ) -> None:
        if replicas and timeout_s is None:
            raise ValueError("waiting for replicas needs a timeout_s")  # WAIT 0 would wait forever
        if pipelined and redis.connection_pool.connection_kwargs.get("socket_timeout") is not None:
            # Its reader waits for replies with nothing in flight: a read timeout would end it.
            raise ValueError("a pipelined batcher needs a client without read timeouts")
        self.redis = redis
        self.timeout_s = timeout_s
        self.replicas = replicas
        self._wait_ms = max(1, int((timeout_s or 0) * 1000 * WAIT_SHARE))
        self.script = script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by each batch's first call
        # `pipelined`: batches go on one connection, written at once (service/store/pipeline.py); a
        # batch takes a pooled connection of its own only while that one is being made, or to run
        # again after NOSCRIPT or a broken connection (see `_answer`). Never with replicas: a WAIT
        # holds its connection until the replicas answer, and would hold back every batch behind it.
        self._pipeline = (
            Pipeline(redis.connection_pool, timeout_s=timeout_s) if pipelined and not replicas else None
        )

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        """Run the script with these keys and args, together with whatever else is waiting."""
        loop = self._loop
        if loop is None or not self._pending:
            # Once per batch, not per call: on Python 3.11 each lookup is a getpid() system call.
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or self._loop is None:
            return
        batch, self._pending = self._pending, []
        if self._pipeline is not None and self._pipeline.submit(
            self._loop, self._commands(batch), partial(self._answer, batch)
        ):
            return
        self._start(self._send(batch))

    def _start(self, send: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(send)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _answer(self, batch: list[_Call], replies: list[Any] | Exception) -> None:
        """Give each caller of a pipelined batch its reply; calls that met NOSCRIPT run again.

        A batch whose connection broke (Redis closed it: its idle timeout, a restart, a failover)
        runs again on a pooled connection, which the pool checks before handing it out. That is
        why `pipelined` is only for a script that may run twice: the accept script answers a second
        run of an event as a duplicate, and stores it once. A batch that timed out fails.
        """
        # Python's TimeoutError is an OSError: a slow Redis is not a closed connection.
        if isinstance(replies, RedisConnectionError | OSError) and not isinstance(replies, TimeoutError):
            self._start(self._send(batch))
            return
        if isinstance(replies, Exception):
            results: list[Any] = [replies] * len(batch)
        else:
            try:
                results = self._replies(batch, replies)
            except ResponseError as exc:
                results = [exc] * len(batch)
        answered = list(zip(batch, results, strict=True))
        again = [call for call, result in answered if isinstance(result, NoScriptError)]
        if again:
            self._start(self._send(again))  # it loads the script first
        self._settle((call, result) for call, result in answered if not isinstance(result, NoScriptError))

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        # What redis-py's pipeline does for a batch (one packed write, then each reply in turn, an
        # error reply kept as its exception), without its per-batch machinery: a command stack, a lock,
        # reply callbacks and a retry wrapper that never retries here. They were a fifth of the API's
        # Python time under load (py-spy). The pool's checks on a connection it hands out stay.
        commands = self._commands(batch)
        if self.replicas:
            # Same connection: WAIT counts replicas for this connection's writes.
            commands.append(("WAIT", self.replicas, self._wait_ms))
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await connection.read_response())
                except ResponseError as exc:
                    results.append(exc)
        except BaseException:
            # Replies may be left unread (a timeout, a broken connection): never hand it out again as is.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        if self.replicas:
            confirmed = results.pop()
            if isinstance(confirmed, Exception):
                raise confirmed
            if confirmed < self.replicas:
                raise NotReplicated(
                    f"{confirmed} of {self.replicas} replicas confirmed within {self._wait_ms} ms"
                )
        return self._replies(batch, results)

    def _commands(self, batch: list[_Call]) -> list[tuple[Any, ...]]:
        """One EVALSHA per call."""
        return [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args, _ in batch]

    def _replies(self, batch: list[_Call], results: list[Any]) -> list[Any]:  # noqa: ARG002 - for subclasses
        """Each call's reply (or error) from what Redis answered to `_commands`."""
        return results

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                results = await self._execute(batch)
                missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
                if missing:
                    # First use, or Redis restarted: load the script and run those calls (which did
                    # not run at all) again.
                    await self.redis.script_load(self.script)
                    again = await self._execute([batch[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
        except (Exception, asyncio.CancelledError) as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._settle(zip(batch, results, strict=True))

    @staticmethod
    def _settle(answered: Iterable[tuple[_Call, Any]]) -> None:
        for (_, _, future), result in answered:
            if future.done():  # the caller was cancelled; the write stands regardless
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        """Close the pipelined connection (before the client's pool closes)."""
        if self._pipeline is not None:
            await self._pipeline.aclose()


class JoinedScriptBatcher(ScriptBatcher):
    """Like ScriptBatcher, but a whole batch is one EVALSHA of a script written for batches.

    The script gets every call's keys one after another, then every call's args, and returns
    `reply_size` entries per call, in order (service/store/lua/accept-11.lua). What a script costs
    Redis besides its commands (the call itself, its arguments, and whatever it can write once per
    batch, such as counters) is then paid once per batch. The whole batch is one atomic step: an error
    fails every call in it, as a broken connection would.
    """

    def __init__(self, redis: Redis, script: str, *, reply_size: int, **options: Any) -> None:
        super().__init__(redis, script, **options)
        self.reply_size = reply_size

    def _commands(self, batch: list[_Call]) -> list[tuple[Any, ...]]:
        """One EVALSHA for the batch: every call's keys, then every call's args."""
        if len(batch) == 1:  # one request at a time: the usual case at low load
            keys, args, _ = batch[0]
            return [("EVALSHA", self.sha, len(keys), *keys, *args)]
        keys = [key for call_keys, _, _ in batch for key in call_keys]
        args = [arg for _, call_args, _ in batch for arg in call_args]
        return [("EVALSHA", self.sha, len(keys), *keys, *args)]

    def _replies(self, batch: list[_Call], results: list[Any]) -> list[Any]:
        """The batch's one reply, cut into each call's `reply_size` entries (its error for each call)."""
        (reply,) = results
        if isinstance(reply, Exception):
            return [reply] * len(batch)
        size = self.reply_size
        if len(reply) != size * len(batch):
            raise ResponseError(f"the script answered {len(reply)} entries for {len(batch)} calls")
        if len(batch) == 1:
            return [reply]
        return [reply[i : i + size] for i in range(0, len(reply), size)]
