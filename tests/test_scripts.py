"""Every Redis script is a `.lua` file with a KEYS/ARGV header that matches its name and its body."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis import Redis

from service.store.scripts import load_script
from tests.processes import ROOT

SCRIPTS = sorted([*ROOT.glob("service/store/lua/*.lua"), *ROOT.glob("workers/runtime/lua/*.lua")])


def test_there_are_scripts_to_check() -> None:
    """The globs find the five scripts, so the checks below are not vacuous."""
    expected = {"accept-11", "requeue-if-lost-5", "claim-4", "begin-1", "finish-12", "resume-3"}
    assert {p.stem for p in SCRIPTS} >= expected


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_header_names_every_key_the_script_uses(path: Path) -> None:
    """The name's number is the key count; the header names KEYS[1..n], and the body uses no other key."""
    source = path.read_text(encoding="utf-8")
    count = int(path.stem.rsplit("-", 1)[1])
    header = "\n".join(line for line in source.splitlines() if line.startswith("--"))
    assert {int(n) for n in re.findall(r"^-- KEYS\[(\d+)\]", header, flags=re.MULTILINE)} == set(
        range(1, count + 1)
    )
    assert re.search(r"^-- ARGV\[1\]", header, flags=re.MULTILINE)
    body = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("--"))
    assert {int(n) for n in re.findall(r"KEYS\[(\d+)\]", body)} <= set(range(1, count + 1))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_redis_compiles_each_script(path: Path, redis_sync: Redis) -> None:
    """SCRIPT LOAD on a real Redis accepts each file, as `load_script` reads it, includes in place."""
    package = ".".join(path.parent.parent.relative_to(ROOT).parts)
    source = load_script(package, path.stem)
    own = [
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("-- #include")
    ]
    assert "-- #include" not in source
    assert all(line in source.splitlines() for line in own)
    assert len(redis_sync.script_load(source)) == 40


def test_every_included_part_is_used_and_defines_what_it_is_named_for() -> None:
    """Each part in service/store/lua/include/ is included by some script and defines its function."""
    parts = sorted((ROOT / "service" / "store" / "lua" / "include").glob("*.lua"))
    assert parts
    sources = "\n".join(p.read_text(encoding="utf-8") for p in SCRIPTS)
    for part in parts:
        assert f"-- #include {part.stem}" in sources, part.name
        assert f"local function {part.stem.replace('-', '_')}(" in part.read_text(encoding="utf-8")
