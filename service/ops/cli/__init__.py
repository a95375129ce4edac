"""`oa-webhooks`: run the API or a worker, send a signed test event, run the whole stack locally."""

from __future__ import annotations

import sys
import traceback

import typer
import uvloop

from service.logs import configure
from service.ops.cli import console, dlq, events, handlers, local, scaffold, sender, status
from service.settings import load_settings_or_exit

# Pretty exceptions print local variables, which could include the secret: keep them off.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command("send")(sender.send)
app.command("run")(local.run)
app.command("healthcheck")(local.healthcheck)
app.add_typer(dlq.app, name="dlq")
app.add_typer(events.app, name="events")
app.add_typer(handlers.app, name="handlers")
app.add_typer(console.app, name="console")
app.add_typer(scaffold.app, name="new")
app.command("status")(status.status)


@app.command()
def api() -> None:
    """Serve the webhook endpoint (uvicorn) on OA_HOST:OA_PORT, in OA_API_PROCESSES processes."""
    from service.api.processes import run_api  # noqa: PLC0415 - only this command needs uvicorn

    settings = load_settings_or_exit()
    configure(level=settings.log_level, fmt=settings.log_format)
    run_api(settings)


@app.command()
def worker() -> None:
    """Run an arq worker with every handler module in OA_HANDLERS_PACKAGE."""
    from workers.registry import HandlerModuleError  # noqa: PLC0415
    from workers.runtime.main import serve  # noqa: PLC0415

    settings = load_settings_or_exit()
    configure(level=settings.log_level, fmt=settings.log_format)
    try:
        # uvloop, as the API uses: the worker is CPU-bound on Redis round trips (bench: -15% CPU).
        uvloop.run(serve(settings))
    except HandlerModuleError as exc:
        # The traceback shows the line to fix; the last line says what failed (`run` compares it).
        traceback.print_exception(exc.__cause__ or exc)
        print(f"oa-webhooks worker: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


def main() -> None:
    """Console-script entry point."""
    # `status --watch` without a number means every 2 s (click has no optional option values).
    args = sys.argv[1:]
    if "--watch" in args:
        at = args.index("--watch") + 1
        if at == len(args) or args[at].startswith("-"):
            args.insert(at, "2")
    app(args)


__all__ = ["app", "main"]
