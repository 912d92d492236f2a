"""Batch-editing capacity (Larimar Fig. 2a and Fig. 4): recall vs the number of facts N for several K.

For each memory size K (--slots-list, default K/2, K, 2K of the model's K) and each N (--sizes,
default K/4 ... 4K of the model's K, capped at the facts available) the first N facts are
written into one fresh memory (``memory.edit`` with lists, in batches: the RLS result is the
same as one batch) and the recall of a seeded sample of at most --eval-cap of them is measured
(teacher-forced exact match and token accuracy from each fact's prompt). The paper: ~100% up to
N = K, then falling (82% at N = 2K for K = 512).
"""

from __future__ import annotations

import random

from larimar.evaluation.config import EvalConfig

from larimar.evaluation.context import EvalContext
from larimar.benchmarks import load_facts
from larimar.evaluation.forcing import recall, recall_rates
from larimar.evaluation.report import Curve, Report, markdown_table


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.use_scope and cfg.scope_model is not None


def items(cfg: EvalConfig, slots: int) -> list[dict]:
    available = len(load_facts(cfg.data, cfg.limit, cfg.seed))
    ks = cfg.slots_list or sorted({max(1, slots // 2), slots, 2 * slots})
    ns = cfg.sizes or sorted({max(1, slots // 4), max(1, slots // 2), slots, 2 * slots, 4 * slots})
    capped = sorted({min(n, available) for n in ns})
    return [{"slots": k, "n": n} for k in ks for n in capped]


def evaluate_point(ctx: EvalContext, slots: int, n: int) -> dict:
    cfg = ctx.cfg
    facts = ctx.facts[:n]
    mem = ctx.memory(slots=slots, capacity=n, scope=needs_scope(cfg))
    for s in range(0, n, cfg.batch_size):
        chunk = facts[s : s + cfg.batch_size]
        mem.edit([f.prompt for f in chunk], [f.target for f in chunk])
    rng = random.Random(cfg.seed * 1_000_003 + slots * 7919 + n)
    sample = facts if n <= cfg.eval_cap else rng.sample(facts, cfg.eval_cap)
    rates = recall_rates(recall(mem, sample, needs_scope(cfg), cfg.batch_size))
    return {"slots": slots, "n": n, "evaluated": len(sample), "recall": rates["exact"], "token_acc": rates["token_acc"]}


def evaluate(ctx: EvalContext, work: list[dict], tick) -> list[dict]:
    out = []
    for item in work:
        out.append(evaluate_point(ctx, item["slots"], item["n"]))
        tick(1)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    ks = sorted({r["slots"] for r in records})
    ns = sorted({r["n"] for r in records})
    at = {(r["slots"], r["n"]): r for r in records}
    rows = [[n, *(at[(k, n)]["recall"] if (k, n) in at else None for k in ks)] for n in ns]
    table = "Recall (exact match) by N (rows) and K (columns):\n\n" + markdown_table(
        ["N"] + [f"K = {k}" for k in ks], rows
    )
    table += "\n\nToken accuracy:\n\n" + markdown_table(
        ["N"] + [f"K = {k}" for k in ks],
        [[n, *(at[(k, n)]["token_acc"] if (k, n) in at else None for k in ks)] for n in ns],
    )
    curve = Curve(
        "Batch-editing capacity",
        "facts written N",
        "recall (exact match)",
        {
            f"K = {k}": (
                [r["n"] for r in records if r["slots"] == k],
                [r["recall"] for r in records if r["slots"] == k],
            )
            for k in ks
        },
        logx=True,
    )
    notes = [
        "recall = teacher-forced exact match of the target from the fact's prompt, over a seeded sample of "
        f"at most {cfg.eval_cap} written facts; scope detector {'on' if needs_scope(cfg) else 'off'}."
    ]
    return Report({"points": records}, table, records, curve, notes)
