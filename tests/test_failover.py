"""A SIGKILLed primary under load, with Sentinel and OA_REDIS_MIN_REPLICAS=1: nothing acknowledged is lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.failover_drill import run_drill

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e


def test_a_killed_primary_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """~200 events/s over two APIs, primary SIGKILLed: 202 again within 15 s, only 202/200/503, none lost."""
    result = run_drill(tmp_path, min_replicas=1)
    print(f"failover drill with OA_REDIS_MIN_REPLICAS=1: {result.summary()}")
    assert set(result.statuses) <= {200, 202, 503}, result.statuses
    assert result.statuses[503] > 0, "the kill should have been seen as 503s"
    assert result.recovery_s is not None, "ingest never answered 202 again on both APIs"
    assert result.recovery_s < 15
    assert len(result.acknowledged) > 300
    assert not result.lost, sorted(result.lost)[:20]
    assert result.missing_from_ledger == 0, "an acknowledged event is missing from the new primary"
    assert result.worker_recovery_s is not None, "no worker ran an event acknowledged after the kill"
