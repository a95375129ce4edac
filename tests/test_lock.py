"""requirements.lock and requirements-build.lock pin, with hashes, versions that pyproject.toml allows.

The Docker image installs exactly the locks (`pip install --require-hashes`); `make lock` refreshes
them. These tests fail when pyproject.toml changes and the locks were not refreshed.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.processes import ROOT

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
    "requirements-build.lock": PYPROJECT["build-system"]["requires"],
}


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
    for lock_name in LOCKS:
        assert re.search(rf"--require-hashes[^\n]*-r [^\n]*{re.escape(lock_name)}", dockerfile), lock_name
    assert re.search(r"pip install --no-deps", dockerfile)
