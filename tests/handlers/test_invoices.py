"""Tests of workers/handlers/invoices.py, the example: see test_leads.py for the pattern."""

from __future__ import annotations

import pytest

from workers.handlers.invoices import log_invoice_event
from workers.testing import make_event, run_handler


@pytest.mark.parametrize("event_type", ["invoice.created", "invoice.paid"])
async def test_every_invoice_event_is_done_and_logged_by_its_type(event_type: str) -> None:
    """Each invoice event type is handled at the first try, with one INFO line that names the type."""
    outcome = await run_handler(log_invoice_event, make_event(event_type, invoice_id=7))
    assert outcome.state == "done", outcome.error
    assert outcome.logs == (f"INFO example handler saw {event_type}",)
