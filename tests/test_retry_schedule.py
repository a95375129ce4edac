"""The retry schedule: exponential bounds, full jitter inside them, and a default span of about a day."""

from __future__ import annotations

from service.settings import Settings
from tests.conftest import make_settings
from workers.runtime.retry import Backoff


def test_bounds_double_up_to_the_cap() -> None:
    """Each failed attempt doubles the bound until the cap."""
    backoff = Backoff(initial_s=60, max_delay_s=21_600)
    assert [backoff.bound_s(n) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff.bound_s(20) == 21_600


def test_full_jitter_stays_between_zero_and_the_bound() -> None:
    """With full jitter a delay is anywhere from 0 to the bound; with none it is the bound."""
    full = Backoff(initial_s=10, max_delay_s=1000, jitter=1.0)
    assert full.delay_s(3, draw=0.0) == 40
    assert full.delay_s(3, draw=0.999) < 0.1
    delays = [full.delay_s(3) for _ in range(200)]
    assert all(0 <= d <= 40 for d in delays)
    assert max(delays) - min(delays) > 10
    assert Backoff(initial_s=10, max_delay_s=1000, jitter=0).delay_s(3, draw=0.7) == 40


def test_default_schedule_spans_about_a_day() -> None:
    """The defaults (16 tries, 60 s doubling to 6 h, full jitter) wait 22 h on average and 44 h at most."""
    settings: Settings = make_settings("redis://localhost:6379/0")
    backoff = Backoff(settings.retry_initial_s, settings.retry_max_delay_s, settings.retry_jitter)
    longest_h = backoff.longest_schedule_s(settings.max_tries) / 3600
    assert 40 < longest_h < 48
    assert settings.queue_expiry_ms / 3_600_000 > longest_h
