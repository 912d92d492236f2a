"""Throughput of distributed training vs the plain single-process loop, same objective and data.

    python jobs/bench_train.py [--bench tiny=plain,1,2 --bench larimar-smol=plain,1] [--steps 8]
                               [--out runs/bench_train.json]

For each config: `larimar.training.train_plain` in this process (all cores, torch threads), then
`jobs/train.py`'s path (`larimar.distributed.fit`: Ray Train + DeepSpeed ZeRO-2) with 1 and/or 2
workers sharing the machine's cores (cpus_per_worker = cores / workers). Tokens/s counts decoder
tokens (non-pad targets, both loops count the same) over all steps but the first, which warms up
(allocations, first gloo collectives). A Ray run's wall time also includes worker start-up and
checkpointing. ratio = distributed tokens/s / plain tokens/s: the measured cost (or gain) of the
distributed stack on this machine. Every distributed run starts fresh (a new storage directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from larimar.data import prepare_chunks
from larimar.distributed import fit, resolve_paths
from larimar.model import LarimarModel
from larimar.train_config import TrainConfig, load_train_config
from larimar.training import episode_batch, train_plain

CONFIG_DIR = Path(__file__).parent / "configs"


def plain(cfg: TrainConfig, chunks: list[str]) -> dict:
    """train_plain on one worker's share of a step: micro_batch_episodes x grad_accumulation episodes."""
    torch.manual_seed(cfg.run.seed)
    model = LarimarModel(cfg.model)
    B, E = cfg.optim.micro_batch_episodes * cfg.optim.grad_accumulation, cfg.data.episode_size
    per_step = B * E

    def batches():
        i = 0
        while True:
            if i + per_step > len(chunks):
                i = 0
            yield episode_batch(model, chunks[i:i + per_step], B, E)
            i += per_step

    t0 = time.perf_counter()
    logs = train_plain(model, batches(), cfg.optim.steps, lr=cfg.optim.lr, warmup=cfg.optim.warmup_steps,
                       clip=cfg.optim.clip)
    steady = logs[1:] or logs
    return {"tokens_per_second": sum(x.tokens for x in steady) / sum(x.seconds for x in steady),
            "step_seconds": sum(x.seconds for x in steady) / len(steady), "loss": logs[-1].loss,
            "wall_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def distributed(cfg: TrainConfig, chunks) -> dict:
    out = fit(cfg, chunks)
    m = out["metrics"]
    return {"tokens_per_second": m["steady_tokens_per_second"], "step_seconds": m["step_seconds"],
            "loss": m["loss"], "wall_seconds": out["seconds"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="append", help="CONFIG=plain,1,2 (config name in jobs/configs or a path)")
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
            path = Path(name) if name.endswith(".yaml") else CONFIG_DIR / f"{name}.yaml"
            for mode in modes.split(","):
                workers = 1 if mode == "plain" else int(mode)
                overrides = [f"optim.steps={args.steps}", f"optim.warmup_steps={min(2, args.steps)}",
                             f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cores / workers}",
                             f"run.storage_path={storage}", f"run.name=bench-{path.stem}-{mode}",
                             f"run.checkpoint_every={args.steps}", f"run.log_every={max(1, args.steps // 4)}"]
                cfg = resolve_paths(load_train_config(path, overrides))
                chunks = prepare_chunks(cfg)
                print(f"== {path.stem}: {'plain loop' if mode == 'plain' else f'{workers} Ray/DeepSpeed workers'}, "
                      f"{args.steps} steps", flush=True)
                row = plain(cfg, chunks["text"]) if mode == "plain" else distributed(cfg, chunks)
                row.update(config=path.stem, mode="plain" if mode == "plain" else "ray+deepspeed", workers=workers,
                           steps=args.steps, chunks_per_worker_step=cfg.chunks_per_micro_batch * cfg.optim.grad_accumulation)
                results.append(row)
                print(f"   {row['tokens_per_second']:,.0f} tokens/s, {row['step_seconds']:.2f} s/step, "
                      f"loss {row['loss']:.3f}, wall {row['wall_seconds']:.0f}s", flush=True)
    finally:
        ray.shutdown()
    for row in results:
        base = next((r for r in results if r["config"] == row["config"] and r["mode"] == "plain"), None)
        row["ratio_vs_plain"] = row["tokens_per_second"] / base["tokens_per_second"] if base else None
    report = {"host": {"cpus": cores, "machine": platform.machine(), "torch": torch.__version__,
                       "device": "cpu"}, "results": results}
    print(f"\n{'config':14s} {'mode':14s} {'workers':>7s} {'tokens/s':>10s} {'s/step':>7s} {'loss':>8s} {'vs plain':>8s}")
    for r in results:
        ratio = f"{r['ratio_vs_plain']:.2f}x" if r["ratio_vs_plain"] is not None else "-"
        print(f"{r['config']:14s} {r['mode']:14s} {r['workers']:7d} {r['tokens_per_second']:10,.0f} "
              f"{r['step_seconds']:7.2f} {r['loss']:8.3f} {ratio:>8s}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
