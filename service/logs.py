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
from typing import TYPE_CHECKING, Literal, TextIO

import orjson

if TYPE_CHECKING:
    import asyncio

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


class JSONFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON object."""
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attributes = record.__dict__
        line.update({k: attributes[k] for k in FIELDS if k in attributes})
        if record.exc_info and record.levelno >= logging.ERROR:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 INFO  msg  key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a short human line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={record.__dict__[k]}" for k in FIELDS if k in record.__dict__)
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}  {fields}".rstrip()
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


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
