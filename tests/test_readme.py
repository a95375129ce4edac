"""The README's settings table lists every setting, with the default the code has."""

from __future__ import annotations

import re

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from service.ops.cli.status import tables
from service.settings import Settings
from service.store.stats import Snapshot
from tests.processes import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `(OA_[A-Z_]+|REDIS_URL)` \| `?([^`|]*)`? \|", re.MULTILINE)


def _env_name(field: str) -> str:
    return "REDIS_URL" if field == "redis_url" else f"OA_{field.upper()}"


def _table() -> dict[str, str]:
    section = README[README.index("## Settings") : README.index("## Layout")]
    return {m.group(1): m.group(2).strip() for m in ROW.finditer(section)}


def test_every_setting_is_in_the_table_with_its_default() -> None:
    """Each field of Settings has a row named as its variable, showing the code's default."""
    table = _table()
    for field, info in Settings.model_fields.items():
        name = _env_name(field)
        assert name in table, f"{name} is missing from the README's settings table"
        default = info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if field == "webhook_secret":
            assert table[name] == "(required)"
        elif default is None:
            assert table[name] == "(unset)", name
        elif isinstance(default, bool | str):
            assert table[name].lower() == str(default).lower(), name
        else:
            assert float(table[name]) == float(default), name


def test_the_table_lists_no_setting_that_does_not_exist() -> None:
    """No row names a variable that the code does not read."""
    known = {_env_name(field) for field in Settings.model_fields}
    assert set(_table()) <= known


PATH_IN_COMMENT = re.compile(r"\b((?:[\w.-]+/)+[\w.-]+\.(?:md|py|yml|yaml|toml|lua|json))\b")


def test_paths_named_in_pyproject_comments_exist() -> None:
    """Every file a comment in pyproject.toml points to is in the repository."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    comments = [line.partition("#")[2] for line in text.splitlines() if "#" in line]
    named = {m.group(1) for comment in comments for m in PATH_IN_COMMENT.finditer(comment)}
    assert named, "no path found: the pattern is broken"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"pyproject.toml names files that do not exist: {missing}"


def test_rotation_steps_name_secrets_as_status_prints_them() -> None:
    """The rotation steps watch the labels that `oa-webhooks status` prints for the two secrets."""
    snapshot = Snapshot(
        now_s=0,
        ready=0,
        scheduled=0,
        in_progress=0,
        dead=0,
        oldest_ready_age_s=0,
        counters={"secret:0": 3, "secret:1": 5},
        recent={},
        workers=[],
        last_received_s=None,
    )
    secrets_table = tables(snapshot, Console(width=80)).renderables[-1]
    assert isinstance(secrets_table, Table)
    labels = list(secrets_table.columns[0].cells)
    assert len(labels) == 2
    section = README[README.index("### Rotating the secret") : README.index("### A managed Redis")]
    watch_step = next(line for line in section.splitlines() if line.startswith("3. "))
    for label in labels:
        assert f"`{label}`" in watch_step, f"step 3 does not watch {label}, as status prints it"
