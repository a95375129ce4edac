"""Tests of workers/handlers/leads.py, the example: the pattern for a test of your own handler module.

`workers.testing` runs the handler as the worker would, with no Redis and no secret: `make_event` gives a
realistic event of a type (fields you pass override the sample), and `run_handler` says what the worker
decides (`outcome.state`, `outcome.retry_in_s`) and what the handler logged (`outcome.logs`).
"""

from __future__ import annotations

import pytest

from workers.handlers.leads import log_lead_event
from workers.testing import make_event, run_handler


@pytest.mark.parametrize("event_type", ["lead.created", "lead.sold", "lead.invoiced", "lead.paid"])
async def test_every_lead_event_is_done_and_logged_by_its_type(event_type: str) -> None:
    """Each lead event type is handled at the first try, with one INFO line that names the type."""
    outcome = await run_handler(log_lead_event, make_event(event_type, lead_id=42))
    assert outcome.state == "done", outcome.error
    assert outcome.logs == (f"INFO example handler saw {event_type}",)


async def test_no_personal_data_reaches_the_log() -> None:
    """A lead's name and email in the payload appear in no log line: INFO logs carry ids and types only."""
    event = make_event("lead.created", name="Jan de Vries", email="jan@example.nl")
    outcome = await run_handler(log_lead_event, event)
    assert outcome.state == "done", outcome.error
    assert not [line for line in outcome.logs if "Jan" in line or "jan@" in line]
