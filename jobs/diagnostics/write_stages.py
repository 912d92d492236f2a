"""Where a served write's time goes, from the application's own stage metrics (issue 18).

    python jobs/diagnostics/write_stages.py [--model larimar-smol-facts] [--clients 1,32] [--edits 240] \
        [--set KEY=VALUE ...] [--out runs/write_stages.json]

Starts the application as `jobs/bench_serve.py` does, drives single-fact edits at each client
count, and reads, from Ray's metrics endpoint, what the replicas observed meanwhile:

- `larimar_write_stage_*` (the ingress): a request's wait for its encoding ("encode":
  batching at the ingress, the hop to the encoder, its queue and pass, the hop back) and then for
  its commit ("commit": batching, the hop to the memory actor, its lock, persist and apply, the
  hop back);
- `larimar_encoder_pass_*{kind="facts"}` (the encoder replica): one pass over a batch;
- `larimar_memory_commit_*{op="write"}` (the memory actor): "persist" (the log entry written and
  fsynced) and "apply" (the memory updated).

Means over each level (seconds counters over histogram counts, before and after: exact, where
Ray's histogram `_sum` is not; `larimar.serving.stage_metrics`). A stage minus the work inside
it is what batching queues and Serve's hops cost; at one client nothing queues, so it is the hops.
The client's own latency adds HTTP through HAProxy and the ingress's routing. Under load a pass
and a commit serve a batch of requests, so their means are per batch, not per request.
"""

from __future__ import annotations

import argparse
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from larimar.serving.local import edit_latency, local_application, save_report, settings_from_pairs

SERIES = {  # metric -> the label that names its part, and the samples counted (the write path's)
    "larimar_write_stage": ("stage", {}),
    "larimar_encoder_pass": ("kind", {"kind": "facts"}),
    "larimar_memory_commit": ("step", {"op": "write"}),
}
COMMITS = ("larimar_write_stage", "commit")  # one per write request answered


def snapshot(url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(metric, label value) -> (seconds, count), summed over replicas, from Ray's Prometheus text:
    the seconds from each duration's Counter, the count from its Histogram (whose exported `_sum`
    Ray rebuilds from bucket midpoints: `larimar.serving.stage_metrics`)."""
    out: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for name, (label, only) in SERIES.items():
            if family.name == f"ray_{name}_time_seconds":  # the Counter (parsed without `_total`)
                pick = lambda sample: 0 if sample.name.endswith("_total") else None  # noqa: E731
            elif family.name == f"ray_{name}_seconds":  # the Histogram
                pick = lambda sample: 1 if sample.name.endswith("_count") else None  # noqa: E731
            else:
                continue
            for s in family.samples:
                slot = pick(s)
                if slot is None or any(s.labels.get(k) != v for k, v in only.items()):
                    continue
                out.setdefault((name, s.labels.get(label, "")), [0.0, 0.0])[slot] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def exported(url: str, writes: int, timeout_s: float = 60.0) -> dict:
    """A snapshot once the ingress has reported `writes` answered writes in all (Ray's agent
    exports every few seconds, each replica on its own clock: then a few seconds more)."""
    deadline = time.time() + timeout_s
    while snapshot(url).get(COMMITS, (0, 0))[1] < writes:
        if time.time() > deadline:
            raise TimeoutError(f"the metrics endpoint did not report {writes} writes within {timeout_s:g} s")
        time.sleep(1)
    time.sleep(12)
    return snapshot(url)


def means_ms(before: dict, after: dict) -> dict[str, dict]:
    """Per series: mean (ms), how many were observed and their total (s) between the snapshots."""
    out = {}
    for key, (total, count) in sorted(after.items()):
        t0, c0 = before.get(key, (0.0, 0.0))
        if count > c0:
            out[f"{key[0]}:{key[1]}"] = {
                "mean_ms": 1e3 * (total - t0) / (count - c0),
                "count": int(count - c0),
                "total_s": total - t0,
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="larimar-smol-facts")
    p.add_argument("--clients", default="1,32")
    p.add_argument("--edits", type=int, default=240, help="edits per client count (into a fresh K = 512 memory)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ServeSettings over the defaults")
    p.add_argument("--out", default="runs/write_stages.json")
    a = p.parse_args()
    try:
        settings = settings_from_pairs(a.set)
        levels = [int(c) for c in a.clients.split(",") if c]
    except ValueError as err:
        p.error(str(err))
    if a.edits > 512:
        p.error("--edits: at most 512 (one K = 512 memory per client count)")
    import ray

    report: dict = {"model": a.model, "settings": settings, "levels": []}
    with local_application(a.model, **settings) as headers:
        url = f"http://127.0.0.1:{ray._private.worker.global_worker.node.metrics_export_port}/metrics"
        done = edit_latency(1, 20, headers, "asyncio")["edits"]  # warm-up: the first calls are slow
        for clients in levels:
            before = exported(url, done)
            row = edit_latency(clients, max(1, a.edits // clients), headers, "asyncio")
            done += row["edits"]
            stages = means_ms(before, exported(url, done))
            report["levels"].append({"client": row, "stages": stages})
            print(f"{clients} clients: client p50 {row['p50_ms']:.1f} ms, {row['edits_per_s']:.1f} edits/s")
            for name, v in stages.items():
                print(f"  {name:45s} mean {v['mean_ms']:7.2f} ms  ({v['count']} observed)")
            get = lambda k: stages.get(k, {}).get("mean_ms", 0.0)  # noqa: E731
            enc = get("larimar_write_stage:encode") - get("larimar_encoder_pass:facts")
            com = get("larimar_write_stage:commit") - get("larimar_memory_commit:persist")
            com -= get("larimar_memory_commit:apply")
            print(f"  queues and hops around the encoder pass {enc:.2f} ms, around the commit {com:.2f} ms")
    save_report(a.out, report)


if __name__ == "__main__":
    main()
