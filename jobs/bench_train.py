"""Throughput of distributed training vs the plain single-process loop, same objective and data.

    python jobs/bench_train.py [--bench tiny=plain,1,2 --bench larimar-smol=plain,1] [--steps 8]
                               [--out runs/bench_train.json]

For each config: `larimar.train.loop.train_plain` in a separate Python process (no Ray in it), then
`jobs/train.py`'s path (`larimar.train.distributed.fit`: Ray Train + DeepSpeed ZeRO-2) with 1 and/or 2
workers sharing the machine's cores (cpus_per_worker = cores / workers). Every process trains with
the same thread settings: OMP_NUM_THREADS and torch.set_num_threads = its whole cores
(`larimar.train.distributed.cpu_threads`; the plain loop gets the 1-worker share, i.e. all cores).
Tokens/s counts decoder tokens (non-pad targets, both loops count the same) over all steps but the
first, which warms up (allocations, first gloo collectives); a step's time covers taking and
tokenizing its texts, forward, backward and the update in both loops. A Ray run's wall time also
includes worker start-up and checkpointing. ratio = distributed tokens/s / plain tokens/s: the
measured cost (or gain) of the distributed stack on this machine. Every distributed run starts
fresh (a new storage directory) and reports its per-step phase times (data, forward, backward,
optimizer) in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from larimar import recipes
from larimar.train.data import prepare_chunks
from larimar.train.distributed import cpu_threads, fit, resolve_paths
from larimar.model import LarimarModel
from larimar.train.config import TrainConfig, load_train_config
from larimar.train.loop import episode_batch, train_plain


def plain(cfg: TrainConfig, chunks: list[str]) -> dict:
    """train_plain on one worker's share of a step: micro_batch_episodes x grad_accumulation episodes.

    Runs in the current process with `cpu_threads(cfg)` torch threads; `main` calls it in a child
    process (`plain_in_subprocess`) so that it shares nothing with the driver's Ray. A step's time
    is measured like the workers': from the end of the previous step, so it includes taking the
    texts and tokenizing them (`episode_batch`) as well as forward, backward and the update."""
    torch.set_num_threads(cpu_threads(cfg))
    torch.manual_seed(cfg.run.seed)
    model = LarimarModel(cfg.model)
    B, E = cfg.optim.micro_batch_episodes * cfg.optim.grad_accumulation, cfg.data.episode_size
    per_step = B * E

    def batches():
        i = 0
        while True:
            if i + per_step > len(chunks):
                i = 0
            yield episode_batch(model, chunks[i : i + per_step], B, E)
            i += per_step

    ends = [time.perf_counter()]
    logs = train_plain(
        model,
        batches(),
        cfg.optim.steps,
        lr=cfg.optim.lr,
        warmup=cfg.optim.warmup_steps,
        clip=cfg.optim.clip,
        on_step=lambda _: ends.append(time.perf_counter()),
    )
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    steady = list(zip(logs, seconds))[1:] or list(zip(logs, seconds))
    return {
        "tokens_per_second": sum(x.tokens for x, _ in steady) / sum(t for _, t in steady),
        "step_seconds": sum(t for _, t in steady) / len(steady),
        "loss": logs[-1].loss,
        "wall_seconds": ends[-1] - ends[0],
        "threads": torch.get_num_threads(),
    }


def plain_in_subprocess(path: Path, overrides: list[str]) -> dict:
    """`plain` in a fresh Python process with the workers' thread settings (OMP_NUM_THREADS and
    torch.set_num_threads), away from the driver's Ray processes and threads."""
    cfg = load_train_config(path, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(cpu_threads(cfg)), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [sys.executable, __file__, "--plain-child", str(path), out.name, *overrides], env=env, check=True
        )
        return json.loads(Path(out.name).read_text())


