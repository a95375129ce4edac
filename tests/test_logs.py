"""The log handler that writes one event-loop turn's lines together: nothing lost, order kept."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

from service import logs
from service.logs import JSONFormatter, TurnBufferedHandler


class _CountingStream(io.StringIO):
    """A text stream that counts its write() calls."""

    writes = 0

    def write(self, text: str) -> int:
        """Count, then store."""
        self.writes += 1
        return super().write(text)


def _buffered() -> tuple[_CountingStream, TurnBufferedHandler, logging.Logger]:
    """A counting stream, a JSON handler on it (not attached to a loop), and a logger using only it."""
    stream = _CountingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger(f"test.turn.{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    return stream, handler, logger


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


async def test_one_turn_of_info_lines_is_one_write_in_order() -> None:
    """100 INFO lines logged in one turn leave in one write, after the turn, in order."""
    stream, handler, logger = _buffered()
    handler.attach(asyncio.get_running_loop())
    for i in range(100):
        logger.info("line %d", i)
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert _messages(stream) == [f"line {i}" for i in range(100)]
    assert stream.writes == 1


async def test_a_warning_and_another_thread_write_at_once_after_what_waits() -> None:
    """A WARNING, or a line from another thread, is written at once, after the buffered lines."""
    stream, handler, logger = _buffered()
    handler.attach(asyncio.get_running_loop())
    logger.info("first")
    logger.warning("second")
    assert _messages(stream) == ["first", "second"]
    thread = threading.Thread(target=logger.info, args=("third",))
    thread.start()
    thread.join()
    assert _messages(stream) == ["first", "second", "third"]


def test_lines_waiting_when_the_loop_ends_are_written_by_flush() -> None:
    """A line buffered in the loop's last turn is written by flush (logging.shutdown calls it at exit)."""
    stream, handler, logger = _buffered()

    async def last_turn() -> None:
        handler.attach(asyncio.get_running_loop())
        logger.info("last")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(last_turn())
    loop.close()
    handler.flush()
    assert _messages(stream) == ["last"]
    logger.info("after the loop closed")
    assert _messages(stream) == ["last", "after the loop closed"]


def _line_both_ways(
    handler: TurnBufferedHandler, logger: logging.Logger, stream: io.StringIO
) -> list[dict[str, object]]:
    """One line through `logger.info`, one through `logs.info`, both on `handler`'s loop thread."""

    async def write() -> None:
        handler.attach(asyncio.get_running_loop())
        fields = {"event_id": "evt_1", "type": "lead.paid", "outcome": "accepted", "not_a_field": "secret"}
        logger.info("event received", extra=fields)
        logs.info(logger, "event received", fields)

    asyncio.run(write())
    handler.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_direct_info_line_is_the_line_logging_writes() -> None:
    """`logs.info` writes the very line `logger.info(..., extra=...)` writes, but the time, in order."""
    stream, handler, logger = _buffered()
    through_logging, direct = _line_both_ways(handler, logger, stream)
    assert direct.pop("ts") >= through_logging.pop("ts")
    assert direct == through_logging
    assert through_logging["event_id"] == "evt_1"
    assert "not_a_field" not in direct


def test_the_direct_info_line_steps_aside_for_a_record_factory_and_a_filter() -> None:
    """With a record factory (tracing's) or a filter on the way, `logs.info` goes through logging."""
    stream, handler, logger = _buffered()
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.trace_id = "0af7651916cd43dd8448eb211c80319c"
        return record

    logging.setLogRecordFactory(factory)
    try:
        lines = _line_both_ways(handler, logger, stream)
    finally:
        logging.setLogRecordFactory(previous)
    assert [line["trace_id"] for line in lines] == ["0af7651916cd43dd8448eb211c80319c"] * 2

    stream, handler, logger = _buffered()
    handler.addFilter(lambda record: record.getMessage() != "event received")
    assert _line_both_ways(handler, logger, stream) == []


class _RecordCounting(TurnBufferedHandler):
    """The handler, counting the records it is handed."""

    records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        super().emit(record)


def test_the_direct_info_line_carries_stamped_span_ids_without_a_record() -> None:
    """Under `stamp_records` (tracing's span ids), `logs.info` still skips the record and adds the ids."""
    stream, _, logger = _buffered()
    handler = _RecordCounting(stream)
    handler.setFormatter(JSONFormatter())
    logger.handlers[:] = [handler]
    ids = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}
    undo = logs.stamp_records(lambda: ids)
    try:
        through_logging, direct = _line_both_ways(handler, logger, stream)
    finally:
        undo()
    assert logging.getLogRecordFactory() is logging.LogRecord
    assert direct.pop("ts") >= through_logging.pop("ts")
    assert direct == through_logging
    assert direct["trace_id"] == ids["trace_id"]
    assert direct["span_id"] == ids["span_id"]
    assert handler.records == 1  # only `logger.info` made a record: `logs.info` wrote its line directly
