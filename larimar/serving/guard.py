"""The ingress's first gate, a pure ASGI middleware that runs before FastAPI reads a byte of the body:

1. the API key is checked from the headers alone (401 without reading the body; `/healthz`,
   `/readyz` and the OpenAPI pages are open), so an unauthenticated 100 MB upload costs nothing;
2. the body is capped (413): by its Content-Length when it has one, else by counting the chunks
   as FastAPI reads them, and stopping at the limit;
3. each API key gets a token bucket (requests per second, a burst): over it, 429 with
   Retry-After.

Errors have the API's one shape (`larimar.serving.errors`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException

from larimar.serving.errors import error_body

OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


class _TooLarge(HTTPException):
    """Raised from inside the body read; an HTTPException so FastAPI passes it through as a 413
    (it turns any other error while reading a body into a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class TokenBucket:
    """Requests per second per tenant, with bursts; `overrides` give some tenants their own."""

    def __init__(self, rate: float, burst: int, overrides: dict[str, tuple[float, int]] | None = None):
        self.rate, self.burst, self.overrides = rate, burst, overrides or {}
        self.tokens: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    def take(self, tenant: str, now: float | None = None) -> float:
        """0 if a request may go now, else the seconds until one may."""
        rate, burst = self.overrides.get(tenant, (self.rate, self.burst))
        now = time.monotonic() if now is None else now
        tokens, last = self.tokens.get(tenant, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1:
            self.tokens[tenant] = (tokens - 1, now)
            return 0.0
        self.tokens[tenant] = (tokens, now)
        return (1 - tokens) / rate


class RequestGuard:
    def __init__(
        self,
        app,
        tenant_for: Callable[[dict[str, str]], str | None],
        body_limit: Callable[[str], int],
        bucket: TokenBucket | None = None,
    ):
        """tenant_for: request headers (lower-case names) -> tenant or None; body_limit: path -> bytes."""
        self.app, self.tenant_for, self.body_limit, self.bucket = app, tenant_for, body_limit, bucket

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path not in OPEN_PATHS:
            tenant = self.tenant_for(headers)
            if tenant is None:
                return await _reply(
                    send, 401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key"
                )
            wait = self.bucket.take(tenant) if self.bucket is not None else 0.0
            if wait > 0:
                return await _reply(
                    send,
                    429,
                    f"rate limit of this API key reached; retry in {wait:.2f} s",
                    code="rate_limit_exceeded",
                    headers={"retry-after": str(max(1, math.ceil(wait)))},
                )
        limit = self.body_limit(path)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await _reply(send, 413, f"the request body has {declared} bytes; the limit is {limit}", param="body")
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _reply(send, 413, f"the request body exceeds the limit of {limit} bytes", param="body")


async def _reply(
    send,
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    body = json.dumps(error_body(status, message, param, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
