"""The operator tables at 80 columns, in a real terminal and in a pipe (issue 24), on a real stack's data."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from service.ops.cli.render import Column, fitted_table
from service.ops.cli.sender import SAMPLES, sample_body
from service.store.ledger import PENDING_KEY
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.processes import Stack, wait_for
from tests.redis_server import RedisServer

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Provider-style ids (16 characters), `oa-webhooks send`'s (20), and a longer one (24).
IDS = {
    "a056V7R7NmNRjl70": "lead.created",
    "b1X9q2LmZt7Kp0Wd": "lead.sold",
    "evt_3c1f2a9b8d7e6f50": "invoice.created",
    "evt_5e4d3c2b1a09f8e7": "lead.paid",
    "paid_2026_12_02_0001_xy": "lead.paid",
}
DEAD_IDS = {i for i, t in IDS.items() if t == "lead.paid"}
HANDLER = "workers.handlers.cli_tables.book_payment_in_the_crm"
MODULE = """
from workers import Context, Event, PermanentError, on


@on("lead.paid")
async def book_payment_in_the_crm(event: Event, ctx: Context) -> None:
    raise PermanentError('the CRM refuses this payment: HTTP 422 {"error": "unknown lead", "lead": 12345}')
"""
# Variables that would change how rich sees the terminal; each test sets what it means.
RICH_VARIABLES = ("COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Redis holding done, retried and dead events, put there by a real API and worker (then stopped)."""
    tmp = tmp_path_factory.mktemp("tables")
    server = RedisServer(tmp / "redis")
    server.start()
    stack = Stack(tmp, server.url, SECRET, OA_MAX_TRIES="1")
    try:
        stack.add_handler_module("cli_tables", MODULE)
        stack.start()
        for event_id, event_type in IDS.items():
            body = sample_body(event_type, event_id=event_id, payload=SAMPLES[event_type])
            answer = httpx.post(
                stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10
            )
            assert answer.status_code == 202, answer.text
        with server.client() as redis:
            wait_for(lambda: redis.zcard(PENDING_KEY) == 0, timeout_s=30, what="every event to finish")
        yield {k: v for k, v in stack.api.env.items() if k not in RICH_VARIABLES}
    finally:
        stack.close()
        server.stop()


def _lines(output: str) -> list[str]:
    return [ANSI.sub("", line).rstrip() for line in output.replace("\r\n", "\n").splitlines()]


