"""The application on an embedded local Ray, for benchmarks and diagnostics (`jobs/bench_serve.py`,
`jobs/bench_failover.py`, `jobs/diagnostics/profile_serve_writes.py`).

A temporary store and one API key whose request quota is out of the way: they measure the server,
not the rate limit (`limits.requests_per_second`, 50 by default, would cap a 32-client run).
`larimar serve` is the way to run the service itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

URL = "http://127.0.0.1:8000"
KEY = "bench-key"


@contextmanager
def local_application(model: str, **settings) -> Iterator[dict]:
    """Start Ray and the "larimar" application on :8000 with `settings` (ServeSettings keys) over
    the defaults; yields the Authorization headers of the one tenant, "bench"; shuts both down.
    Ray's high-throughput mode is on (`larimar.serving.serve_env`) unless the environment says otherwise."""
    from larimar.serving import serve_env

    serve_env.apply()
    import ray
    from ray import serve

    from larimar.serving.app import build
    from larimar.serving.auth import hash_key

    with tempfile.TemporaryDirectory() as storage:
        ray.init(num_cpus=4, include_dashboard=False)
        try:
            args = {
                "model": model,
                "storage": storage,
                "api_keys": [{"tenant": "bench", "sha256": hash_key(KEY)}],
                "limits": {"requests_per_second": 10000, "burst": 10000},
                **settings,
            }
            serve.run(build(args), name="larimar", route_prefix="/")
            yield {"Authorization": f"Bearer {KEY}"}
        finally:
            serve.shutdown()
            ray.shutdown()
