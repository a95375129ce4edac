"""The console's sessions and its sign-in throttle, in Redis, where every API process sees them.

- `oa:console:sessions`: a sorted set of session ids (the random nonce in the cookie,
  service/ops/console/auth.py), scored by when each ends (ms). A cookie opens the console only while
  its id is there and not past its end: signing out removes the id, so a copy of the cookie is
  worthless from then on, and `oa-webhooks console sign-out-all` deletes the whole set. The key
  expires with its newest session (they all last `SESSION_TTL_S`), and each sign-in drops ended ids.
- `oa:console:signin-failures:<address>` and `oa:console:signin-paused:<address>`: wrong tokens from
  one client address in a sliding minute; the tenth pauses sign-in for that address for a minute
  (service/store/lua/signin-failed-2.lua), whatever token it then sends.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

from service.store.scripts import load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

SESSIONS_KEY = "oa:console:sessions"
SIGNIN_LIMIT = 10  # wrong tokens from one address ...
SIGNIN_WINDOW_S = 60  # ... within this long pause sign-in for it ...
SIGNIN_BLOCK_S = 60  # ... for this long
_SIGNIN_FAILED = load_script("service.store", "signin-failed-2")


def failures_key(address: str) -> str:
    """The recent wrong tokens of one client address."""
    return f"oa:console:signin-failures:{address}"


def blocked_key(address: str) -> str:
    """Exists while sign-in is paused for one client address."""
    return f"oa:console:signin-paused:{address}"


async def start_session(redis: Redis, session_id: str, *, ends_ms: int, now_ms: int) -> None:
    """Record a new session until `ends_ms`; drop the ids of sessions that have ended."""
    async with redis.pipeline(transaction=True) as tx:
        tx.zremrangebyscore(SESSIONS_KEY, "-inf", now_ms)
        tx.zadd(SESSIONS_KEY, {session_id: ends_ms})
        tx.pexpireat(SESSIONS_KEY, ends_ms)  # every session lasts as long: the newest ends last
        await tx.execute()


async def session_is_live(redis: Redis, session_id: str, *, now_ms: int) -> bool:
    """Whether the session was started here, is not signed out, and has not ended."""
    ends_ms = await redis.zscore(SESSIONS_KEY, session_id)
    return ends_ms is not None and ends_ms > now_ms


async def end_session(redis: Redis, session_id: str) -> None:
    """Sign one session out: its cookie opens nothing any more."""
    await redis.zrem(SESSIONS_KEY, session_id)


async def end_all_sessions(redis: Redis, *, now_ms: int) -> int:
    """Sign every session out; how many were live."""
    async with redis.pipeline(transaction=True) as tx:
        tx.zcount(SESSIONS_KEY, f"({now_ms}", "+inf")
        tx.delete(SESSIONS_KEY)
        live, _ = await tx.execute()
    return int(live)


async def signin_paused_s(redis: Redis, address: str) -> int:
    """Seconds left of the pause on sign-in from `address` (rounded up), 0 when it may sign in."""
    left_ms = await redis.pttl(blocked_key(address))
    return max(0, -(-int(left_ms) // 1000))


async def signin_failed(redis: Redis, address: str, *, now_ms: int) -> bool:
    """Count a wrong token from `address`; True when it started a pause (log that once)."""
    argument = {
        "now_ms": now_ms,
        "window_ms": SIGNIN_WINDOW_S * 1000,
        "limit": SIGNIN_LIMIT,
        "pause_ms": SIGNIN_BLOCK_S * 1000,
        "member": f"{now_ms}-{secrets.token_hex(4)}",  # two failures in one millisecond count twice
    }
    keys = [failures_key(address), blocked_key(address)]
    started = await redis.register_script(_SIGNIN_FAILED)(keys=keys, args=[json.dumps(argument)])
    return bool(started)


async def signin_succeeded(redis: Redis, address: str) -> None:
    """A right token: forget the address's earlier wrong ones."""
    await redis.delete(failures_key(address))