def _captured(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "oa-webhooks"), *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _in_terminal(argv: list[str], env: dict[str, str], *, columns: int) -> str:
    """Run `oa-webhooks argv` in a pseudo-terminal of `columns` x 50, as a user's terminal; its output."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [str(BIN / "oa-webhooks"), *argv],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env | {"TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=10) in {0, 1}, b"".join(chunks)  # status: 1 without a live worker
    finally:
        os.close(main)
    return b"".join(chunks).decode()


def _header(lines: list[str]) -> list[str]:
    """The words of the header line above the rule (a long header's first words sit on a line above)."""
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    return lines[rule - 1].split()


def _assert_whole_within(lines: list[str], whole: set[str], columns: int) -> None:
    too_wide = [line for line in lines if len(line) > columns]
    assert not too_wide, too_wide
    for text in whole:
        assert any(re.search(rf"(^|\s){re.escape(text)}(\s|$)", line) for line in lines), (text, lines)


@pytest.mark.e2e
def test_with_columns_80_and_stdout_captured_every_id_and_handler_is_whole(env: dict[str, str]) -> None:
    """COLUMNS=80, the table asked for in a capture: no line is wider; ids, types, handler names whole."""
    as_terminal = env | {"COLUMNS": "80", "TTY_COMPATIBLE": "1"}
    events = _captured(["events", "list"], as_terminal)
    assert events.returncode == 0, events.stderr
    lines = _lines(events.stdout)
    assert _header(lines)[:3] == ["id", "type", "state"]
    _assert_whole_within(lines, set(IDS) | set(IDS.values()), 80)
    dead = _captured(["dlq", "list"], as_terminal)
    assert dead.returncode == 0, dead.stderr
    lines = _lines(dead.stdout)
    assert _header(lines)[:2] == ["id", "handler"]
    _assert_whole_within(lines, DEAD_IDS | {HANDLER}, 80)


@pytest.mark.e2e
def test_a_narrower_terminal_gets_fewer_columns_never_a_cut_id(env: dict[str, str]) -> None:
    """At 60 columns `events list` leaves columns out (the least important first); ids stay whole."""
    shown = {}
    for columns in (120, 80, 60):
        result = _captured(["events", "list"], env | {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1"})
        lines = _lines(result.stdout)
        _assert_whole_within(lines, set(IDS), columns)
        shown[columns] = _header(lines)
    assert len(shown[120]) > len(shown[80]) > len(shown[60]) >= 3
    assert shown[60][:3] == ["id", "type", "state"]
    assert "received" in shown[80]
    assert "received" not in shown[60]


@pytest.mark.e2e
def test_in_a_real_terminal_of_80_columns_the_tables_fit_and_keep_ids_whole(env: dict[str, str]) -> None:
    """In a pseudo-terminal 80 columns wide: events list, dlq list and status fit, ids and names whole."""
    events = _lines(_in_terminal(["events", "list"], env, columns=80))
    _assert_whole_within(events, set(IDS), 80)
    assert f"{len(IDS)} event(s). Details: oa-webhooks events show ID" in events
    dead = _lines(_in_terminal(["dlq", "list"], env, columns=80))
    _assert_whole_within(dead, DEAD_IDS | {HANDLER}, 80)
    status = _lines(_in_terminal(["status"], env, columns=80))
    _assert_whole_within(status, {"lead.paid", "invoice.created", "#1"}, 80)


@pytest.mark.e2e
def test_piped_lists_are_tab_separated_rows_with_the_id_first(env: dict[str, str]) -> None:
    """Not a terminal: a header line, then one tab-separated row per event (id first), nothing else."""
    events = _captured(["events", "list"], env)
    assert events.returncode == 0, events.stderr
    header, *rows = events.stdout.splitlines()
    names = ["id", "type", "state", "received_at", "lead_id", "invoice_id", "attempts", "handlers"]
    assert header.split("\t") == names
    fields = [row.split("\t") for row in rows]
    assert all(len(f) == len(names) for f in fields), rows
    assert {f[0]: f[1] for f in fields} == IDS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields[0][3])
    assert {f[2] for f in fields if f[0] in DEAD_IDS} == {"dead"}
    assert all(f"{HANDLER}: dead" in f[7] for f in fields if f[0] in DEAD_IDS)  # whole names in a pipe
    assert events.stderr == ""

    dead = _captured(["dlq", "list"], env)
    header, *rows = dead.stdout.splitlines()
    assert header.split("\t") == ["id", "handler", "type", "attempts", "last_error", "dead_at"]
    fields = [row.split("\t") for row in rows]
    assert {(f[0], f[1]) for f in fields} == {(i, HANDLER) for i in DEAD_IDS}
    assert all(f[4].endswith('{"error": "unknown lead", "lead": 12345}') for f in fields)  # whole message

    paged = _captured(["events", "list", "--limit", "2"], env)
    assert len(paged.stdout.splitlines()) == 3
    assert re.fullmatch(r"more: --cursor \S+\n", paged.stderr)


def test_an_id_wider_than_the_terminal_is_folded_never_cut() -> None:
    """When even the columns that always show cannot fit, they fold onto more lines: no character is lost."""
    long_id = "x" * 50 + "END"
    columns: tuple[Column[str], ...] = (
        Column("id", "id", lambda row: row),
        Column("note", "note", lambda _: "dropped first", drop=1),
    )
    out = io.StringIO()
    console = Console(file=out, width=30, force_terminal=True, color_system=None)
    console.print(fitted_table(console, columns, [long_id]))
    lines = _lines(out.getvalue())
    assert "note" not in lines[0]
    assert all(len(line) <= 30 for line in lines)
    assert "".join(line.strip() for line in lines[2:]) == long_id


@pytest.mark.e2e
def test_handlers_fits_80_columns_and_is_tab_separated_in_a_pipe(env: dict[str, str]) -> None:
    """`handlers`: names whole in an 80-column terminal (real and asked for); TSV, name first, in a pipe."""
    wait_for(lambda: HANDLER in _captured(["handlers"], env).stdout, timeout_s=20, what="the handler listed")
    table = _captured(["handlers"], env | {"COLUMNS": "80", "TTY_COMPATIBLE": "1"})
    lines = _lines(table.stdout)
    assert _header(lines)[:3] == ["handler", "state", "waiting"]
    _assert_whole_within(lines, {HANDLER, "active"}, 80)
    _assert_whole_within(_lines(_in_terminal(["handlers"], env, columns=80)), {HANDLER}, 80)
    piped = _captured(["handlers"], env)
    header, *rows = piped.stdout.splitlines()
    assert header.split("\t") == ["name", "state", "waiting", "since", "running", "limits"]
    assert [row.split("\t")[:3] for row in rows if row.startswith(HANDLER)] == [[HANDLER, "active", "0"]]
