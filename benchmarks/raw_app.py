"""A: the limit. A bare ASGI app that drains the request body and answers 202, nothing else."""

from __future__ import annotations

from typing import Any

_BODY = b'{"status":"accepted"}'
_START = {
    "type": "http.response.start",
    "status": 202,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())],
}
_RESPONSE = {"type": "http.response.body", "body": _BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Drain the body, then answer 202; answer lifespan messages so uvicorn starts it like the others."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(_START)
    await send(_RESPONSE)
