"""`oa-webhooks console`: the operator console's sessions (kept in Redis, service/store/sessions.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from redis.exceptions import RedisError

from service.ops.cli.redis_access import operator_redis, operator_settings
from service.store.sessions import end_all_sessions

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help="Manage console sessions.")


@app.command("sign-out-all")
def sign_out_all(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask first")] = False,
) -> None:
    """End every console session at once: each browser must sign in again with OA_ADMIN_TOKEN."""
    settings = operator_settings()
    if not yes:
        typer.confirm("End every console session?", abort=True)

    async def go() -> int:
        async with operator_redis(settings) as redis:
            return await end_all_sessions(redis, now_ms=time.time_ns() // 1_000_000)

    try:
        ended = asyncio.run(go())
    except (RedisError, OSError) as exc:
        typer.echo(f"cannot reach Redis ({type(exc).__name__}); is REDIS_URL right and Redis up?", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"ended {ended} console session(s). If the token itself may have leaked, set a new "
        "OA_ADMIN_TOKEN and restart the API: signing in needs it."
    )