def distributed(cfg: TrainConfig, chunks) -> dict:
    out = fit(cfg, chunks)
    m = out["metrics"]
    steady_steps = max(1, m["step"] - m["start_step"] - 1)
    return {
        "tokens_per_second": m["steady_tokens_per_second"],
        "step_seconds": m["steady_seconds"] / steady_steps,
        "loss": m["loss"],
        "wall_seconds": out["seconds"],
        "threads": m["threads"],
        "phase_seconds_per_step": {k.split("/", 1)[1]: v / steady_steps for k, v in m.items() if k.startswith("time/")},
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain-child"]:  # plain_in_subprocess: CONFIG OUT_JSON OVERRIDES...
        path, out, overrides = argv[1], argv[2], argv[3:]
        cfg = resolve_paths(load_train_config(path, overrides))
        Path(out).write_text(json.dumps(plain(cfg, prepare_chunks(cfg)["text"])))
        return {}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bench", action="append", help="CONFIG=plain,1,2 (a recipe name, larimar recipes, or a YAML path)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="runs/bench_train.json")
    args = parser.parse_args(argv)
    specs = args.bench or ["tiny=plain,1,2", "larimar-smol=plain,1"]
    cores = os.cpu_count() or 1

    import ray

    results = []
    storage = tempfile.mkdtemp(prefix="larimar-bench-")
    ray.init(address="local", num_cpus=cores, include_dashboard=False)
    try:
        for spec in specs:
            name, modes = spec.split("=", 1)
            path = recipes.resolve(name, key="--bench")
            for mode in modes.split(","):
                workers = 1 if mode == "plain" else int(mode)
                overrides = [
                    f"optim.steps={args.steps}",
                    f"optim.warmup_steps={min(2, args.steps)}",
                    f"scaling.num_workers={workers}",
                    f"scaling.cpus_per_worker={cores / workers}",
                    f"run.storage_path={storage}",
                    f"run.name=bench-{path.stem}-{mode}",
                    f"run.checkpoint_every={args.steps}",
                    f"run.log_every={max(1, args.steps // 4)}",
                ]
                cfg = resolve_paths(load_train_config(path, overrides))
                print(
                    f"== {path.stem}: {'plain loop' if mode == 'plain' else f'{workers} Ray/DeepSpeed workers'}, "
                    f"{args.steps} steps, {cpu_threads(cfg)} threads per process",
                    flush=True,
                )
                if mode == "plain":
                    row = plain_in_subprocess(path, overrides)
                else:
                    row = distributed(cfg, prepare_chunks(cfg))
                row.update(
                    config=path.stem,
                    mode="plain" if mode == "plain" else "ray+deepspeed",
                    workers=workers,
                    steps=args.steps,
                    chunks_per_worker_step=cfg.chunks_per_micro_batch * cfg.optim.grad_accumulation,
                )
                results.append(row)
                print(
                    f"   {row['tokens_per_second']:,.0f} tokens/s, {row['step_seconds']:.2f} s/step, "
                    f"loss {row['loss']:.3f}, wall {row['wall_seconds']:.0f}s",
                    flush=True,
                )
    finally:
        ray.shutdown()
    for row in results:
        base = next((r for r in results if r["config"] == row["config"] and r["mode"] == "plain"), None)
        row["ratio_vs_plain"] = row["tokens_per_second"] / base["tokens_per_second"] if base else None
    report = {
        "host": {"cpus": cores, "machine": platform.machine(), "torch": torch.__version__, "device": "cpu"},
        "results": results,
    }
    print(
        f"\n{'config':14s} {'mode':14s} {'workers':>7s} {'threads':>7s} {'tokens/s':>10s} {'s/step':>7s} "
        f"{'loss':>8s} {'vs plain':>8s}"
    )
    for r in results:
        ratio = f"{r['ratio_vs_plain']:.2f}x" if r["ratio_vs_plain"] is not None else "-"
        print(
            f"{r['config']:14s} {r['mode']:14s} {r['workers']:7d} {r['threads']:7d} {r['tokens_per_second']:10,.0f} "
            f"{r['step_seconds']:7.3f} {r['loss']:8.3f} {ratio:>8s}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
