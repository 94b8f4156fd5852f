"""The ceiling: a bare ASGI app on the same uvicorn stack that parses the same JSON body and
returns a fixed answer. No Python server can answer these requests faster on this machine."""

from __future__ import annotations

from typing import Any

import orjson

ANSWER = orjson.dumps({"prediction": "negative", "probability": [0.5, 0.5]})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
