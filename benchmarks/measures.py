"""What the phases measure, as plain data, and the few statistics the report needs."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


def median(values: Iterable[float]) -> float:
    """The median, ignoring NaN; NaN for none."""
    listed = [v for v in values if not math.isnan(v)]
    return statistics.median(listed) if listed else math.nan


@dataclass
class LoadResult:
    """What one load run saw. `acknowledged`: event id -> when its 202 arrived (httpx runs only)."""

    duration_s: float
    statuses: Counter[int]
    errors: int
    p50_ms: float
    p99_ms: float
    exhausted: bool = False
    acknowledged: dict[str, float] | None = None
    sent_at: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        """Responses received."""
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        """Responses per second."""
        return self.completed / self.duration_s if self.duration_s else 0.0

    @property
    def accepted(self) -> int:
        """202 responses."""
        return self.statuses.get(202, 0)


Runs = dict[str, list[float]]
"""The probe handler's notes: event id -> `time.time()` at the start of each run."""


def drain_rate(runs: Runs) -> float:
    """Handler starts per second, from the first start to the last."""
    starts = sorted(t for times in runs.values() for t in times)
    if len(starts) < 2 or starts[-1] == starts[0]:
        return math.nan
    return (len(starts) - 1) / (starts[-1] - starts[0])


@dataclass(frozen=True)
class Tally:
    """G for one phase: acknowledged (202) events against handler runs.

    `stored` is what the ledger counted as accepted; it can exceed the 202s a load generator read
    (wrk stops reading answers still in flight). An event is lost when it was acknowledged or
    stored and never ran; duplicated when it ran more than once.
    """

    acknowledged: int
    stored: int
    runs: int
    distinct_run: int
    lost: int
    duplicated: int

    @classmethod
    def of(cls, acknowledged: int | set[str], stored: int, runs: Runs) -> Tally:
        """Count; with the acknowledged ids known, each one is checked, else only the counts."""
        ran = {event_id for event_id, times in runs.items() if times}
        if isinstance(acknowledged, set):
            lost = len(acknowledged - ran)
            count = len(acknowledged)
        else:
            lost = max(0, acknowledged - len(ran))
            count = acknowledged
        return cls(
            acknowledged=count,
            stored=stored,
            runs=sum(len(times) for times in runs.values()),
            distinct_run=len(ran),
            lost=max(lost, stored - len(ran)),
            duplicated=sum(len(times) - 1 for times in runs.values() if len(times) > 1),
        )
