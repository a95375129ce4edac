"""Example: log every lead event. Replace the body with your own; keep personal data out of INFO logs."""

from workers import Context, Event, on


@on("lead.created", "lead.sold", "lead.invoiced", "lead.paid")
async def log_lead_event(event: Event, ctx: Context) -> None:
    """Log the id and type only: the payload holds a lead's personal data."""
    ctx.log.info("example handler saw %s", event.type)
