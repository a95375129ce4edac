"""One log line per outcome: JSON when not on a TTY, readable when on one.

Callers pass structured fields with `extra={...}`; only the fields in `FIELDS` are printed,
so a stray attribute can never put a payload into a log line. With tracing on, a line written inside
a span carries its `trace_id` and `span_id` (set on the record by service/tracing.py).

The API logs every accepted event, so a line must be cheap: orjson, and no caller, thread or
process lookups that no line prints (41 -> 18 us per line, measured).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping

FIELDS = (
    "event_id",
    "type",
    "outcome",
    "reason",
    "handler",
    "attempt",
    "duration_ms",
    "status",
    "retry_in_s",
    "error",
    "sha256",
    "first_sha256",
    "count",
    "worker",
    "secret_index",
    "detail",
    "fields",
    "trace_id",
    "span_id",
)


class FieldsFormatter(logging.Formatter):
    """A formatter that can also render a line from its parts, without a `LogRecord` (see `info`)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record: its parts, then the exception of an ERROR or worse."""
        line = self.format_fields(
            record.created, record.levelname, record.name, record.getMessage(), record.__dict__
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            line = self.with_exception(line, self.formatException(record.exc_info))
        return line

    def format_fields(
        self, created: float, level: str, name: str, msg: str, fields: Mapping[str, object]
    ) -> str:
        """One line from its parts; only the names in `FIELDS` are taken from `fields`."""
        raise NotImplementedError

    def with_exception(self, line: str, exception: str) -> str:
        """`line` with a formatted exception added."""
        raise NotImplementedError


class JSONFormatter(FieldsFormatter):
    """`{"ts", "level", "logger", "msg", ...fields}` on one line."""

    def format_fields(
        self, created: float, level: str, name: str, msg: str, fields: Mapping[str, object]
    ) -> str:
        """Render one line as a JSON object."""
        line: dict[str, object] = {
            "ts": round(created, 3),
            "level": level.lower(),
            "logger": name,
            "msg": msg,
        }
        line.update({k: fields[k] for k in FIELDS if k in fields})
        return orjson.dumps(line, default=str).decode()

    def with_exception(self, line: str, exception: str) -> str:
        """The same object with `exc` last."""
        return line[:-1] + "," + orjson.dumps({"exc": exception}).decode()[1:]


class ConsoleFormatter(FieldsFormatter):
    """`12:00:01 INFO  msg  key=value ...` for people at a terminal."""

    def format_fields(
        self, created: float, level: str, name: str, msg: str, fields: Mapping[str, object]
    ) -> str:
        """Render one short human line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(created))
        pairs = " ".join(f"{k}={fields[k]}" for k in FIELDS if k in fields)
        return f"{stamp} {level:<7} {name}: {msg}  {pairs}".rstrip()

    def with_exception(self, line: str, exception: str) -> str:
        """The traceback on the lines below."""
        return line + "\n" + exception


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one event-loop turn in one write.

    The API logs a line per accepted event, and each line was its own write() system call, about
    6% of the API's time under load (py-spy). Once `attach`ed to the loop, INFO and DEBUG lines
    emitted on the loop's thread wait for the end of the current turn (`call_soon`), microseconds,
    and leave together. A WARNING or worse, a line from another thread, or one before `attach`
    is written at once, after whatever waits, so lines keep their order.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._waiting: list[str] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Buffer lines emitted on `loop`'s thread (call from inside the loop)."""
        self._loop, self._thread = loop, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        """Buffer an INFO/DEBUG line of the loop's thread; write anything else at once."""
        loop = self._loop
        if loop is None or record.levelno >= logging.WARNING or threading.get_ident() != self._thread:
            self._write_waiting()
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:  # logging's contract: report the error, never raise it
            self.handleError(record)
            return
        self._buffer(loop, line)

    def buffering_here(self) -> bool:
        """Whether an INFO line emitted now, on this thread, would wait for the end of the turn."""
        return self._loop is not None and threading.get_ident() == self._thread

    def buffer_info(
        self, formatter: FieldsFormatter, name: str, msg: str, fields: Mapping[str, object]
    ) -> None:
        """Buffer the INFO line of `fields` (see `info`); call only where `buffering_here()`."""
        line = formatter.format_fields(time.time(), "INFO", name, msg, fields)
        assert self._loop is not None  # buffering_here() said so
        with self.lock:  # type: ignore[union-attr] # another thread's warning may be writing what waits
            self._buffer(self._loop, line)

    def _buffer(self, loop: asyncio.AbstractEventLoop, line: str) -> None:
        if not self._waiting:
            if loop.is_closed():
                self.stream.write(line + self.terminator)
                self.flush()
                return
            loop.call_soon(self.flush)
        self._waiting.append(line)

    def flush(self) -> None:
        """Write what waits, then flush the stream (also at exit, by `logging.shutdown`)."""
        with self.lock:  # type: ignore[union-attr]
            self._write_waiting()
            super().flush()

    def _write_waiting(self) -> None:
        if self._waiting:
            lines, self._waiting = self._waiting, []
            self.stream.write(self.terminator.join(lines) + self.terminator)


