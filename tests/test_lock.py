"""The locks pin, with hashes, versions that pyproject.toml allows; the image and `make install` use them.

requirements.lock (runtime), requirements-dev.lock (the same runtime pins plus the dev extras) and
requirements-build.lock (the build backend). The Docker image installs exactly the runtime and build
locks, and `make install` the dev and build locks (`pip install --require-hashes`); `make lock`
refreshes all three. These tests fail when pyproject.toml changes and the locks were not refreshed.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from typing import TYPE_CHECKING

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.processes import ROOT

if TYPE_CHECKING:
    from pathlib import Path

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# One entry: "name==version [; marker]" and its "--hash=..." continuation lines.
ENTRY = re.compile(
    r"^([A-Za-z0-9][^=\s]*)==(\S+)(?:\s*;\s*([^\\\n]+?))?\s*\\\n((?:\s+--hash=\S+(?:\s*\\\n)?)+)",
    re.MULTILINE,
)
# The image's interpreter; the locks are universal, so a marker may only narrow this.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux"}


def _lock(name: str) -> dict[str, tuple[Version, list[str]]]:
    """{canonical name: (pinned version, hashes)} of a lock file."""
    text = (ROOT / name).read_text(encoding="utf-8")
    entries: dict[str, tuple[Version, list[str]]] = {
        canonicalize_name(m.group(1)): (Version(m.group(2)), re.findall(r"--hash=(\S+)", m.group(4)))
        for m in ENTRY.finditer(text)
    }
    assert len(entries) == len(re.findall(r"^\S+==", text, re.MULTILINE)), (
        f"{name}: an entry could not be read"
    )
    return entries


LOCKS = {
    "requirements.lock": PYPROJECT["project"]["dependencies"],
    "requirements-dev.lock": [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["dev"],
    ],
    "requirements-build.lock": PYPROJECT["build-system"]["requires"],
}
IMAGE_LOCKS = ("requirements.lock", "requirements-build.lock")


@pytest.mark.parametrize("lock_name", LOCKS)
def test_every_requirement_is_pinned_to_a_version_it_allows(lock_name: str) -> None:
    """Each requirement of pyproject.toml that applies on Linux is pinned in the lock, inside its range."""
    pins = _lock(lock_name)
    for line in LOCKS[lock_name]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in {lock_name}: run make lock"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock_name} pins {name}=={version}, outside {requirement.specifier}: run make lock"
        )


@pytest.mark.parametrize("lock_name", LOCKS)
def test_every_pin_carries_a_sha256_hash(lock_name: str) -> None:
    """Every entry has sha256 hashes, as pip's --require-hashes needs for every line."""
    pins = _lock(lock_name)
    assert pins
    for name, (_version, hashes) in pins.items():
        assert hashes, name
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in hashes), name


def test_the_image_installs_the_locks_with_hashes_and_the_project_without_dependencies() -> None:
    """The Dockerfile installs both locks with --require-hashes, and our project with --no-deps."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for lock_name in IMAGE_LOCKS:
        assert re.search(rf"--require-hashes[^\n]*-r [^\n]*{re.escape(lock_name)}", dockerfile), lock_name
    assert re.search(r"pip install --no-deps", dockerfile)


def test_the_dev_lock_pins_the_runtime_exactly_as_the_runtime_lock() -> None:
    """Tests run on what the image ships: every runtime pin is in the dev lock, same version and hashes."""
    runtime, dev = _lock("requirements.lock"), _lock("requirements-dev.lock")
    different = {name: (pin, dev.get(name)) for name, pin in runtime.items() if dev.get(name) != pin}
    assert not different, f"requirements-dev.lock differs from requirements.lock (run make lock): {different}"


def _make_dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands `make TARGET` would run for a venv that does not exist yet (make -n runs none)."""
    venv = tmp_path / "venv"
    said = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [line.replace(str(venv), "VENV") for line in said.stdout.splitlines()]


def test_make_install_installs_the_locks_and_resolves_nothing(tmp_path: Path) -> None:
    """`make install` installs the dev and build locks with --require-hashes, then the project --no-deps."""
    commands = [c for c in _make_dry_run("install", tmp_path) if " install " in c]
    locked = [c for c in commands if "--require-hashes" in c]
    assert any("-r requirements-dev.lock" in c and "-r requirements-build.lock" in c for c in locked), (
        commands
    )
    project = [c for c in commands if c.rstrip().endswith((" -e .", " ."))]
    assert project, commands
    assert all("--no-deps" in c for c in project), project
    unlocked = [c for c in commands if c not in locked and c not in project and "--upgrade pip" not in c]
    assert not unlocked, f"make install resolves something outside the locks: {unlocked}"


def test_make_lock_writes_every_lock(tmp_path: Path) -> None:
    """`make lock` writes each lock the image and `make install` read; the dev one from the runtime one."""
    commands = " ".join(_make_dry_run("lock", tmp_path))
    for lock_name in LOCKS:
        assert f"-o {lock_name}" in commands, lock_name
    assert "--extra dev -c requirements.lock -o requirements-dev.lock" in commands
