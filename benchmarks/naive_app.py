"""B: the naive baseline, kept as a reference: how a webhook receiver is usually first written.

FastAPI route, `await request.body()`, HMAC, `json.loads`, then arq's own `enqueue_job` with the
event id as `_job_id` (three Redis round trips, pickle, dedup only while arq keeps the job).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from arq import create_pool
from arq.connections import RedisSettings
from fastapi import FastAPI, HTTPException, Request

from service.api.signature import SIGNATURE_HEADER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the arq pool for the process."""
    app.state.secret = os.environ["OA_WEBHOOK_SECRET"].encode()
    app.state.arq = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    yield
    await app.state.arq.aclose()


app = FastAPI(lifespan=lifespan)


@app.post("/webhooks/offerte-adviseur", status_code=202)
async def receive(request: Request) -> dict[str, str]:
    """Verify, parse, enqueue, acknowledge."""
    body = await request.body()
    expected = hmac.new(request.app.state.secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get(SIGNATURE_HEADER, "")):
        raise HTTPException(status_code=401, detail="bad signature")
    event = json.loads(body)
    await request.app.state.arq.enqueue_job("process_event", event["id"], event["type"], _job_id=event["id"])
    return {"status": "accepted", "id": event["id"]}
