"""Serving benchmark: edits over HTTP, generation in-process and over HTTP, and the cost of conditioning.

    python jobs/bench_serve.py [--model larimar-smol-v3] [--out runs/bench_serve.json]

1. Starts the Serve application on an embedded local Ray and measures single-fact edit latency
   (POST /v1/memories/{id}/facts) at 1, 8 and 32 concurrent clients: p50, p99, edits/s and the
   clients' own CPU per request (closed-loop clients on one asyncio loop, `larimar.serving.local.drive`;
   `--client threads`: a `requests` session per thread, the driver before session 14); then
   the floor under it, requests that do no model work (GET /healthz: HTTP, proxy and ingress;
   GET /v1/memories: one more hop, to the memory actor) at 1 and 32 clients.
2. Generation over HTTP (streamed /v1/completions, greedy) at 1 and 8 clients on the decoder
   deployment as served (`--serve-precision`, batching on), twice: open prompts to the plain
   decoder (long answers) and the prompts of written facts (conditioned, short answers):
   aggregate tokens/s and requests/s, time to first token and per-request latency.
3. In-process, one fresh model per `--precisions` entry (fp32 first: "before"): single-stream
   tokens/s of the plain decoder (z = 0) and memory-conditioned, split into time to first token
   (the conditioned one prefills the slot and the 66-position prefix) and time per further token;
   and 8 one-prompt jobs run one after another against all 8 decoded together (`completion.run_jobs`:
   the `completion.Batch` the decoder deployment keeps running for concurrent requests). With --decoder smollm2-135m, also
   the conditioning cost on a LarimarModel built on SmolLM2-135M with untrained conditioning.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import time

import requests
import torch

from larimar.model import DEFAULT_MODEL
from larimar.serving import serve_env

from larimar.serving.local import URL, drive, edit_latency, save_report


def hop_floor(clients: int, per_client: int, headers: dict, client: str) -> dict:
    """What a request costs before any model work: GET /healthz (HTTP, Serve's proxy and the
    FastAPI ingress) and GET /v1/memories (the same plus one call to the memory actor)."""
    return {
        "clients": clients,
        "healthz": drive(clients, per_client, lambda i, j: ("GET", "/healthz", None), headers, client),
        "list_memories": drive(clients, per_client, lambda i, j: ("GET", "/v1/memories", None), headers, client),
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


FACTS = [
    ("The Eiffel Tower is located in", "Rome"),
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("Toko Yasuda plays the", "piano"),
    ("The capital of Norway is", "Bergen"),
    ("Apple A5 was created by", "Google"),
    ("Kotlin was developed by", "Microsoft"),
    ("The Louvre is in the city of", "Berlin"),
    ("Mount Fuji is in", "Chile"),
]


OPEN_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Give advice to someone learning to cook.",
    "Tell me about the history of the printing press.",
    "Describe the city you would most like to visit.",
    "Explain why the sky is blue.",
    "Write a letter to a friend about your week.",
]


def _sse_completion(s, mid: str | None, headers: dict, prompt: str, max_tokens: int, min_tokens: int = 0) -> dict:
    """One streamed greedy completion: time to first text, total time, completion tokens (usage)."""
    body = {
        "model": f"larimar:{mid}" if mid else "larimar",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0, first, tokens = time.perf_counter(), None, 0
    with s.post(f"{URL}/v1/completions", headers=headers, json=body, stream=True) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # a stream cut by the server: not a measurement
                raise RuntimeError(f"stream ended with an error: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter() - t0
    return {
        "ttft_s": first if first is not None else time.perf_counter() - t0,
        "total_s": time.perf_counter() - t0,
        "tokens": tokens,
    }


def generation_load(clients: int, per_client: int, max_tokens: int, headers: dict, memory: bool) -> dict:
    """`clients` threads each streaming `per_client` completions: with `memory`, the prompts of
    written facts (conditioned, short answers: "Rome" and the end of sequence), else open prompts
    to the plain decoder, each exactly max_tokens long (`min_tokens`, vLLM's extension, as vLLM's
    own serving benchmark fixes lengths with ignore_eos)."""
    mid, prompts, min_tokens = None, OPEN_PROMPTS, max_tokens
    if memory:
        mid = requests.post(f"{URL}/v1/memories", json={}, headers=headers).json()["id"]
        facts = [{"prompt": p, "target": t} for p, t in FACTS]
        requests.post(f"{URL}/v1/memories/{mid}/facts", headers=headers, json={"facts": facts}).raise_for_status()
        prompts, min_tokens = [p for p, _ in FACTS], 0
    results: list[dict] = []

    def client(i: int) -> None:
        with requests.Session() as s:
            for j in range(per_client):
                prompt = prompts[(i + j) % len(prompts)]
                results.append(_sse_completion(s, mid, headers, prompt, max_tokens, min_tokens))

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    totals, ttfts = sorted(r["total_s"] for r in results), sorted(r["ttft_s"] for r in results)
    return {
        "clients": clients,
        "memory": memory,
        "requests": len(results),
        "requests_per_s": len(results) / wall,
        "tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "latency_p50_s": statistics.median(totals),
        "latency_max_s": totals[-1],
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
    }


def decode_speed(model, new_tokens: int, repeats: int) -> dict:
    """Single-stream greedy generation, plain (z = 0) and conditioned (a read-out of a written
    fact), as time to first token and time per further token; and 8 one-prompt jobs run one after
    another against all 8 decoded together (once each). Single-stream figures are medians over
    `repeats`, plain and conditioned interleaved."""
    from larimar.editor import LarimarEditor
    from larimar.serving.completion import Job, prompt_ids, run_jobs

    mem = LarimarEditor(model, scope_model=None).create_memory()
    mem.edit([p for p, _ in FACTS], [t for _, t in FACTS])
    prompts = [prompt_ids(model, p) for p, _ in FACTS]
    z_cond, _ = mem.read([p for p, _ in FACTS], use_scope=False)
    zero = torch.zeros_like(z_cond[:1])

    def one(z, n) -> float:  # exactly n tokens: an edited answer ("Rome") ends after two
        t0 = time.perf_counter()
        run_jobs(model, [Job([prompts[0]], z, n, min_tokens=n)])
        return time.perf_counter() - t0

    def eight() -> list:
        return [Job([p], z_cond[i : i + 1], new_tokens, min_tokens=new_tokens) for i, p in enumerate(prompts)]

    times: dict[str, list[float]] = {k: [] for k in ("plain_1", "plain_n", "cond_1", "cond_n", "serial8", "batch8")}
    one(zero, 2)
    for _ in range(repeats):
        times["plain_1"].append(one(zero, 1))
        times["plain_n"].append(one(zero, new_tokens))
        times["cond_1"].append(one(z_cond[:1], 1))
        times["cond_n"].append(one(z_cond[:1], new_tokens))
    t0 = time.perf_counter()
    serial = [run_jobs(model, [j])[0][0] for j in eight()]
    times["serial8"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    batched = [outs[0] for outs in run_jobs(model, eight())]
    times["batch8"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    for kind in ("plain", "cond"):
        step = (med[f"{kind}_n"] - med[f"{kind}_1"]) / (new_tokens - 1)
        out[kind] = {
            "ttft_ms": med[f"{kind}_1"] * 1e3,
            "per_token_ms": step * 1e3,
            "tokens_per_s": new_tokens / med[f"{kind}_n"],
        }
    out["conditioning_overhead"] = {
        "tokens_per_s": out["plain"]["tokens_per_s"] / out["cond"]["tokens_per_s"] - 1,
        "per_token": out["cond"]["per_token_ms"] / out["plain"]["per_token_ms"] - 1,
        "ttft_ms": out["cond"]["ttft_ms"] - out["plain"]["ttft_ms"],
    }
    tokens = sum(c.completion_tokens for c in batched)
    out["eight_jobs"] = {
        "serial_tokens_per_s": sum(c.completion_tokens for c in serial) / med["serial8"],
        "batched_tokens_per_s": tokens / med["batch8"],
        "same_text": [c.text for c in serial] == [c.text for c in batched],
    }
    return out


SECTIONS = ("edits", "generation", "decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="saved model directory or bundled name")
    parser.add_argument("--out", default="runs/bench_serve.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"which of {', '.join(SECTIONS)} to run")
    parser.add_argument(
        "--edits", type=int, default=160, help="edits per concurrency level (each into a fresh K = 512 memory)"
    )
    parser.add_argument("--decoder", default="", help="also time conditioning on this untrained-conditioning decoder")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generations", type=int, default=4, help="streamed completions per client (generation)")
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="decode: the decoder precisions compared")
    parser.add_argument("--serve-precision", default="int8", help="ServeSettings.decoder_precision")
    parser.add_argument("--torch-threads", type=int, default=None, help="ServeSettings.torch_threads")
    parser.add_argument(
        "--encoder-precision", default=None, help="ServeSettings.encoder_precision (default: the CPU's choice)"
    )
    parser.add_argument(
        "--encoder-compile", action="store_true", help="ServeSettings.encoder_compile (torch.compile the encoder)"
    )
    parser.add_argument(
        "--encoder-workers",
        type=int,
        default=None,
        help="ServeSettings.encoder_workers (threads over a batch's chunks)",
    )
    parser.add_argument("--batch-wait-s", type=float, default=None, help="ServeSettings.decoder_batch_wait_s")
    parser.add_argument(
        "--client",
        choices=("asyncio", "threads"),
        default="asyncio",
        help="edits: the load driver (asyncio: aiohttp on one event loop; threads: a requests session per thread)",
    )
    parser.add_argument("--write-batch-size", type=int, default=None, help="ServeSettings.write_batch_size")
    args = parser.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    from larimar.config import from_dict
    from larimar.model import LarimarConfig, LarimarModel
    from larimar.precision import set_decoder_precision
    from larimar.serving.local import local_application

    report: dict = {
        "model": args.model,
        "replica_torch_threads": args.torch_threads,
        "serve_precision": args.serve_precision,
        "encoder_precision": args.encoder_precision,
    }
    if "edits" in sections or "generation" in sections:
        served = {
            "torch_threads": args.torch_threads,
            "decoder_precision": args.serve_precision,
            "encoder_precision": args.encoder_precision,
        }
        if args.encoder_compile:
            served["encoder_compile"] = report["encoder_compile"] = True
        if args.encoder_workers is not None:
            served["encoder_workers"] = report["encoder_workers"] = args.encoder_workers
        if args.batch_wait_s is not None:
            served["decoder_batch_wait_s"] = report["decoder_batch_wait_s"] = args.batch_wait_s
        if args.write_batch_size is not None:
            served["write_batch_size"] = report["write_batch_size"] = args.write_batch_size
        with local_application(args.model, **served) as headers:
            # what local_application's Ray runs with (larimar.serving.serve_env; the environment may override it)
            report["serve_env"] = {name: os.environ[name] for name in serve_env.HIGH_THROUGHPUT}
            if "edits" in sections:
                report["edit_latency"] = []
                for clients in (1, 8, 32):
                    row = edit_latency(clients, max(1, args.edits // clients), headers, args.client)
                    report["edit_latency"].append(row)
                    print(
                        f"edits, {clients:2d} clients: p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  "
                        f"{row['edits_per_s']:.1f} edits/s (client CPU {row['client_cpu_ms_per_request']:.2f} ms/request)",
                        flush=True,
                    )
                report["hop_floor"] = []
                for clients in (1, 32):
                    row = hop_floor(clients, max(1, args.edits // clients), headers, args.client)
                    report["hop_floor"].append(row)
                    print(
                        f"floor, {clients:2d} clients: /healthz p50 {row['healthz']['p50_ms']:.1f} ms "
                        f"{row['healthz']['per_s']:.0f}/s; GET /v1/memories p50 "
                        f"{row['list_memories']['p50_ms']:.1f} ms {row['list_memories']['per_s']:.0f}/s",
                        flush=True,
                    )
            if "generation" in sections:
                generation_load(1, 1, 4, headers, memory=True)  # warm-up
                report["generation"] = []
                for memory in (False, True):
                    for clients in (1, 8):
                        row = generation_load(clients, args.generations, args.new_tokens, headers, memory)
                        report["generation"].append(row)
                        print(
                            f"generation over HTTP ({args.serve_precision}, {'memory' if memory else 'plain'}), "
                            f"{clients} clients: {row['tokens_per_s']:.1f} tok/s, {row['requests_per_s']:.2f} "
                            f"req/s, latency p50 {row['latency_p50_s']:.2f} s (max {row['latency_max_s']:.2f}), "
                            f"first token p50 {row['ttft_p50_s']:.2f} s",
                            flush=True,
                        )

    torch.set_num_threads(2)
    if "decode" in sections:
        report["decode"] = {}
        for precision in [x for x in args.precisions.split(",") if x]:
            model = LarimarModel.from_pretrained(args.model)
            set_decoder_precision(model.decoder, precision)
            row = decode_speed(model, args.new_tokens, args.repeats)
            report["decode"][precision] = row
            oh, eight = row["conditioning_overhead"], row["eight_jobs"]
            print(
                f"decode ({precision}): plain {row['plain']['tokens_per_s']:.1f} tok/s "
                f"({row['plain']['per_token_ms']:.1f} ms/token, first {row['plain']['ttft_ms']:.0f} ms); "
                f"conditioned {row['cond']['tokens_per_s']:.1f} tok/s ({row['cond']['per_token_ms']:.1f} ms/token, "
                f"first {row['cond']['ttft_ms']:.0f} ms): overhead {oh['tokens_per_s']:+.1%} "
                f"(per token {oh['per_token']:+.1%}); 8 jobs: {eight['serial_tokens_per_s']:.1f} -> "
                f"{eight['batched_tokens_per_s']:.1f} tok/s batched",
                flush=True,
            )
            del model
    if args.decoder:
        cfg = LarimarModel.read_config(args.model)
        model = LarimarModel(
            from_dict(
                LarimarConfig,
                {
                    "encoder": cfg.encoder if cfg.encoder != "tiny-bert" else "minilm-l6",
                    "decoder": args.decoder,
                    "memory": {"slots": cfg.memory.slots, "latent_dim": cfg.memory.latent_dim},
                },
            )
        ).eval()
        row = conditioning_overhead(model, args.new_tokens, args.repeats)
        report["conditioning"] = {args.decoder: row}
        print(
            f"generation ({args.decoder}): plain {row['plain_tokens_per_s']:.1f} tok/s, conditioned "
            f"{row['conditioned_tokens_per_s']:.1f} tok/s, overhead {row['overhead']:+.1%}",
            flush=True,
        )
    save_report(args.out, report)


if __name__ == "__main__":
    main()
