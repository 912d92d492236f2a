"""Edit speed vs accuracy: Larimar against ROME, GRACE, FT-L and in-context editing, one command.

    python jobs/bench_edit.py --larimar-model larimar-smol-v3 [--cases 50] [--stream 20] \
        [--methods larimar,ft-l,ike,rome,grace] [--opt rome:layer=5 ...] --out runs/bench_edit

Writes <out>/bench_edit.md (the table), .csv, .json (everything, per-method settings and
one-time costs) and .png (accuracy against median time per edit). Protocol and timing
boundaries: larimar/evaluation/bench.py. Baselines edit --base (default smollm2-135m, the decoder
of larimar-smol); --larimar-model also takes a recipe name (untrained: timings only).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from larimar.evaluation.bench import METHODS, BenchConfig, run  # noqa: E402
from larimar.config import ConfigError  # noqa: E402
from larimar.evaluation.report import fmt  # noqa: E402


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--larimar-model", required=True, help="saved Larimar model directory (or a recipe name)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ",".join(METHODS))
    p.add_argument("--counterfact", default="../shared/data/counterfact/dev_canonical_100.json")
    p.add_argument("--cases", type=int, default=50, help="first N CounterFact cases")
    p.add_argument("--zsre", default="../shared/data/zsre/dev_eval_300.json")
    p.add_argument("--stream", type=int, default=20, help="zsRE facts edited sequentially")
    p.add_argument("--checkpoints", type=int, default=2, help="evaluation points along the stream")
    p.add_argument("--base", default="smollm2-135m", help="decoder the baselines edit ('larimar': the model's own)")
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a baseline setting, e.g. rome:layer=5 (repeatable)",
    )
    p.add_argument("--scope-model", default="minilm-l6", help="Larimar's scope embedder; 'none' disables it")
    p.add_argument("--scope-threshold", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--out", default="runs/bench_edit")
    a = p.parse_args(argv)
    options: dict[str, list[str]] = {}
    for item in a.opt:
        method, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            p.error(f"--opt {item!r}: expected METHOD:KEY=VALUE, e.g. rome:layer=5")
        options.setdefault(method, []).append(kv)
    try:
        return BenchConfig(
            larimar_model=a.larimar_model,
            methods=[m.strip() for m in a.methods.split(",") if m.strip()],
            counterfact=a.counterfact,
            cases=a.cases,
            zsre=a.zsre,
            stream=a.stream,
            checkpoints=a.checkpoints,
            base=a.base,
            options=options,
            scope_model=None if a.scope_model.lower() == "none" else a.scope_model,
            scope_threshold=a.scope_threshold,
            batch_size=a.batch_size,
            seed=a.seed,
            torch_threads=a.torch_threads,
            out=a.out,
        )
    except ConfigError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    try:
        results, paths = run(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {"results": results, "paths": {k: str(v) for k, v in paths.items()}, "fmt": fmt}


if __name__ == "__main__":
    main()
