"""`oa-webhooks send TYPE`: post a correctly signed, realistic sample event (like `stripe trigger`)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from service.api.ingest import PATH
from service.api.signature import SIGNATURE_HEADER, sign
from service.settings import load_settings_or_exit

_NOW = "2024-03-01T12:00:00Z"
SAMPLES: dict[str, dict[str, Any]] = {
    "lead.created": {
        "lead_id": 12345,
        "website_code": "1cd440df63f796a1f69da652cd0209",
        "subcategory_id": "1",
        "created_at": _NOW,
    },
    "lead.sold": {
        "lead_id": 12345,
        "website_code": "1cd440df63f796a1f69da652cd0209",
        "subcategory_id": "1",
        "created_at": _NOW,
    },
    "lead.invoiced": {"lead_id": 12345, "invoice_id": 987, "created_at": _NOW},
    "lead.paid": {"lead_id": 12345, "invoice_id": 987, "created_at": _NOW},
    "invoice.created": {"invoice_id": 987, "lead_id": 12345, "created_at": _NOW},
    "invoice.paid": {"invoice_id": 987, "lead_id": 12345, "created_at": _NOW},
}


def sample_body(
    event_type: str, *, event_id: str | None = None, payload: dict[str, Any] | None = None
) -> bytes:
    """The JSON body of a sample event; unknown types get a minimal payload."""
    chosen = payload if payload is not None else SAMPLES.get(event_type, {"id": 1})
    envelope = {"id": event_id or f"evt_{secrets.token_hex(8)}", "type": event_type, "payload": chosen}
    return json.dumps(envelope).encode()


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
