"""`oa-webhooks worker`: run the arq worker, and run it again when it loses Redis.

arq's worker exits when Redis restarts (python-arq/arq#435). This loop builds a fresh worker
after a lost connection, with backoff, so the process survives a Redis restart on its own;
compose's `restart:` policy is the second line of defence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import httpx
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import tracing
from service.store import queue
from service.store.stats import WORKERS_KEY, worker_key
from workers.registry import load_handlers, registered
from workers.runtime.claim import ClaimedJob, Claimer
from workers.runtime.job import WorkerState, process_event
from workers.runtime.journal import Journal
from workers.runtime.protect import plan_for
from workers.runtime.reconciler import reconcile_forever
from workers.runtime.retry import Backoff

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from service.settings import Settings

log = logging.getLogger("oa.worker")
# arq counts a job's tries itself and gives up past max_tries; our ledger does the counting,
# per handler, so arq's limit only has to be out of the way.
_ARQ_MAX_TRIES = 1_000_000
# The heartbeat alone (OA_HEARTBEAT_INTERVAL_S, 5 s by default) left the job counts in `status`
# up to an interval old: "complete 0, running 10" after ten events were done. Changed counts are
# written on the next poll instead, at most this often.
COUNTS_REFRESH_S = 0.5


class _Worker(Worker):
    """arq's worker, with our heartbeat and our claim.

    The heartbeat is a sorted set of live workers, written from the poll loop; the claim takes
    many due jobs per round trip (workers/runtime/claim.py).
    """

    worker_id: str
    started_ms: int
    claimer: Claimer
    _published: tuple[int, int, int, int] | None = None

    def carry_counts(self, previous: Worker) -> None:
        """Continue the job counts of the worker this one replaces (same process, after a lost Redis)."""
        self.jobs_complete = previous.jobs_complete
        self.jobs_failed = previous.jobs_failed
        self.jobs_retried = previous.jobs_retried

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim as many of `job_ids` as there are free slots, in one script, and start each."""
        free = self.max_jobs - self.job_counter
        claims: dict[str, ClaimedJob] = self.ctx["oa"].claims
        for job in await self.claimer.claim(job_ids, limit=free, now_ms=timestamp_ms()):
            claims[job.id] = job
            await self.sem.acquire()  # never waits: at most the free slots were claimed
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job.id, job.score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job.id] = task

    async def record_health(self) -> None:
        """Write the heartbeat every interval, and the job counts once they change (at most every 0.5 s)."""
        now = time.time()
        since_s = now - self._last_health_check
        running = sum(not t.done() for t in self.tasks.values())
        counts = (self.jobs_complete, self.jobs_failed, self.jobs_retried, running)
        if since_s < self.health_check_interval and (counts == self._published or since_s < COUNTS_REFRESH_S):
            return
        self._last_health_check = now
        self._published = counts
        now_ms = int(now * 1000)
        ttl_s = int(self.health_check_interval * 3) + 1
        async with self.pool.pipeline(transaction=True) as tx:
            tx.zadd(WORKERS_KEY, {self.worker_id: now_ms})
            tx.hset(
                worker_key(self.worker_id),
                mapping={
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_ms": self.started_ms,
                    "heartbeat_ms": now_ms,
                    "jobs_complete": self.jobs_complete,
                    "jobs_failed": self.jobs_failed,
                    "jobs_retried": self.jobs_retried,
                    "running": running,
                },
            )
            tx.expire(worker_key(self.worker_id), ttl_s)
            tx.zremrangebyscore(WORKERS_KEY, "-inf", now_ms - 3_600_000)
            await tx.execute()


def handler_http_client(settings: Settings, *, traces: tracing.Tracing | None = None) -> httpx.AsyncClient:
    """The `ctx.http` that every handler of this worker shares: each connect, read and write bounded.

    With `traces`, each call is a CLIENT span of the handler's run and sends its `traceparent`.
    """
    client = httpx.AsyncClient(timeout=settings.handler_http_timeout_s)
    if traces:
        traces.instrument(client)
    return client


def build_worker(
    settings: Settings, redis: Any, *, http: httpx.AsyncClient, worker_id: str, tracer: Tracer | None = None
) -> _Worker:
    """The arq worker with our job and the settings' tuning; `tracer` while tracing is on."""
    state = WorkerState(
        settings=settings,
        backoff=Backoff.from_settings(settings),
        http=http,
        redis=redis,
        journal=Journal(redis, retention_s=settings.retention_s, queue_expiry_ms=settings.queue_expiry_ms),
        tracer=tracer,
    )
    worker = _Worker(
        functions=[
            func(
                process_event,
                name=queue.JOB_FUNCTION,
                max_tries=_ARQ_MAX_TRIES,
                timeout=settings.arq_job_timeout_s,
            )
        ],
        queue_name=queue.QUEUE_NAME,
        redis_pool=redis,
        handle_signals=False,
        job_completion_wait=settings.shutdown_grace_s,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.poll_delay_s,
        # Running jobs stay at the head of the queue, so the read limit caps concurrency fleet-wide.
        queue_read_limit=max(1000, settings.worker_concurrency * 10),
        keep_result=0,
        job_timeout=settings.arq_job_timeout_s,
        max_tries=_ARQ_MAX_TRIES,
        health_check_interval=settings.heartbeat_interval_s,
        ctx={"oa": state},
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
        log_results=False,
    )
    worker.worker_id = worker_id
    worker.started_ms = int(time.time() * 1000)
    claim_ttl_ms = int(worker.in_progress_timeout_s * 1000)
    worker.claimer = Claimer(
        redis,
        queue_name=queue.QUEUE_NAME,
        claim_ttl_ms=claim_ttl_ms,
        plan=plan_for(registered(), settings),
    )
    return worker


