"""What a handler gets besides the event: Redis, a logger bound to the event, shared clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis


class PermanentError(Exception):
    """Raise from a handler when trying again cannot help: the event goes straight to dead letters."""


class RetryLater(Exception):
    """Raise from a handler to try again no sooner than `after_s` seconds from now; it counts as a try.

    For an SDK that says "try again in N seconds" without raising `httpx.HTTPStatusError` (whose 429
    or 503 with `Retry-After` the worker honours by itself). The wait may exceed the backoff's cap,
    up to `OA_RETRY_AFTER_MAX_S`.
    """

    def __init__(self, message: str = "", *, after_s: float) -> None:
        super().__init__(message or f"retry in {after_s:g}s")
        self.after_s = after_s


@dataclass(frozen=True, slots=True)
class Context:
    """Per-call context. `log` carries the event id, type, handler and attempt on every line."""

    redis: Redis
    http: httpx.AsyncClient
    log: logging.LoggerAdapter[logging.Logger]
    handler: str
    attempt: int
    max_tries: int

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now sends the event to dead letters."""
        return self.attempt >= self.max_tries


class _BoundLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind_logger(logger: logging.Logger, **fields: Any) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose lines carry `fields` (see `service.logs.FIELDS`) besides their own extras."""
    return _BoundLogger(logger, fields)
