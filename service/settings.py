"""Typed settings, read from the environment and `.env`, validated once at start-up.

Every setting but two is prefixed `OA_`; docs/settings.md lists them all (tests/test_docs.py checks).
`OA_WEBHOOK_SECRET` is required by the API and the worker and may hold several comma-separated
secrets (rotation). The operator commands (`status`, `dlq`) only read Redis: they load
`OperatorSettings`, which do not need the secret, so they run with only `REDIS_URL` set.
"""

from __future__ import annotations

import ipaddress
import sys
from functools import cached_property
from typing import Annotated, Literal, NamedTuple, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.tracing import TraceUrlTemplate  # noqa: TC001 - pydantic reads it at run time

MIN_SECRET_BYTES = 16
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "changethis", "secret", "your-secret-here"})


S = TypeVar("S", bound="Settings")


class SettingsError(Exception):
    """The configuration cannot work; the message names the variable to set."""


class SentinelSettings(NamedTuple):
    """Where to ask for the current Redis primary: the Sentinels' addresses and the primary's name."""

    addresses: tuple[tuple[str, int], ...]
    master: str


class Settings(BaseSettings):
    """All configuration of the API, the worker and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="OA_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        validation_alias=AliasChoices("OA_WEBHOOK_SECRET", "oa_webhook_secret"),
        validate_default=True,
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
    )

    # Redis with Sentinel: the clients ask these for the current primary of that name
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    redis_min_replicas: int = Field(default=0, ge=0)

    # HTTP side
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8001, ge=1, le=65535)
    # The operator console (/console on the admin port) is off while this is unset.
    admin_token: SecretStr | None = None
    # Proxies in front of the admin port whose X-Forwarded-Proto/-For are believed (addresses, networks).
    admin_forwarded_allow_ips: str = ""
    max_body_bytes: int = Field(default=262_144, ge=1024)
    redis_timeout_s: float = Field(default=2.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)
    retention_days: float = Field(default=30, gt=0)
    limit_concurrency: int = Field(default=1000, ge=1)
    keepalive_timeout_s: int = Field(default=5, ge=1)
    header_timeout_s: float = Field(default=10, gt=0)
    body_timeout_s: float = Field(default=30, gt=0)
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    access_log: bool = False
    api_processes: int = Field(default=1, ge=1, le=64)

    # Worker side
    handlers_package: str = "workers.handlers"
    job_timeout_s: float = Field(default=60, gt=0)
    shutdown_grace_s: int = Field(default=30, ge=0)
    max_tries: int = Field(default=16, ge=1)
    retry_initial_s: float = Field(default=60, ge=0)
    retry_max_delay_s: float = Field(default=21_600, ge=0)
    retry_jitter: float = Field(default=1.0, ge=0, le=1)
    worker_concurrency: int = Field(default=50, ge=1)
    poll_delay_s: float = Field(default=0.02, gt=0)
    reconcile_interval_s: int = Field(default=60, ge=1)
    heartbeat_interval_s: float = Field(default=5, gt=0)
    queue_expiry_days: float = Field(default=7, gt=0)
    handler_http_timeout_s: float = Field(default=10, gt=0)
    held_alert_s: float = Field(default=3600, gt=0)
    # Handler protection (workers/runtime/protect.py): Retry-After's bound, and the circuit breaker.
    retry_after_max_s: float = Field(default=86_400, gt=0)
    breaker_failures: int = Field(default=10, ge=1)
    breaker_probe_s: float = Field(default=30, gt=0)
    tripped_alert_s: float = Field(default=900, gt=0)

    # Both
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    trace_url_template: TraceUrlTemplate = ""

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _require_secret(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if not value:
            raise ValueError(
                "OA_WEBHOOK_SECRET is not set: set it to the webhook secret from Offerte Adviseur"
            )
        for secret in value:
            if secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    "OA_WEBHOOK_SECRET still holds a placeholder: set it to the secret from Offerte Adviseur"
                )
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        token = value.get_secret_value()
        if token.lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "OA_ADMIN_TOKEN still holds a placeholder: set a random one (openssl rand -hex 32)"
            )
        if len(token.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"OA_ADMIN_TOKEN is shorter than {MIN_SECRET_BYTES} bytes: "
                "set a random one (openssl rand -hex 32)"
            )
        return value

    @field_validator("admin_forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        for part in _comma_list(value):
            try:
                ipaddress.ip_network(part)  # an address is a network of one
            except ValueError:
                raise ValueError(
                    f"OA_ADMIN_FORWARDED_ALLOW_IPS: {part!r} is not an IP address or network: list your TLS "
                    "proxy's addresses, e.g. 10.0.0.5 or 172.18.0.0/16 (a network's host bits must be 0)"
                ) from None
        return value

    @property
    def admin_forwarded_ips(self) -> tuple[str, ...]:
        """The addresses and networks of `OA_ADMIN_FORWARDED_ALLOW_IPS` (none by default)."""
        return _comma_list(self.admin_forwarded_allow_ips)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_scheme(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().partition("://")[0]
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _separate_ports(self) -> Settings:
        if self.admin_port == self.port:
            raise ValueError(
                "OA_ADMIN_PORT must differ from OA_PORT: the admin listener is a port of its own"
            )
        return self

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        _sentinel_addresses(value)
        return value

    @model_validator(mode="after")
    def _sentinel_needs_both(self) -> Settings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError(
                "OA_REDIS_SENTINELS and OA_REDIS_SENTINEL_MASTER go together: set both (or neither)"
            )
        if self.redis_sentinels and self.redis_url.get_secret_value().startswith("unix://"):
            raise ValueError("REDIS_URL: with OA_REDIS_SENTINELS it must start with redis:// or rediss://")
        return self

    @property
    def sentinel(self) -> SentinelSettings | None:
        """The Sentinels to follow the primary through, or None for the one Redis of REDIS_URL."""
        if not self.redis_sentinels:
            return None
        return SentinelSettings(_sentinel_addresses(self.redis_sentinels), self.redis_sentinel_master)

    @cached_property
    def secrets(self) -> tuple[bytes, ...]:
        """The configured secrets as the bytes that key the HMAC, in configured order."""
        return tuple(s.get_secret_value().encode() for s in self.webhook_secret)

    @property
    def short_secret_indexes(self) -> list[int]:
        """Positions (0-based) of secrets shorter than we would like; start-up warns about them."""
        return [i for i, s in enumerate(self.secrets) if len(s) < MIN_SECRET_BYTES]

    @property
    def retention_s(self) -> int:
        """How long a `done` event is remembered for dedup, in seconds."""
        return int(self.retention_days * 86_400)

    @property
    def queue_expiry_ms(self) -> int:
        """How long a queued arq job may wait before arq would call it expired."""
        return int(self.queue_expiry_days * 86_400_000)

    @property
    def arq_job_timeout_s(self) -> float:
        """Arq's own job timeout: ours plus a margin, so that our timeout always fires first."""
        return self.job_timeout_s + 5


