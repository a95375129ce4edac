"""`make bench`'s harness in its tiny mode: every phase runs, and no event is lost or run twice.

It measures nothing worth reading: a few hundred events, a few seconds. What it guards is the
harness itself and the zero-loss count (G), with the httpx load generator and, where installed, wrk.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("loadgen", ["httpx", "wrk"])
def test_smoke_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path, loadgen: str) -> None:
    """The smoke run exits 0, writes every result key, and each 202 ran its handler exactly once."""
    if loadgen == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make bench installs it; the httpx run covers the harness)")
    out = tmp_path / "bench-results.json"
    command = [sys.executable, "-m", "benchmarks.run", "--smoke", "--loadgen", loadgen]
    command += ["--out", str(out), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    for key in (
        "ingest_limit_rps",
        "ingest_naive_rps",
        "ingest_rps",
        "ingest_rps_2proc",
        "ratio_C_A",
        "ratio_C_B",
        "worker_events_per_s",
        "worker_ordered_events_per_s",
        "worker_limited_events_per_s",
        "ratio_L_D",
        "ingest_rps_traced",
        "worker_events_per_s_traced",
        "ratio_Ct_C",
        "ratio_Dt_D",
        "worker_bare_arq_per_s",
        "ratio_D_E",
        "latency_p50_ms",
        "latency_p99_ms",
        "api_rss_mb",
        "worker_rss_mb",
        "redis_bytes_per_event",
        "history_list_p99_ms",
        "history_lead_p99_ms",
        "cpu_api_us_per_event",
        "cpu_redis_us_per_event",
    ):
        assert results[key] is not None, key
    # The CPU an event cost is charged from real readings: more than nothing, less than a second.
    assert 0 < results["cpu_api_us_per_event"] < 1e6
    assert 0 < results["cpu_redis_us_per_event"] < 1e6
    if loadgen == "wrk":  # P, the pinned variant, needs wrk (and two CPUs, as every machine here has)
        for key in ("pinned_limit_rps", "pinned_naive_rps", "pinned_rps", "ratio_pinned_C_B"):
            assert results[key] is not None, key
            assert results[key] > 0, key
        assert 0 < results["pinned_cpu_api_us_per_event"] < 1e6
    assert results["history_events"] == 2_000
    assert results["lost"] == 0
    assert results["duplicated"] == 0
    zero_loss = results["details"]["zero_loss"]
    for tally in [*zero_loss["C"], *zero_loss["O"], *zero_loss["L"], *zero_loss["Ct"], zero_loss["F"]]:
        assert tally["acknowledged"] == tally["stored"] == tally["runs"] == tally["distinct_run"] > 0
    # Ct and Dt traced: a span per accepted request and per handler run reached the sink.
    [traced] = results["details"]["traced"]
    assert traced["spans_exported"] == traced["spans_made"] > 0


@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("wrk") is None, reason="needs valgrind and wrk"
)
@pytest.mark.timeout(600)  # four servers under callgrind, each about half a minute to start and stop
def test_instructions_per_request_are_counted() -> None:
    """`make bench-instructions` counts a request under callgrind, tracing off and on (all spans exported)."""
    command = [sys.executable, "-m", "benchmarks.instructions", "--requests", "200", "--tracing"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"ours: ([\d,]+) instructions per request \(200 requests", done.stdout)
    assert match, done.stdout
    # A request is hundreds of thousands of instructions; a count near zero means nothing was measured.
    off = int(match.group(1).replace(",", ""))
    assert 50_000 < off < 50_000_000
    traced = re.search(
        r"ours, tracing on: ([\d,]+) instructions per request, .* \(([\d,]+) spans\)", done.stdout
    )
    assert traced, done.stdout
    assert int(traced.group(1).replace(",", "")) > off
    assert traced.group(2) == "200"  # one SERVER span per request, all exported by the exit
