"""Redis Lua scripts: one `.lua` file each, beside the module that runs it, loaded by name.

Each file opens with a comment block that names its KEYS and ARGV, and its name ends with its key
count (`accept-6.lua`), as BullMQ names its commands: reviewers read Lua as Lua, and
tests/test_scripts.py loads every file into a real Redis.
"""

from __future__ import annotations

from importlib.resources import files


def load_script(package: str, name: str) -> str:
    """The source of `<package>/lua/<name>.lua` (e.g. `load_script("service.store", "accept-11")`)."""
    return (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
