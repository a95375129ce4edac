"""`on(...)`: register a handler for event types; and the loading of every module in `workers/handlers/`."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from workers.events import KNOWN_TYPES

if TYPE_CHECKING:
    from workers.context import Context
    from workers.events import Event

HandlerFunc = Callable[["Event", "Context"], Awaitable[None]]
OnDead = Literal["hold", "skip"]
log = logging.getLogger("oa.worker")
# The payload ids the ledger records at ingest (`lead_id`, `invoice_id` fields and their indexes):
# the only ones an ordered handler can be ordered by.
ORDER_KEYS = ("lead_id", "invoice_id")


_RATE = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
_RATE_WINDOW_S = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `starts` starts in any window of `window_s` seconds (`"10/s"`, `"600/m"`, `"5000/h"`)."""

    starts: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`"N/s"`, `"N/m"` or `"N/h"`, as Celery's `rate_limit` writes it; N at least 1."""
        match = _RATE.fullmatch(text)
        if not match or int(match[1]) < 1:
            raise ValueError(
                f"rate={text!r}: write starts per second, minute or hour, such as '10/s' or '600/m'"
            )
        return cls(int(match[1]), _RATE_WINDOW_S[match[2]])

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}[self.window_s]
        return f"{self.starts}/{unit}"


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler. `name` (module.function) keys its retry state in the ledger."""

    name: str
    func: HandlerFunc
    patterns: tuple[str, ...]
    max_tries: int | None
    retry_on: tuple[type[BaseException], ...] | None
    order_key: str | None = None
    on_dead: OnDead = "hold"
    # Protection of what the handler calls (workers/runtime/protect.py): at most `concurrency` runs at
    # once and `rate` = (starts, per seconds) across the fleet; a circuit breaker unless `breaker=False`.
    concurrency: int | None = None
    rate: Rate | None = None
    breaker: bool = True

    def tries(self, default: int) -> int:
        """How many tries this handler gets: its own `on(..., max_tries=N)`, else `default` (OA_MAX_TRIES)."""
        return self.max_tries or default

    @property
    def ordered(self) -> bool:
        """True when the handler sees each key's events one at a time, in acceptance order."""
        return self.order_key is not None

    def matches(self, event_type: str) -> bool:
        """True when one pattern is the type, its `prefix.*`, or `*`."""
        return any(
            p in ("*", event_type) or (p.endswith(".*") and event_type.startswith(p[:-1]))
            for p in self.patterns
        )


_handlers: dict[str, Handler] = {}


def _check_pattern(pattern: str) -> None:
    if not pattern or not pattern.strip():
        raise ValueError("an event type pattern must not be empty")
    if pattern == "*" or pattern in KNOWN_TYPES:
        return
    if pattern.endswith(".*") and any(t.startswith(pattern[:-1]) for t in KNOWN_TYPES):
        return
    # Unknown names warn, they do not crash: the provider's webhooks are in beta and gain types.
    log.warning("handler pattern %r matches no documented event type", pattern)


def _order_key(*, ordered: bool, order_key: str | None, on_dead: str) -> str | None:
    if order_key is not None and order_key not in ORDER_KEYS:
        raise ValueError(
            f"order_key={order_key!r} cannot order events: use 'lead_id' or 'invoice_id', "
            "the only payload ids the ledger records when it accepts an event"
        )
    key = order_key or ("lead_id" if ordered else None)
    if on_dead not in ("hold", "skip"):
        raise ValueError(f"on_dead={on_dead!r}: use 'hold' (the default) or 'skip'")
    if on_dead != "hold" and key is None:
        raise ValueError("on_dead applies to ordered handlers only: add ordered=True")
    return key


def on(
    *types: str,
    max_tries: int | None = None,
    retry_on: tuple[type[BaseException], ...] | None = None,
    ordered: bool = False,
    order_key: str | None = None,
    on_dead: OnDead = "hold",
    concurrency: int | None = None,
    rate: str | None = None,
    breaker: bool = True,
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Register the decorated coroutine for these event types (`"lead.paid"`, `"lead.*"`, `"*"`).

    `max_tries` overrides `OA_MAX_TRIES` for this handler; `retry_on` limits retries to those
    exception types (anything else goes straight to dead letters).

    `ordered=True` runs the handler for one lead's events one at a time, in the order the API
    accepted them (see `workers/__init__.py`); `order_key="invoice_id"` orders by invoice instead
    (and implies `ordered`). `on_dead="skip"` lets later events go on when an earlier one is dead;
    by default (`"hold"`) they wait for it to be replayed.

    `concurrency=N`: at most N runs of this handler at once, across every worker. `rate="10/s"` (also
    `"N/m"`, `"N/h"`): at most N starts in any window of that length, across every worker. An event
    over a limit waits without using a try, and its other handlers run. `breaker=False` opts out of
    the circuit breaker (`OA_BREAKER_FAILURES` consecutive failures pause the handler, and one probe
    run every `OA_BREAKER_PROBE_S` tests the downstream until one succeeds).
    """
    if not types:
        raise ValueError("on() needs at least one event type, e.g. on('lead.created')")
    if max_tries is not None and max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    key = _order_key(ordered=ordered, order_key=order_key, on_dead=on_dead)
    if concurrency is not None and (isinstance(concurrency, bool) or concurrency < 1):
        raise ValueError(f"concurrency={concurrency!r}: at least 1 run at once")
    limit = None if rate is None else Rate.parse(rate)
    for pattern in types:
        _check_pattern(pattern)

    def register(func: HandlerFunc) -> HandlerFunc:
        name = f"{func.__module__}.{func.__qualname__}"
        _handlers[name] = Handler(
            name, func, tuple(types), max_tries, retry_on, key, on_dead, concurrency, limit, breaker
        )
        return func

    return register


def handlers_for(event_type: str) -> list[Handler]:
    """Every registered handler whose patterns match `event_type`, in registration order."""
    return [h for h in _handlers.values() if h.matches(event_type)]


def registered() -> list[Handler]:
    """All registered handlers."""
    return list(_handlers.values())


class HandlerModuleError(Exception):
    """A handler module could not be imported; the message names it and its exception."""


def load_handlers(package: str) -> list[Handler]:
    """Import every module of `package` (default `workers.handlers`) so their `@on` calls run.

    Raises `HandlerModuleError`, naming the module, when one cannot be imported (its exception is
    the cause): a worker without all its handlers must not start.
    """
    root = importlib.import_module(package)
    for module in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        name = f"{package}.{module.name}"
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise HandlerModuleError(
                f"handler module {name} could not be imported: {type(exc).__name__}: {exc}"
            ) from exc
    handlers = registered()
    log.info("loaded %d handlers from %s", len(handlers), package, extra={"count": len(handlers)})
    return handlers
