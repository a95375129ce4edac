"""`oa-webhooks send TYPE`: post a correctly signed, realistic sample event (like `stripe trigger`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from service.api.ingest import PATH
from service.api.signature import SIGNATURE_HEADER, sign
from service.settings import load_settings_or_exit
from workers.events import SAMPLES, sample_body


def _read_data(data: str) -> dict[str, Any]:
    try:
        text = Path(data[1:]).read_text(encoding="utf-8") if data.startswith("@") else data
        value = json.loads(text)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {data[1:]}: {exc.strerror}") from None
    except ValueError as exc:
        raise typer.BadParameter(f"--data is not JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("--data must be a JSON object (the payload)")
    return value


def send(
    event_type: Annotated[
        str,
        typer.Argument(
            help="lead.created, lead.sold, lead.invoiced, lead.paid, "
            "invoice.created, invoice.paid, or any other type"
        ),
    ],
    url: Annotated[str | None, typer.Option(help="endpoint; default http://127.0.0.1:OA_PORT" + PATH)] = None,
    data: Annotated[str | None, typer.Option(help="payload as JSON, or @file")] = None,
    event_id: Annotated[str | None, typer.Option("--id", help="event id (default: random)")] = None,
) -> None:
    """Post a signed sample event and print the status and response body."""
    settings = load_settings_or_exit()
    body = sample_body(event_type, event_id=event_id, payload=_read_data(data) if data else None)
    target = url or f"http://127.0.0.1:{settings.port}{PATH}"
    headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, settings.secrets[0])}
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        typer.echo(f"could not reach {target}: {exc}. Is the API running (make run)?", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{response.status_code} {response.text}")
    if response.status_code >= 400:
        raise typer.Exit(1)


__all__ = ["SAMPLES", "sample_body", "send"]
