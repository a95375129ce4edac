"""The README's settings table lists every setting, with the default the code has."""

from __future__ import annotations

import re

from pydantic import SecretStr

from service.settings import Settings
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
