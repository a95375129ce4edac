"""Settings are validated at start-up, and a missing secret stops every entry point with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings
from tests.conftest import make_settings

BIN = Path(sys.executable).parent


def _env_without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without OA_WEBHOOK_SECRET, loading settings fails with a message naming it."""
    monkeypatch.delenv("OA_WEBHOOK_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"^OA_WEBHOOK_SECRET is not set"):
        load_settings()


def test_empty_secret_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty or comma-only OA_WEBHOOK_SECRET is refused like a missing one."""
    monkeypatch.chdir(tmp_path)
    for value in ("", " , "):
        monkeypatch.setenv("OA_WEBHOOK_SECRET", value)
        with pytest.raises(SettingsError, match="OA_WEBHOOK_SECRET"):
            load_settings()


def test_placeholder_secret_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The placeholder from .env.example cannot be used by accident."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "change-me")
    with pytest.raises(SettingsError, match="placeholder"):
        load_settings()


def test_comma_separated_secrets_and_defaults() -> None:
    """A comma list gives several secrets; REDIS_URL and the body cap have their documented defaults."""
    settings = Settings(OA_WEBHOOK_SECRET="one-secret-123456, two-secret-123456", _env_file=None)
    assert settings.secrets == (b"one-secret-123456", b"two-secret-123456")
    assert settings.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert settings.max_body_bytes == 262_144
    assert settings.redis_timeout_s == 2.0


def test_secret_is_not_in_repr() -> None:
    """repr(settings) and str(settings) never show the secret or the Redis password."""
    settings = make_settings("redis://user:hunter2-password@example:6379/0")
    assert "whsec_test_secret" not in repr(settings)
    assert "hunter2" not in repr(settings)
    assert "whsec_test_secret" not in str(settings)


@pytest.mark.parametrize("command", ["api", "worker", "send"])
def test_entry_points_refuse_to_start_without_secret(command: str, tmp_path: Path) -> None:
    """`oa-webhooks api|worker|send` exit 2 with one line naming OA_WEBHOOK_SECRET."""
    argv = [str(BIN / "oa-webhooks"), command] + (["lead.created"] if command == "send" else [])
    result = subprocess.run(
        argv,
        env=_env_without_settings(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "OA_WEBHOOK_SECRET" in lines[0]


def test_admin_port_must_differ_from_the_public_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """OA_ADMIN_PORT equal to OA_PORT is refused with a line that names both variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "a-long-enough-test-secret")
    monkeypatch.setenv("OA_PORT", "9000")
    monkeypatch.setenv("OA_ADMIN_PORT", "9000")
    with pytest.raises(SettingsError, match=r"^OA_ADMIN_PORT must differ from OA_PORT"):
        load_settings()
