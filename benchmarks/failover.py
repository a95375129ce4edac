"""`make bench-failover` (issue 16): acknowledged events a SIGKILLed primary loses, with and without WAIT.

Runs the failover drill of tests/failover_drill.py (a primary, two replicas, three Sentinels; two APIs
and two workers; ~200 events/s; SIGKILL of the primary after 4 s) `--runs` times with
`OA_REDIS_MIN_REPLICAS=0` and as often with `=1`, interleaved, and prints per run: answers, events
acknowledged, lost (202 but never handled), missing from the new primary's ledger (202, perhaps
handled, but forgotten: a redelivery would run again), run twice, and the time from the kill to 202
again and to the first handler run of an event acknowledged after the kill.
Writes bench-failover.json. Exits 1 if the runs with `OA_REDIS_MIN_REPLICAS=1` lost an event.

    python -m benchmarks.failover [--runs N] [--out FILE] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tests.failover_drill import DrillResult, run_drill

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the drills, print the table, write the JSON; 1 if WAIT did not prevent a loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-failover.json")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work-failover")
    options = parser.parse_args()
    shutil.rmtree(options.work_dir, ignore_errors=True)
    results: list[DrillResult] = []
    print(
        "min_replicas  sent  202s  503s  other  lost  not in ledger  ran twice  kill -> 202  -> worker runs",
        flush=True,
    )
    for run in range(options.runs):
        for min_replicas in (0, 1):
            directory = options.work_dir / f"run-{run}-min-{min_replicas}"
            directory.mkdir(parents=True)
            result = run_drill(directory, min_replicas=min_replicas)
            results.append(result)
            answers = result.statuses
            other = sum(v for k, v in answers.items() if k not in {200, 202, 503})
            recovery = "never" if result.recovery_s is None else f"{result.recovery_s:.1f} s"
            worker = "never" if result.worker_recovery_s is None else f"{result.worker_recovery_s:.1f} s"
            print(
                f"{min_replicas:>12}  {answers.total():>4}  {answers[202]:>4}  {answers[503]:>4}  {other:>5}"
                f"  {len(result.lost):>4}  {result.missing_from_ledger:>13}  {result.ran_twice:>9}"
                f"  {recovery:>11}  {worker:>14}",
                flush=True,
            )
    options.out.write_text(json.dumps([r.summary() for r in results], indent=2) + "\n", encoding="utf-8")
    for min_replicas in (0, 1):
        mine = [r for r in results if r.min_replicas == min_replicas]
        lost, acked = sum(len(r.lost) for r in mine), sum(len(r.acknowledged) for r in mine)
        missing = sum(r.missing_from_ledger for r in mine)
        print(
            f"OA_REDIS_MIN_REPLICAS={min_replicas}: {lost} of {acked} acknowledged events never handled,"
            f" {missing} missing from the new primary's ledger, in {len(mine)} failovers"
        )
    print(f"wrote {options.out}")
    return 1 if any(r.lost or r.missing_from_ledger for r in results if r.min_replicas == 1) else 0


if __name__ == "__main__":
    sys.exit(main())