class _Stamping:
    """A record factory that adds `stamp()`'s fields to every record the previous factory makes."""

    def __init__(
        self, previous: Callable[..., logging.LogRecord], stamp: Callable[[], dict[str, str]]
    ) -> None:
        self.previous = previous
        self.stamp = stamp

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        record.__dict__.update(self.stamp())
        return record


def stamp_records(stamp: Callable[[], dict[str, str]]) -> Callable[[], None]:
    """Add the fields `stamp()` returns to every log line from now on; returns what undoes it.

    Tracing's way of putting the current span's ids on each line (service/tracing.py). `info` knows
    this factory, so its direct path stays open: it adds the same fields itself.
    """
    factory = _Stamping(logging.getLogRecordFactory(), stamp)
    logging.setLogRecordFactory(factory)
    return lambda: logging.setLogRecordFactory(factory.previous)


def _sole_turn_handler(
    logger: logging.Logger, factory: Callable[..., logging.LogRecord]
) -> TurnBufferedHandler | None:
    """The `TurnBufferedHandler` that alone would write an INFO line of `logger`, or None.

    None too when the line would not be buffered on this thread, or when something else could act
    on the record: a filter, or a record `factory` other than `stamp_records`' over logging's own.
    """
    if logger.filters or (
        factory is not logging.LogRecord
        and not (isinstance(factory, _Stamping) and factory.previous is logging.LogRecord)
    ):
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None:
                return None
            found = handler
        current = current.parent if current.propagate else None
    if (
        not isinstance(found, TurnBufferedHandler)
        or found.filters
        or found.level > logging.INFO
        or not found.buffering_here()
    ):
        return None
    return found


def info(logger: logging.Logger, msg: str, fields: Mapping[str, object]) -> None:
    """`logger.info(msg, extra=fields)`, the same line, without a `LogRecord` where none is needed.

    The API logs every event it accepts, and logging's machinery (a record of some twenty
    attributes, the handler's lookups and locks) cost more than the line itself. When the line
    would reach exactly one `TurnBufferedHandler`, buffering on this thread, with no filter and no
    record factory on the way but `stamp_records`' (whose fields it adds itself: tracing's span
    ids), it is formatted from `fields` and buffered at once; otherwise it goes through
    `logger.info` as usual.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    factory = logging.getLogRecordFactory()
    handler = _sole_turn_handler(logger, factory)
    formatter = handler.formatter if handler is not None else None
    if handler is None or not isinstance(formatter, FieldsFormatter):
        logger.info(msg, extra=fields)
        return
    if isinstance(factory, _Stamping):
        stamped = factory.stamp()
        if stamped:
            fields = {**fields, **stamped}
    handler.buffer_info(formatter, logger.name, msg, fields)


def buffer_on(loop: asyncio.AbstractEventLoop) -> None:
    """Let the root logger's handler buffer lines per turn of `loop` (see `TurnBufferedHandler`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TurnBufferedHandler):
            handler.attach(loop)


def configure(*, level: str, fmt: Literal["auto", "json", "console"]) -> None:
    """Install our formatter on the root logger; arq and uvicorn lines go through it too."""
    # Documented switches (logging HOWTO, "Optimization"): what no formatter of ours prints.
    logging._srcfile = None  # noqa: SLF001
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if use_json else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # arq logs each job's arguments and results at INFO; ours carry only ids, but results could
    # be anything a handler returns, so keep arq's own job lines at WARNING.
    logging.getLogger("arq.worker").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("arq.jobs").setLevel(max(logging.WARNING, logging.getLevelName(level)))
