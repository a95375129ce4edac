"""`oa-webhooks new handler`: in a fresh clone it writes a handler and a test that pass as written.

The clone is of this branch's last commit, and its code is the one imported (PYTHONPATH), as a user's
clone with its own `.venv` would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `git clone` of this repository, without a .env."""
    folder = tmp_path_factory.mktemp("newcomer") / "oa-webhooks"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True, timeout=60)
    return folder


def _bare_env(clone: Path) -> dict[str, str]:
    """What a new shell has: no OA_* variable, no REDIS_URL; the clone's code first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "PYTEST_")) and k != "REDIS_URL"}
    return env | {"PYTHONPATH": str(clone)}


def _run(clone: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args],
        cwd=cwd or clone,
        env=_bare_env(clone),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _changed(clone: Path) -> list[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(line[3:] for line in status.stdout.splitlines())


def test_new_handler_writes_a_module_and_a_test_that_passes_lints_and_is_never_overwritten(
    clone: Path,
) -> None:
    """From a subfolder: both files at the root; their test passes bare and lints clean; no overwrite."""
    types = ["--on", "lead.created", "--on", "lead.paid"]
    made = _run(clone, str(BIN / "oa-webhooks"), "new", "handler", "crm_sync", *types, cwd=clone / "workers")
    assert made.returncode == 0, made.stdout + made.stderr
    module, test = "workers/handlers/crm_sync.py", "tests/handlers/test_crm_sync.py"
    assert _changed(clone) == [test, module]
    assert not (ROOT / module).exists(), "written into the clone, not next to the installed package"
    lines = made.stdout.splitlines()
    assert lines[0].startswith(f"wrote {module} ")
    assert lines[1].startswith(f"wrote {test} ")
    assert lines[2] == f"next: cd {clone} && make test TESTS=tests/handlers"
    assert '@on("lead.created", "lead.paid")' in (clone / module).read_text(encoding="utf-8")

    tested = _run(clone, str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "tests/handlers")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "10 passed" in tested.stdout, tested.stdout  # 3 of its own, 7 of the examples
    for lint in (["ruff", "check"], ["ruff", "format", "--check"], ["mypy"]):
        checked = _run(clone, str(BIN / lint[0]), *lint[1:], module, test)
        assert checked.returncode == 0, f"{lint}: {checked.stdout}{checked.stderr}"

    (clone / module).write_text("# edited by hand\n", encoding="utf-8")
    again = _run(clone, str(BIN / "oa-webhooks"), "new", "handler", "crm_sync")
    assert again.returncode == 1
    assert f"{module} and {test} already exist: nothing written" in again.stderr
    assert (clone / module).read_text(encoding="utf-8") == "# edited by hand\n"
    (clone / test).unlink()
    half = _run(clone, str(BIN / "oa-webhooks"), "new", "handler", "crm_sync")
    assert half.returncode == 1, "one of the two is there: neither is written"
    assert not (clone / test).exists()


@pytest.mark.parametrize(
    "name", ["CrmSync", "crm-sync", "_private", "2fast", "class", "list", "email", "test_x"]
)
def test_a_name_that_cannot_be_a_handler_module_exits_2_and_writes_nothing(clone: Path, name: str) -> None:
    """Not a lowercase identifier, or one that would shadow a builtin, a module or a test: exit 2, no file."""
    before = _changed(clone)
    refused = _run(clone, str(BIN / "oa-webhooks"), "new", "handler", name)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"Invalid value: '{name}'" in refused.stderr
    assert _changed(clone) == before


def test_outside_a_project_it_exits_1_and_says_where_to_run_it(tmp_path: Path, clone: Path) -> None:
    """In a folder with no pyproject.toml above it: exit 1, naming the clone as the place to run it."""
    refused = _run(clone, str(BIN / "oa-webhooks"), "new", "handler", "crm_sync", cwd=tmp_path)
    assert refused.returncode == 1
    assert "run this in your clone of oa-webhooks" in refused.stderr
    assert list(tmp_path.iterdir()) == []
