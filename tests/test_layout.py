"""The tree shows the architecture: few modules at each package's top, none too long to read at once."""

from __future__ import annotations

import pytest

from tests.processes import ROOT

MAX_TOP_MODULES = 8
MAX_LINES = 300


@pytest.mark.parametrize("package", ["service", "workers"])
def test_at_most_eight_modules_sit_directly_in_each_package(package: str) -> None:
    """`service/` and `workers/` keep their modules in subpackages by concern, at most 8 at the top."""
    top = sorted(p.name for p in (ROOT / package).glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


@pytest.mark.parametrize("package", ["service", "workers"])
def test_no_module_is_over_300_lines(package: str) -> None:
    """Every module under `service/` and `workers/` (handler modules aside) has at most 300 lines."""
    modules = [p for p in (ROOT / package).rglob("*.py") if "handlers" not in p.relative_to(ROOT).parts]
    assert modules
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_request_path_the_store_and_the_handlers_are_separate_folders() -> None:
    """A newcomer finds where a webhook is verified, where an event is stored, and where handlers go."""
    assert (ROOT / "service" / "api" / "signature.py").is_file()
    assert (ROOT / "service" / "store" / "ledger.py").is_file()
    assert (ROOT / "workers" / "handlers" / "__init__.py").is_file()
    assert (ROOT / "workers" / "runtime" / "main.py").is_file()
