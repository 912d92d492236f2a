"""Request counts and latency of the HTTP API, as a pure ASGI middleware.

Why not FastAPI's `@app.middleware("http")`: that is Starlette's `BaseHTTPMiddleware`, which
runs every request through an anyio task group and a memory stream between the middleware and
the app. Under 32 writing clients it was a fifth of the ingress replica's samples (py-spy,
`jobs/diagnostics/profile_serve_writes.py`), more than the ingress's own code. This one only
wraps `send` to see the status, as `larimar.serving.guard.RequestGuard` does.

It is the outermost middleware, so refusals of the guard (401, 413, 429) are counted too. The
endpoint is the route's path template (FastAPI's router puts the matched route into the scope
this middleware passed down), "unmatched" for a 404. The latency runs until the last byte of the
answer is sent: a streamed completion counts its whole stream.
"""

from __future__ import annotations

import time
from typing import Any


class RequestMetrics:
    """`requests`: a counter tagged endpoint and status; `latency`: a histogram tagged endpoint
    (Ray's `ray.serve.metrics` types, or anything with their `inc`/`observe` signatures)."""

    def __init__(self, app, requests: Any, latency: Any):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = "500"  # an exception escaping the app is answered 500 by Serve: count it too

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.requests.inc(tags={"endpoint": endpoint, "status": status})
            self.latency.observe(time.perf_counter() - start, tags={"endpoint": endpoint})
