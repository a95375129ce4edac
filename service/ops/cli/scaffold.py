"""`oa-webhooks new handler NAME [--on TYPE]...`: a handler module and its passing test, to edit.

Both files are written under the project root that the command runs in (the nearest directory
upwards with `pyproject.toml`), never into the installed package: `workers/handlers/NAME.py` and
`tests/handlers/test_NAME.py`. Either one already there: nothing is written (exit 1).
"""

from __future__ import annotations

import builtins
import keyword
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from workers.events import KNOWN_TYPES, PAYLOAD_MODELS

app = typer.Typer(no_args_is_help=True, help="Start a new handler: its module and its test.")

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # at most 32 characters: the written lines fit
_TYPE = re.compile(r"\*|[a-z0-9_]+(?:\.[a-z0-9_]+)*(?:\.\*)?")
MAX_TYPE_CHARS = 60
DEFAULT_TYPE = "lead.created"
# Names the two files use themselves: a handler of one of these names would shadow it.
_TAKEN = frozenset({"on", "httpx", "crm", "make_event", "run_handler", "annotations", "workers"})
_LINE_CHARS = 110  # pyproject.toml's line-length: the written files pass `make lint` as they are

HANDLER = '''\
"""{name}: post each event to your CRM. Replace URL and the body with your own."""

from workers import Context, Event, PermanentError, on

# Where your system takes the events; the tests stand an httpx.MockTransport in for it.
URL = "https://crm.example/api/events"


{decorator}
async def {name}(event: Event, ctx: Context) -> None:
    """Post the event to URL, keyed on its id."""
    # It may run more than once for one event: key every side effect on event.id.
    # Raise to retry later: backoff, or a 429/503's Retry-After, or raise RetryLater(after_s=...).
    # Raise PermanentError when retrying cannot help: the event goes straight to dead letters.
    body = {{"id": event.id, "type": event.type, "payload": event.payload.model_dump(mode="json")}}
    response = await ctx.http.post(URL, json=body, headers={{"Idempotency-Key": event.id}})
    if response.status_code in {{400, 404, 422}}:
        raise PermanentError(f"the CRM refused the event: {{response.status_code}}")
    response.raise_for_status()
    ctx.log.info("sent to the CRM")
'''

TEST = '''\
"""What the worker decides for workers/handlers/{name}.py: done, retry or dead."""

from __future__ import annotations

import httpx

from workers import PermanentError
from workers.handlers.{name} import {name}
from workers.testing import make_event, run_handler

TYPE = "{event_type}"


def crm(status: int, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client whose every request the stand-in CRM answers with `status` (and `headers`)."""
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(status, headers=headers)))


async def test_done_when_the_crm_takes_the_event() -> None:
    """A 200: done at the first try, and the CRM got the event keyed on its id."""
    sent: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    event = make_event(TYPE)
    async with httpx.AsyncClient(transport=httpx.MockTransport(accept)) as http:
        outcome = await run_handler({name}, event, http=http)
    assert outcome.state == "done", outcome.error
    assert [request.headers["Idempotency-Key"] for request in sent] == [event.id]


async def test_retried_no_sooner_than_a_busy_crm_asks() -> None:
    """A 429 with Retry-After: 120: the worker tries again, no sooner than 120 s later."""
    async with crm(429, {{"Retry-After": "120"}}) as http:
        outcome = await run_handler({name}, make_event(TYPE), http=http)
    assert outcome.state == "retry", outcome.error
    assert outcome.retry_in_s is not None
    assert outcome.retry_in_s >= 120


async def test_dead_when_the_crm_refuses_the_event() -> None:
    """A 422: retrying cannot help, so the event goes straight to dead letters."""
    async with crm(422) as http:
        outcome = await run_handler({name}, make_event(TYPE), http=http)
    assert outcome.state == "dead"
    assert isinstance(outcome.error, PermanentError)
'''


