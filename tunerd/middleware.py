"""ASGI middleware: the request-size limit (413) and request metrics."""
from __future__ import annotations

import json
import time

from tunerd.metrics import Metrics

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: at once on a Content-Length over the
    limit, else while reading the (possibly chunked) body, before the app sees any of it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        too_big = {"detail": f"request body larger than {self.max_bytes} bytes"}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"detail": "invalid Content-Length"})
                if declared > self.max_bytes:
                    return await _send_json(send, 413, too_big)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts requests and their latency by method, route template and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(scope["method"], route_template(scope), status, time.perf_counter() - start)


def route_template(scope) -> str:
    """The matched route's path template (bounded label values), ``unmatched`` for a 404."""
    ctx = (scope.get("fastapi") or {}).get("effective_route_context")  # FastAPI >= 0.16x, prefix included
    path = getattr(ctx, "path_format", None) or getattr(scope.get("route"), "path_format", None)
    return path or "unmatched"
