"""`/metrics` with Redis gone: still 200, what this process knows, `redis_up 0`, no made-up queue gauges."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.ops.admin import create_admin_app
from tests.conftest import make_settings
from tests.redis_server import RedisServer

QUEUE_GAUGES = (
    "oa_webhooks_queue_ready_events",
    "oa_webhooks_queue_scheduled_events",
    "oa_webhooks_queue_in_progress_events",
    "oa_webhooks_dead_letter_events",
    "oa_webhooks_oldest_ready_age_seconds",
    "oa_webhooks_live_workers",
)


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def test_metrics_answer_200_with_redis_up_then_down(tmp_path: Path) -> None:
    """Up: redis_up 1 and the queue gauges. Stopped: 200, redis_up 0, per-process series, no queue gauges."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = make_settings(server.url, OA_REDIS_TIMEOUT_S=0.5)
    app, admin = create_app(settings), create_admin_app(settings)
    try:
        async with app.router.lifespan_context(app), admin.router.lifespan_context(admin):
            public = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            async with (
                public,
                httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin") as http,
            ):
                await public.post("/webhooks/offerte-adviseur", content=b"{}")  # a 401, counted per process
                up = await http.get("/metrics")
                assert up.status_code == 200
                up_samples = _samples(up.text)
                assert up_samples["oa_webhooks_redis_up"] == 1
                assert all(name in up_samples for name in QUEUE_GAUGES)

                server.stop()
                down = await http.get("/metrics")
                assert down.status_code == 200
                down_samples = _samples(down.text)
                assert down_samples["oa_webhooks_redis_up"] == 0
                assert not [name for name in QUEUE_GAUGES if name in down_samples]
                assert 'oa_webhooks_http_requests_total{status="401"}' in down.text
    finally:
        server.stop()
