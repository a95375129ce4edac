"""Redis Lua scripts: one `.lua` file each, beside the module that runs it, loaded by name.

Each file opens with a comment block that names its KEYS and ARGV, and its name ends with its key
count (`accept-11.lua`), as BullMQ names its commands: reviewers read Lua as Lua, and
tests/test_scripts.py loads every file into a real Redis. A part that several scripts share lives
once in `service/store/lua/include/<part>.lua`; a script's `-- #include <part>` line is replaced by
it when the script is loaded.
"""

from __future__ import annotations

import re
from importlib.resources import files

_INCLUDE = re.compile(r"^-- #include ([a-z0-9-]+)$", re.MULTILINE)


def _part(match: re.Match[str]) -> str:
    return (files("service.store") / "lua" / "include" / f"{match[1]}.lua").read_text(encoding="utf-8")


def load_script(package: str, name: str) -> str:
    """The source of `<package>/lua/<name>.lua` with its includes in place.

    For example `load_script("service.store", "resume-3")`.
    """
    source = (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(_part, source)
