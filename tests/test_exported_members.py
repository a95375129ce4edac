"""The handler authors' public surface, `from workers import ...`, pinned as httpx pins its own."""

from __future__ import annotations

import workers
import workers.testing

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


# `from workers.testing import ...`: the test kit is a module of its own, not in `workers.__all__`, so
# `from workers import ...` in a handler module does not load it; users' tests rely on these names.
TESTING = {"NotGiven", "Outcome", "make_event", "run_handler"}


def test_the_test_kit_is_its_own_module_with_exactly_its_public_surface() -> None:
    """`workers.testing.__all__` is exactly the test kit, each name documented; not in `workers.__all__`."""
    assert set(workers.testing.__all__) == TESTING
    for name in workers.testing.__all__:
        assert getattr(workers.testing, name).__doc__, f"workers.testing.{name} has no docstring"
    assert not TESTING & set(workers.__all__)
    assert "testing" not in workers.__all__
