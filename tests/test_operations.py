"""Operations with real processes: `status --json` and `/metrics` report exactly what happened."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.conftest import ENDPOINT, SECRET, envelope, signed_headers
from tests.delivery_probe import SOURCE, completed, probe_body
from tests.processes import Stack, wait_for

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
FAST = {
    "OA_RETRY_INITIAL_S": "0.2",
    "OA_RETRY_JITTER": "0",
    "OA_MAX_TRIES": "2",
    "OA_RECONCILE_INTERVAL_S": "1",
}


@pytest.fixture
def ops_stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """API and worker with the probe handler and fast retries, started."""
    stack = Stack(tmp_path, redis_url, SECRET, **FAST)
    stack.add_handler_module("ops_probe", SOURCE)
    stack.start()
    yield stack
    stack.close()


def status_json(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `oa-webhooks status --json` with the stack's settings: exit code and parsed output."""
    result = subprocess.run(
        [str(BIN / "oa-webhooks"), "status", "--json", *args],
        env=stack.api.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed by prometheus-client's own parser, as {(sample name, labels): value}."""
    text = httpx.get(stack.admin_url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _post(http: httpx.Client, body: bytes, **headers: str) -> int:
    return http.post(ENDPOINT, content=body, headers=headers or signed_headers(body)).status_code


def test_status_and_metrics_report_a_known_mix(ops_stack: Stack, redis_sync: Redis) -> None:
    """Successes, a retry, a dead letter, an unhandled event, duplicates and bad signatures: all counted."""
    with httpx.Client(base_url=ops_stack.base_url, timeout=10) as http:
        for i in range(3):
            assert _post(http, probe_body(f"ok_{i}")) == 202
        assert _post(http, probe_body("flaky", fail_times=1)) == 202
        assert _post(http, probe_body("dead", fail_times=-1)) == 202
        assert _post(http, envelope("nobody", "nobody.cares")) == 202
        assert [_post(http, probe_body("ok_0")) for _ in range(2)] == [200, 200]
        bad = probe_body("forged")
        for _ in range(3):
            assert _post(http, bad, **signed_headers(bad, "not-the-secret-at-all")) == 401
    wait_for(lambda: len(completed(redis_sync)) == 4, timeout_s=20, what="the successes")
    wait_for(lambda: status_json(ops_stack)[1]["dead"] == 1, timeout_s=20, what="the dead letter")
    wait_for(lambda: status_json(ops_stack)[1]["processed_total"] == 5, timeout_s=10, what="all processed")
    code, status = status_json(ops_stack)
    assert code == 0
    expected = {
        "queued": 0,
        "scheduled": 0,
        "in_progress": 0,
        "dead": 1,
        "received_total": 6,
        "processed_total": 5,
        "failed_total": 1,
        "retried_total": 2,
        "unhandled_total": 1,
        "duplicate_total": 2,
        "conflict_total": 0,
    }
    assert {k: status[k] for k in expected} == expected
    assert status["per_type"]["received"] == {"probe.test": 5, "nobody.cares": 1}
    assert status["last_5m"]["received"] == 6
    assert status["secrets"] == {"0": 6}
    assert len(status["workers"]) == 1
    assert status["oldest_queued_age_s"] == 0
    assert time.time() - status["last_received_at"] < 60

    samples = scrape(ops_stack)
    assert samples[("oa_webhooks_events_received_total", (("type", "probe.test"),))] == 5
    assert samples[("oa_webhooks_events_processed_total", (("type", "probe.test"),))] == 4
    assert samples[("oa_webhooks_events_dead_lettered_total", (("type", "probe.test"),))] == 1
    assert samples[("oa_webhooks_events_unhandled_total", (("type", "nobody.cares"),))] == 1
    assert samples[("oa_webhooks_duplicates_total", ())] == 2
    assert samples[("oa_webhooks_dead_letter_events", ())] == 1
    assert samples[("oa_webhooks_live_workers", ())] == 1
    assert samples[("oa_webhooks_http_requests_total", (("status", "202"),))] == 6
    assert samples[("oa_webhooks_http_requests_total", (("status", "200"),))] == 2
    assert samples[("oa_webhooks_http_requests_total", (("status", "401"),))] == 3
    assert samples[("oa_webhooks_signature_failures_total", (("reason", "signature_mismatch"),))] == 3
    handler = "workers.handlers.ops_probe.probe"
    runs = samples[
        ("oa_webhooks_handler_duration_seconds_count", (("handler", handler), ("type", "probe.test")))
    ]
    assert runs == 3 + 2 + 2  # three successes, flaky twice, dead twice
    assert samples[("oa_webhooks_end_to_end_latency_seconds_count", (("type", "probe.test"),))] == 4


def test_lag_grows_without_workers_and_falls_back(ops_stack: Stack) -> None:
    """With workers stopped the lag grows and status exits 1; once a worker is back it drains to zero."""
    wait_for(lambda: status_json(ops_stack)[0] == 0, timeout_s=20, what="the worker's first heartbeat")
    ops_stack.worker.stop()
    code, status = status_json(ops_stack)
    assert code == 1
    assert status["workers"] == []
    with httpx.Client(base_url=ops_stack.base_url, timeout=10) as http:
        for i in range(3):
            assert _post(http, probe_body(f"lag_{i}")) == 202
    first = status_json(ops_stack)[1]
    time.sleep(1.5)
    later = status_json(ops_stack)[1]
    assert later["queued"] == 3
    assert later["oldest_queued_age_s"] >= first["oldest_queued_age_s"] + 1.0
    assert status_json(ops_stack, "--max-lag-s", "0.5")[0] == 1
    ops_stack.worker.start()
    wait_for(lambda: status_json(ops_stack)[1]["queued"] == 0, timeout_s=20, what="the queue to drain")
    code, status = status_json(ops_stack, "--max-lag-s", "60")
    assert code == 0
    assert status["oldest_queued_age_s"] == 0