async def _teardown(worker: Worker, redis: Any) -> None:
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    with contextlib.suppress(RedisError, OSError):
        await redis.zrem(WORKERS_KEY, getattr(worker, "worker_id", ""))
    with contextlib.suppress(RedisError, OSError):
        await redis.aclose(close_connection_pool=True)


class _Stopper:
    """SIGTERM/SIGINT: stop taking jobs and give running handlers the grace period; a second one: stop now."""

    def __init__(self, grace_s: int) -> None:
        self.grace_s = grace_s
        self.stopping = asyncio.Event()
        self.worker: Worker | None = None

    def __call__(self, signum: signal.Signals) -> None:
        if self.stopping.is_set():
            if self.worker:
                self.worker.handle_sig(signum)
            return
        self.stopping.set()
        log.info("stopping: no new jobs; running handlers get %ss to finish", self.grace_s)
        # Before its poll loop runs, a worker has nothing to wind down (and arq's handler would
        # miss the loop it starts a moment later): `_run_once` sees `stopping` and does not start.
        if self.worker and self.worker.main_task is not None:
            self.worker.handle_sig_wait_for_completion(signum)


async def _ping(redis: Any, *, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await redis.ping()
    except TimeoutError:
        raise RedisTimeoutError(f"Redis did not answer a PING within {timeout_s:g}s") from None


async def _watch(redis: Any, *, interval_s: float, timeout_s: float) -> None:
    """PING every `interval_s`; raise when Redis takes longer than `timeout_s` to answer.

    The worker's connections have no per-read timeout (`queue.connect_arq`), so a Redis that is
    frozen or cut off without a reset would otherwise hang the worker: this turns it into a lost
    connection, which `serve` answers with a fresh worker.
    """
    while True:
        await asyncio.sleep(interval_s)
        await _ping(redis, timeout_s=timeout_s)


async def _run_once(worker: _Worker, redis: Any, stopper: _Stopper) -> bool:
    """Run one worker (and the reconciler and watchdog beside it) until it stops; True if it lost Redis."""
    settings = worker.ctx["oa"].settings
    reconciler = asyncio.create_task(reconcile_forever(worker.ctx["oa"], worker_id=worker.worker_id))
    watchdog = asyncio.create_task(
        _watch(redis, interval_s=settings.heartbeat_interval_s, timeout_s=settings.redis_timeout_s)
    )
    run: asyncio.Task[None] | None = None
    try:
        await _ping(redis, timeout_s=settings.redis_timeout_s)
        if stopper.stopping.is_set():
            return False
        run = asyncio.create_task(worker.async_run())
        await asyncio.wait({run, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            watchdog.result()  # raises: the watchdog only ends by finding Redis gone
        run.result()
    except asyncio.CancelledError:
        if not stopper.stopping.is_set():
            raise
    except (RedisError, OSError) as exc:
        log.warning("lost Redis (%s)", type(exc).__name__, extra={"error": type(exc).__name__})
        return True
    finally:
        tasks = [task for task in (reconciler, watchdog, run) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _teardown(worker, redis)
    return False


async def serve(settings: Settings) -> None:
    """Run workers until SIGTERM/SIGINT; after a lost Redis connection, start a new one with backoff."""
    load_handlers(settings.handlers_package)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    stopper = _Stopper(settings.shutdown_grace_s)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopper, signum)
    delay_s = 0.5
    async with (
        tracing.running(tracing.WORKER_SERVICE) as traces,
        handler_http_client(settings, traces=traces) as http,
    ):
        while not stopper.stopping.is_set():
            redis = queue.connect_arq(
                settings.redis_url.get_secret_value(),
                timeout_s=settings.redis_timeout_s,
                sentinel=settings.sentinel,
            )
            previous = stopper.worker
            stopper.worker = build_worker(
                settings, redis, http=http, worker_id=worker_id, tracer=traces.tracer if traces else None
            )
            if previous is not None:
                stopper.worker.carry_counts(previous)
            started = time.monotonic()
            if not await _run_once(stopper.worker, redis, stopper):
                break
            # Back off while Redis stays away; start over once a worker has run for a while.
            delay_s = 0.5 if time.monotonic() - started > 30 else min(delay_s * 2, 10)
            log.info("reconnecting to Redis in %.1fs", delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopper.stopping.wait(), delay_s)
    log.info("worker stopped", extra={"worker": worker_id})
