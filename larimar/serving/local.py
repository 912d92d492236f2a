"""The application on an embedded local Ray, and the load that measures it, for benchmarks and
diagnostics (`jobs/bench_serve.py`, `jobs/bench_failover.py`, `jobs/diagnostics/`).

A temporary store and one API key whose request quota is out of the way: they measure the server,
not the rate limit (`limits.requests_per_second`, 50 by default, would cap a 32-client run).
`larimar serve` is the way to run the service itself. `drive` is the closed-loop HTTP load
(`edit_latency`: single-fact edits), written once so every benchmark measures the same way;
`save_report` writes what they measured.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

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


def save_report(path: str | Path, report: dict) -> Path:
    """Write a benchmark's or diagnostic's report as JSON (its folder made if missing) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return out


def settings_from_pairs(pairs: list[str]) -> dict:
    """["key=value", ...] (ServeSettings fields, values read as YAML) -> a dict for
    `local_application`; a pair without "=" is a ValueError naming it."""
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected KEY=VALUE (a ServeSettings key)")
        out[key] = yaml.safe_load(value)
    return out


def drive(clients: int, per_client: int, request, headers: dict, client: str = "asyncio") -> dict:
    """`clients` closed-loop clients, each sending `request(i, j) -> (method, path, json body or
    None)` `per_client` times over its own keep-alive connection: latency, rate, and the CPU this
    process spent per request (the clients share the server's 2 cores, so a costly client lowers
    what the server can answer). `client`: "asyncio" (aiohttp on one event loop: 0.25 ms of CPU per
    request at 32 clients on 2 cores) or "threads" (one `requests` session per thread, the earlier
    driver: 1.5 ms). A request that is not answered 2xx raises."""
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    if client == "threads":

        def one(i: int) -> None:
            with requests.Session() as s:
                for j in range(per_client):
                    method, path, body = request(i, j)
                    t0 = time.perf_counter()
                    r = s.request(method, f"{URL}{path}", json=body, headers=headers)
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    r.raise_for_status()

        with cf.ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))
    elif client == "asyncio":
        import aiohttp

        async def run() -> None:
            async with aiohttp.ClientSession(
                URL, headers=headers, connector=aiohttp.TCPConnector(limit=clients)
            ) as session:

                async def one(i: int) -> None:
                    for j in range(per_client):
                        method, path, body = request(i, j)
                        t0 = time.perf_counter()
                        async with session.request(method, path, json=body) as r:
                            await r.read()
                            latencies.append((time.perf_counter() - t0) * 1e3)
                            r.raise_for_status()

                await asyncio.gather(*(one(i) for i in range(clients)))

        asyncio.run(run())
    else:
        raise ValueError(f"client must be asyncio or threads, got {client!r}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    latencies.sort()
    return {
        "clients": clients,
        "client": client,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
        "per_s": len(latencies) / wall,
        "client_cpu_ms_per_request": cpu / len(latencies) * 1e3,
    }


def edit_latency(clients: int, edits_per_client: int, headers: dict, client: str) -> dict:
    created = requests.post(f"{URL}/v1/memories", json={"slots": 512}, headers=headers)  # the paper's K
    mid = created.json()["id"]

    def request(i, j):
        return (
            "POST",
            f"/v1/memories/{mid}/facts",
            {"facts": [{"prompt": f"person {i} item {j} is", "target": f"value {j}"}]},
        )

    row = drive(clients, edits_per_client, request, headers, client)
    return {**row, "edits": row["requests"], "edits_per_s": row["per_s"]}