def _check_name(name: str) -> str:
    """A lowercase Python identifier that a handler module and function may take; else exit 2."""
    if name.startswith("_"):
        raise typer.BadParameter(f"{name!r}: a worker skips handler modules whose name starts with _")
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise typer.BadParameter(
            f"{name!r} is not a lowercase Python identifier of at most 32 characters: use a-z, 0-9 "
            "and _, starting with a letter (e.g. crm_sync)"
        )
    clash = (
        "a Python builtin"
        if hasattr(builtins, name)
        else "a standard library module"
        if name in sys.stdlib_module_names
        else "a name the written files use"
        if name in _TAKEN
        else "what pytest collects as a test"
        if name.startswith("test")
        else None
    )
    if clash:
        raise typer.BadParameter(f"{name!r} is {clash}: pick another name (e.g. {name}_sync)")
    return name


def _check_types(types: list[str] | None) -> list[str]:
    """Event types and patterns (`lead.paid`, `lead.*`, `*`), once each; exit 2 for one we cannot write."""
    chosen = list(dict.fromkeys(types or [DEFAULT_TYPE]))
    for pattern in chosen:
        if not _TYPE.fullmatch(pattern) or len(pattern) > MAX_TYPE_CHARS:
            raise typer.BadParameter(
                f"{pattern!r} is not an event type (lowercase, dotted, at most {MAX_TYPE_CHARS} characters): "
                "e.g. lead.created, lead.* or *",
                param_hint="'--on'",
            )
        if _first_type(pattern) == pattern and pattern not in KNOWN_TYPES:
            # Unknown types warn, they do not stop: the provider's webhooks are in beta and gain types.
            typer.echo(f"note: {pattern} matches no documented event type", err=True)
    return chosen


def _first_type(pattern: str) -> str:
    """The documented type a test sends for `pattern`: itself, the first of its prefix, or lead.created."""
    if pattern == "*":
        return DEFAULT_TYPE
    if pattern.endswith(".*"):
        return next((t for t in PAYLOAD_MODELS if t.startswith(pattern[:-1])), pattern)
    return pattern


def _decorator(types: list[str]) -> str:
    one_line = "@on(" + ", ".join(f'"{t}"' for t in types) + ")"
    if len(one_line) <= _LINE_CHARS:
        return one_line
    return "@on(\n" + "".join(f'    "{t}",\n' for t in types) + ")"


def project_root(start: Path) -> Path:
    """The nearest directory from `start` upwards that holds `pyproject.toml` and `workers/handlers/`."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            if not (folder / "workers" / "handlers").is_dir():
                break
            return folder
    typer.echo(
        f"no project here: run this in your clone of oa-webhooks (the folder with pyproject.toml and "
        f"workers/handlers/), not in {start}",
        err=True,
    )
    raise typer.Exit(1)


def handler(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="module and function name, a lowercase identifier: crm_sync")
    ],
    on: Annotated[
        list[str] | None,
        typer.Option(
            "--on", metavar="TYPE", help="event type or pattern to handle (repeat it); default lead.created"
        ),
    ] = None,
) -> None:
    """Write workers/handlers/NAME.py and tests/handlers/test_NAME.py; refuse to overwrite either."""
    name, types = _check_name(name), _check_types(on)
    root = project_root(Path.cwd())
    module = Path("workers", "handlers", f"{name}.py")
    test = Path("tests", "handlers", f"test_{name}.py")
    there = [str(path) for path in (module, test) if (root / path).exists()]
    if there:
        typer.echo(f"{' and '.join(there)} already exist{'s' * (len(there) == 1)}: nothing written", err=True)
        raise typer.Exit(1)
    (root / test.parent).mkdir(parents=True, exist_ok=True)
    if not (root / test.parent / "__init__.py").exists():
        (root / test.parent / "__init__.py").touch()
    listed = ", ".join(types)
    with (root / module).open("x", encoding="utf-8") as file:
        file.write(HANDLER.format(name=name, decorator=_decorator(types)))
    try:
        with (root / test).open("x", encoding="utf-8") as file:
            file.write(TEST.format(name=name, event_type=_first_type(types[0])))
    except FileExistsError:  # written in the meantime: leave no half of the pair
        (root / module).unlink()
        typer.echo(f"{test} already exists: nothing written", err=True)
        raise typer.Exit(1) from None
    where = "" if root == Path.cwd() else f"cd {root} && "
    typer.echo(f"wrote {module}  (the handler, on {listed}: edit it)")
    typer.echo(f"wrote {test}  (its tests: a done, a retry and a dead case)")
    typer.echo(f"next: {where}make test TESTS=tests/handlers")


app.command("handler")(handler)
