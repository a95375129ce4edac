"""`make bench-outage`: a CRM outage as issue 20 measured it, with and without the circuit breaker.

40 lead.created events while a loopback CRM answers 503 for `--outage-s` seconds (30 by default),
retries sped up (initial 1 s, cap 60 s), two workers; then the CRM is back. For each mode, in one
run: the calls that reached the dead CRM, the dead letters, and how long the backlog took to drain
after the CRM was back. "off" is `breaker=False` (every event on its own schedule, as before issue
20); "on" is the default breaker (OA_BREAKER_FAILURES=10, OA_BREAKER_PROBE_S=30).

    python -m benchmarks.outage [--outage-s 30] [--events 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from service.api.ingest import PATH
from service.store.ledger import DEAD_KEY, PENDING_KEY
from tests.conftest import SECRET, envelope, signed_headers
from tests.crm_server import Crm
from tests.processes import Service, Stack, wait_for
from tests.redis_server import RedisServer

HANDLER = """
import os

from workers import Context, Event, on


@on("lead.created", breaker={breaker})
async def push(event: Event, ctx: Context) -> None:
    (await ctx.http.post(os.environ["CRM_URL"] + "/leads", json={{"id": event.id}})).raise_for_status()
"""
SETTINGS = {"OA_RETRY_INITIAL_S": "1", "OA_RETRY_MAX_DELAY_S": "60", "OA_MAX_TRIES": "16"}


def run(mode: str, *, outage_s: float, events: int, work: Path) -> dict[str, float]:
    """One outage with the breaker on or off; what the CRM saw, and the drain after it came back."""
    redis = RedisServer(work / f"redis-{mode}")
    redis.start()
    crm = Crm().start()
    crm.set("down")
    stack = Stack(work, redis.url, SECRET, CRM_URL=crm.url, **SETTINGS)
    stack.api.log_path = work / f"api-{mode}.log"
    stack.worker.log_path = work / f"worker-{mode}.log"
    stack.add_handler_module("outage_probe", HANDLER.format(breaker=mode == "on"))
    second = Service("worker", stack.worker.env, work / f"worker-{mode}-2.log")
    try:
        stack.start()
        second.start()
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            for i in range(events):
                body = envelope(f"{mode}{i:03d}", "lead.created", lead_id=i)
                http.post(PATH, content=body, headers=signed_headers(body)).raise_for_status()
        time.sleep(outage_s)
        during = len(crm.on("/leads"))
        crm.set("ok")
        back = time.monotonic()
        with redis.client() as client:
            wait_for(lambda: client.zcard(PENDING_KEY) == 0, timeout_s=3600, interval_s=0.1, what="the drain")
            dead = client.zcard(DEAD_KEY)
        return {"calls_during_outage": during, "drain_s": time.monotonic() - back, "dead": dead}
    finally:
        second.stop()
        stack.close()
        crm.stop()
        redis.stop()


def main() -> None:
    """Both modes, one after the other, and a two-line report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=30)
    parser.add_argument("--events", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oa-outage-") as folder:
        for mode in ("off", "on"):
            r = run(mode, outage_s=args.outage_s, events=args.events, work=Path(folder))
            calls = f"{r['calls_during_outage']:>4.0f} calls into the dead CRM in {args.outage_s:g} s"
            drain = f"{r['dead']:.0f} dead letters, drained {r['drain_s']:.1f} s after it came back"
            print(f"breaker {mode:>3}: {calls}, {drain}", flush=True)


if __name__ == "__main__":
    main()