class OperatorSettings(Settings):
    """Settings for the commands an operator runs against Redis: the webhook secret may be absent.

    They neither verify nor sign anything, and an operator's laptop should not need the secret.
    Every other setting is read and validated as for the API and the worker.
    """

    @field_validator("webhook_secret")
    @classmethod
    def _require_secret(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        return value  # replaces the API's check of the same name: nothing here uses the secret


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(part for part in (p.strip() for p in value.split(",")) if part)


def _sentinel_addresses(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` as pairs; `[::1]:26379` for an IPv6 address."""
    addresses = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"OA_REDIS_SENTINELS: {part!r} is not host:port (e.g. sentinel-1:26379)")
        addresses.append((host.removeprefix("[").removesuffix("]"), int(port)))
    return tuple(addresses)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"]) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(("OA_", "REDIS_URL")):
        return message
    name = field.upper() if field.upper() == "REDIS_URL" else f"OA_{field.upper()}"
    return f"{name}: {message}"


def load(kind: type[S]) -> S:
    """Read and validate `kind` (`OperatorSettings` for `workers.testing`), raising `SettingsError`."""
    try:
        return kind()
    except ValidationError as exc:
        raise SettingsError(_first_error(exc)) from None


def _load_or_exit(kind: type[S]) -> S:
    try:
        return load(kind)
    except SettingsError as exc:
        print(f"oa-webhooks: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_settings() -> Settings:
    """Read and validate the settings, raising `SettingsError` with one line that names the variable."""
    return load(Settings)


def load_settings_or_exit() -> Settings:
    """For entry points: print the one-line reason and exit with status 2 when settings are invalid."""
    return _load_or_exit(Settings)


def load_operator_settings_or_exit() -> OperatorSettings:
    """`load_settings_or_exit` for the operator commands (`status`, `dlq`): no webhook secret needed."""
    return _load_or_exit(OperatorSettings)
