"""Serving benchmark: edit latency and throughput over HTTP, and the cost of memory conditioning.

    python jobs/bench_serve.py [--model larimar-smol-v2] [--out runs/bench_serve.json]

1. Starts the Serve application on an embedded local Ray and measures single-fact edit latency
   (POST /v1/memories/{id}/facts) at 1, 8 and 32 concurrent clients: p50, p99 and edits/s; then
   the floor under it, requests that do no model work (GET /healthz: HTTP, proxy and ingress;
   GET /v1/memories: one more hop, to the memory actor) at 1 and 32 clients.
2. In-process, on the same decoder: generation tokens/s with memory conditioning
   (`LarimarModel.generate_text` with a nonzero latent) next to the decoder's plain
   `generate()`, greedy, fixed number of new tokens. Run once for the served model and, with
   --decoder smollm2-135m, for a LarimarModel built on SmolLM2-135M (untrained conditioning
   weights: the cost, not the output, is measured).
Targets: p50 edit latency <= 50 ms; conditioning overhead <= 10%.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import time
from pathlib import Path

import requests
import torch

from larimar.model import DEFAULT_MODEL

from larimar.serving.local import URL


def _drive(clients: int, per_client: int, send) -> dict:
    """`clients` threads, each calling `send(session, i, j)` `per_client` times: latency and rate."""
    latencies: list[float] = []

    def client(i: int) -> None:
        with requests.Session() as s:
            for j in range(per_client):
                t0 = time.perf_counter()
                r = send(s, i, j)
                latencies.append((time.perf_counter() - t0) * 1e3)
                r.raise_for_status()

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
        "per_s": len(latencies) / wall,
    }


def edit_latency(clients: int, edits_per_client: int, headers: dict) -> dict:
    mid = requests.post(f"{URL}/v1/memories", json={"slots": 512}, headers=headers).json()["id"]  # the paper's K

    def send(s, i, j):
        fact = {"prompt": f"person {i} item {j} is", "target": f"value {j}"}
        return s.post(f"{URL}/v1/memories/{mid}/facts", headers=headers, json={"facts": [fact]})

    row = _drive(clients, edits_per_client, send)
    return {**row, "edits": row["requests"], "edits_per_s": row["per_s"]}


def hop_floor(clients: int, per_client: int, headers: dict) -> dict:
    """What a request costs before any model work: GET /healthz (HTTP, Serve's proxy and the
    FastAPI ingress) and GET /v1/memories (the same plus one call to the memory actor)."""
    return {
        "clients": clients,
        "healthz": _drive(clients, per_client, lambda s, i, j: s.get(f"{URL}/healthz")),
        "list_memories": _drive(clients, per_client, lambda s, i, j: s.get(f"{URL}/v1/memories", headers=headers)),
    }


def conditioning_overhead(model, new_tokens: int, repeats: int) -> dict:
    prompts = ["alice lives in", "the capital of the country is"]
    batch = model.tokenize_for_decoder(prompts, add_eos=False, padding_side="left")
    z = torch.randn(len(prompts), model.value_dim)  # v3: [latent | decoder rows]
    lm = model.decoder.lm
    gen = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": model.decoder_tokenizer.pad_token_id,
    }

    def plain():
        lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **gen)

    def conditioned():
        model.decoder.generate(batch["input_ids"], batch["attention_mask"], z, **gen)

    results = {}
    with torch.no_grad():
        for name, fn in (("plain", plain), ("conditioned", conditioned)):
            fn()
        times = {"plain": [], "conditioned": []}
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            for name, fn in (("plain", plain), ("conditioned", conditioned)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        results[f"{name}_tokens_per_s"] = len(prompts) * new_tokens / statistics.median(ts)
    results["overhead"] = results["plain_tokens_per_s"] / results["conditioned_tokens_per_s"] - 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="saved model directory or bundled name")
    parser.add_argument("--out", default="runs/bench_serve.json")
    parser.add_argument(
        "--edits", type=int, default=160, help="edits per concurrency level (each into a fresh K = 512 memory)"
    )
    parser.add_argument("--decoder", default="smollm2-135m", help="also time conditioning on this decoder ('' to skip)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None, help="ServeSettings.torch_threads")
    args = parser.parse_args()

    from larimar.config import from_dict
    from larimar.model import LarimarConfig, LarimarModel
    from larimar.serving.local import local_application

    report: dict = {"model": args.model, "replica_torch_threads": args.torch_threads}
    with local_application(args.model, torch_threads=args.torch_threads) as headers:
        report["edit_latency"] = []
        for clients in (1, 8, 32):
            row = edit_latency(clients, max(1, args.edits // clients), headers)
            report["edit_latency"].append(row)
            print(
                f"edits, {clients:2d} clients: p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  "
                f"{row['edits_per_s']:.1f} edits/s",
                flush=True,
            )
        report["hop_floor"] = []
        for clients in (1, 32):
            row = hop_floor(clients, max(1, args.edits // clients), headers)
            report["hop_floor"].append(row)
            print(
                f"floor, {clients:2d} clients: /healthz p50 {row['healthz']['p50_ms']:.1f} ms "
                f"{row['healthz']['per_s']:.0f}/s; GET /v1/memories p50 {row['list_memories']['p50_ms']:.1f} ms "
                f"{row['list_memories']['per_s']:.0f}/s",
                flush=True,
            )

    torch.set_num_threads(2)
    report["conditioning"] = {}
    models = {"served": lambda: LarimarModel.from_pretrained(args.model)}
    if args.decoder:
        cfg = LarimarModel.read_config(args.model)
        models[args.decoder] = lambda: LarimarModel(
            from_dict(
                LarimarConfig,
                {
                    "encoder": cfg.encoder if cfg.encoder != "tiny-bert" else "minilm-l6",
                    "decoder": args.decoder,
                    "memory": {"slots": cfg.memory.slots, "latent_dim": cfg.memory.latent_dim},
                },
            )
        ).eval()
    for name, load in models.items():
        row = conditioning_overhead(load(), args.new_tokens, args.repeats)
        report["conditioning"][name] = row
        print(
            f"generation ({name}): plain {row['plain_tokens_per_s']:.1f} tok/s, conditioned "
            f"{row['conditioned_tokens_per_s']:.1f} tok/s, overhead {row['overhead']:+.1%}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
