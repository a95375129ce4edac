"""The handler authors' public surface, `from workers import ...`, pinned as httpx pins its own."""

from __future__ import annotations

import workers

# Handler modules import these; removing or renaming one breaks users' code, so it takes a change here.
PUBLIC = {
    "Context",
    "Event",
    "InvoiceCreated",
    "InvoicePaid",
    "InvoicePayload",
    "LeadCreated",
    "LeadInvoiced",
    "LeadPaid",
    "LeadPayload",
    "LeadSold",
    "Payload",
    "PermanentError",
    "RetryLater",
    "on",
}


def test_all_is_exactly_the_public_surface() -> None:
    """`workers.__all__` lists exactly the names handler authors may rely on, no more and no fewer."""
    assert set(workers.__all__) == PUBLIC


def test_every_exported_name_is_importable_and_documented() -> None:
    """Each name in `__all__` exists on the package and carries a docstring of its own."""
    for name in workers.__all__:
        member = getattr(workers, name)
        assert member.__doc__, f"workers.{name} has no docstring"
        assert member.__module__.startswith("workers."), name
        assert not member.__module__.startswith("workers.runtime"), f"{name} comes from the runtime"
