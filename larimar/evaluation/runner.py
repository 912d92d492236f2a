"""Running an experiment: list its work items, evaluate them in one process or over Ray tasks, summarise.

Every experiment module has the same four functions:
    needs_scope(cfg) -> bool                      load the scope detector's embedder?
    items(cfg, slots) -> list                     picklable work items (cases, (K, N) points, ...)
    evaluate(ctx, items, tick) -> list[dict]      one record per item, in order; tick(k) advances progress
    summarize(records, cfg, slots) -> Report
Records depend only on their item and the seed (wall-clock edit times apart), so the Ray path (`--workers N`: the items cut
into N contiguous chunks, one task per chunk, each loading the model) returns the same records
as the single-process path. Under ``ray job submit`` the driver joins the job's cluster
(``RAY_ADDRESS``); otherwise it starts a local Ray.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from tqdm.auto import tqdm

from larimar.config import ConfigError, from_dict
from larimar.evaluation import report
from larimar.evaluation.config import EXPERIMENTS, EvalConfig
from larimar.evaluation.context import EvalContext, model_config


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def model_slots(spec: str) -> int:
    """The trained K of a model, read from its config without loading weights."""
    return model_config(spec).memory.slots


def chunks(items: list, n: int) -> list[list]:
    """n contiguous, nearly equal, non-empty chunks (fewer when there are fewer items)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def run_chunk(cfg_dict: dict, work: list) -> list[dict]:
    """A Ray task's body: load the model once, evaluate its chunk of items."""
    cfg = from_dict(EvalConfig, cfg_dict)
    module = experiment_module(cfg.experiment)
    ctx = EvalContext(cfg, needs_scope=module.needs_scope(cfg))
    return module.evaluate(ctx, work, lambda k: None)


def evaluate_items(module, cfg: EvalConfig, work: list, context: EvalContext | None = None) -> list[dict]:
    unit = "case" if cfg.experiment in ("counterfact", "zsre", "timing", "generation") else "point"
    if cfg.workers == 0:
        ctx = context or EvalContext(cfg, needs_scope=module.needs_scope(cfg))
        if cfg.experiment == "sequential":  # one item; progress counts edits
            unit, total = "edit", len(ctx.facts)
        else:
            total = len(work)
        with tqdm(total=total, desc=cfg.experiment, unit=unit, disable=not cfg.progress) as bar:
            return module.evaluate(ctx, work, bar.update)
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(run_chunk)
    parts = chunks(work, cfg.workers)
    cfg_dict = dataclasses.asdict(cfg)
    refs = [task.remote(cfg_dict, part) for part in parts]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[list[dict] | None] = [None] * len(refs)
    pending = list(refs)
    with tqdm(
        total=len(work), desc=f"{cfg.experiment} ({len(parts)} Ray tasks)", unit=unit, disable=not cfg.progress
    ) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            results[i] = ray.get(done[0])
            bar.update(len(parts[i]))
    return [r for part in results for r in part]


def run(cfg: EvalConfig, context: EvalContext | None = None) -> tuple[report.Report, dict[str, Path]]:
    """Evaluate one experiment and write its JSON, Markdown and (for curves) PNG to cfg.out."""
    module = experiment_module(cfg.experiment)
    slots = cfg.slots or (context.model.cfg.memory.slots if context else model_slots(cfg.model))
    work = module.items(cfg, slots)
    if not work:
        raise ConfigError(f"--data {cfg.data}: no cases to evaluate (check --limit)")
    records = evaluate_items(module, cfg, work, context)
    rep = module.summarize(records, cfg, slots)
    return rep, report.write(rep, cfg.out, cfg.experiment, cfg)
