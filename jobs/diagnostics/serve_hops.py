"""Where one client's edit goes: each Serve hop of the write path timed from outside, and what the
application's processes burn when nothing is asked of them.

    python jobs/diagnostics/serve_hops.py [--model larimar-smol-facts] [--calls 120] \
        [--set KEY=VALUE ...] [--out runs/serve_hops.json]

Starts the application as the benchmarks do (`larimar.serving.local`), then:

1. idle: the CPU of every process on the machine over `--idle-seconds` with no traffic (Serve's
   controller loop, replicas' metrics and health checks, Ray's daemons): CPU the edit path never
   gets, whatever the load;
2. from this driver, one call at a time (the median after 20 warm-up calls): `GET /healthz` over
   HTTP (HAProxy and the ingress), `MemoryActor.health` (a Serve round trip that does nothing),
   `Encoder.encode_facts` for one edit (the encoder hop: its pass plus the hop), `MemoryActor.write`
   of that edit (the memory hop: the log entry's write + fsync and the update, plus the hop);
3. the end-to-end single-client edit over HTTP (`edit_latency`), to set the hops beside.

The handles are Serve's own (`serve.get_deployment_handle`), called as the ingress calls them
(`larimar.serving.wire` packing); a hop measured here also includes the driver's side of the call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

from larimar.serving.local import URL, edit_latency, local_application, save_report, settings_from_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_serve_writes import cpu_shares, cpu_times  # noqa: E402  (the profile's CPU accounting)


def idle_cpu(seconds: float) -> dict[str, float]:
    """Share of one core each process used over `seconds` (the profile's own snapshots and labels;
    processes under 1% of a core are left out)."""
    before = cpu_times()
    time.sleep(seconds)
    return dict(cpu_shares(before, cpu_times(), seconds))


async def hops(memory_id: str, tenant: str, calls: int) -> dict[str, float]:
    """Median ms of each hop, called one at a time."""
    import aiohttp
    from ray import serve

    from larimar.serving.wire import pack, unpack

    encoder = serve.get_deployment_handle("Encoder", "larimar")
    memory = serve.get_deployment_handle("MemoryActor", "larimar")
    times: dict[str, list[float]] = {"healthz_http": [], "memory_noop": [], "encoder_one_edit": [], "memory_write": []}

    async def timed(name, awaitable):
        t0 = time.perf_counter()
        out = await awaitable
        times[name].append((time.perf_counter() - t0) * 1e3)
        return out

    async def healthz(session):
        async with session.get(f"{URL}/healthz") as r:
            r.raise_for_status()
            await r.read()

    async with aiohttp.ClientSession() as session:
        for j in range(calls):
            facts = [{"text": None, "prompt": f"person 0 item {j} is", "target": f"value {j}", "subject": None}]
            await timed("healthz_http", healthz(session))
            await timed("memory_noop", memory.health.remote())
            [enc] = unpack(await timed("encoder_one_edit", encoder.encode_facts.remote([facts])))
            entry = pack([(tenant, memory_id, facts, enc, None)])
            [wrote] = await timed("memory_write", memory.write.remote(entry))
            if "ok" not in wrote:
                raise RuntimeError(f"write {j} was refused: {wrote}")
    return {name: statistics.median(v[20:]) for name, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="larimar-smol-facts")
    p.add_argument("--calls", type=int, default=120, help="calls of each hop (the first 20 are warm-up)")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ServeSettings (YAML values)")
    p.add_argument("--out", default="runs/serve_hops.json")
    a = p.parse_args()
    if a.calls <= 20:
        p.error("--calls must be more than the 20 warm-up calls")
    try:
        settings = settings_from_pairs(a.set)
    except ValueError as err:
        p.error(str(err))
    with local_application(a.model, **settings) as headers:
        time.sleep(5)  # replicas settle after their first health checks
        idle = idle_cpu(a.idle_seconds)
        created = requests.post(f"{URL}/v1/memories", json={"slots": 512}, headers=headers)  # the benchmarks' K
        memory_id = created.json()["id"]
        # Serve's handles (in Ray's high-throughput mode) live on the loop that made them, which
        # must keep running until serve.shutdown() has stopped them: a loop on its own thread.
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        hop = asyncio.run_coroutine_threadsafe(hops(memory_id, "bench", a.calls), loop).result()
        edit = edit_latency(1, 200, headers, "asyncio")
    loop.call_soon_threadsafe(loop.stop)
    runner.join()
    report = {"model": a.model, "settings": settings, "idle_share_of_a_core": idle, "hop_p50_ms": hop, "edit": edit}
    print("idle CPU (share of one core):")
    for name, share in list(idle.items())[:12]:
        print(f"  {100 * share:5.1f}%  {name}")
    print(f"  {100 * sum(idle.values()):5.1f}%  in all (processes over 1%)")
    print("hops from this driver, p50:")
    for name, ms in hop.items():
        print(f"  {ms:6.2f} ms  {name}")
    print(f"single-client edit over HTTP: p50 {edit['p50_ms']:.2f} ms")
    save_report(a.out, report)


if __name__ == "__main__":
    main()
