"""Example: log every invoice event. Replace the body with your own."""

from workers import Context, Event, on


@on("invoice.created", "invoice.paid")
async def log_invoice_event(event: Event, ctx: Context) -> None:
    """Log the id and type only."""
    ctx.log.info("example handler saw %s", event.type)
