"""Selective forgetting (Larimar Table 4).

For each N (default 1, K, 2K): write N facts into one memory of K slots, then, for each of
--trials facts in turn (a seeded choice), forget it (``memory.forget``: the RLS update with
alpha = -1 and the fact's original key and value), measure the recall of the forgotten fact and
of the retained ones (a seeded sample of at most --eval-cap), and write it back. Recall is
teacher-forced exact match of the target from the fact's prompt (token accuracy beside it).
The scope detector is off by default: it would hide a forgotten fact on its own, and this
experiment measures the memory.
"""

from __future__ import annotations

import random

from larimar.evaluation import metrics
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.evaluation.forcing import recall, recall_rates
from larimar.evaluation.report import Report, markdown_table


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.use_scope and cfg.scope_model is not None


def sizes(cfg: EvalConfig, slots: int) -> list[int]:
    return cfg.sizes or [1, slots, 2 * slots]


def items(cfg: EvalConfig, slots: int) -> list[dict]:
    return [{"n": n} for n in sizes(cfg, slots)]


def evaluate_size(ctx: EvalContext, n_asked: int) -> dict:
    cfg = ctx.cfg
    facts = ctx.facts[:n_asked]
    n = len(facts)
    rng = random.Random(cfg.seed * 1_000_003 + n)
    use_scope = needs_scope(cfg)
    mem = ctx.memory(capacity=n, scope=use_scope)
    ids = []
    for s in range(0, n, cfg.batch_size):
        chunk = facts[s : s + cfg.batch_size]
        ids += mem.edit(
            [f.prompt for f in chunk], [f.target for f in chunk], subject=ctx.subjects([f.subject for f in chunk])
        )
    trials = []
    for j in rng.sample(range(n), min(cfg.trials, n)):
        before = recall(mem, [facts[j]], use_scope)[0]
        mem.forget(ids[j])
        gone = recall(mem, [facts[j]], use_scope)[0]
        others = [f for i, f in enumerate(facts) if i != j]
        others = others if len(others) <= cfg.eval_cap else rng.sample(others, cfg.eval_cap)
        kept = recall_rates(recall(mem, others, use_scope, cfg.batch_size))
        ids[j] = mem.edit([facts[j].prompt], [facts[j].target], subject=ctx.subjects([facts[j].subject]))[0]
        trials.append(
            {
                "fact": j,
                "before_exact": before.exact,
                "forgotten_exact": gone.exact,
                "forgotten_token_acc": gone.token_acc,
                "retained_exact": kept["exact"],
                "retained_token_acc": kept["token_acc"],
            }
        )
    return {"n_asked": n_asked, "n": n, "trials": trials}


def evaluate(ctx: EvalContext, work: list[dict], tick) -> list[dict]:
    out = []
    for item in work:
        out.append(evaluate_size(ctx, item["n"]))
        tick(1)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    rows, points = [], []
    for r in records:
        t = r["trials"]
        point = {
            "n": r["n"],
            "trials": len(t),
            "recalled_before": metrics.mean([float(x["before_exact"]) for x in t]),
            "forgotten": metrics.mean([float(x["forgotten_exact"]) for x in t]),
            "forgotten_token_acc": metrics.mean([x["forgotten_token_acc"] for x in t]),
            "retained": metrics.mean([x["retained_exact"] for x in t if x["retained_exact"] is not None]),
            "retained_token_acc": metrics.mean(
                [x["retained_token_acc"] for x in t if x["retained_token_acc"] is not None]
            ),
        }
        points.append(point)
        rows.append(
            [
                r["n"] if r["n"] == r["n_asked"] else f"{r['n']} (asked {r['n_asked']})",
                point["trials"],
                point["recalled_before"],
                point["forgotten"],
                point["retained"],
                point["forgotten_token_acc"],
                point["retained_token_acc"],
            ]
        )
    table = markdown_table(
        [
            "N",
            "trials",
            "forgotten fact recalled before",
            "forg. (exact)",
            "ret. (exact)",
            "forg. (tok acc)",
            "ret. (tok acc)",
        ],
        rows,
    )
    notes = [
        f"K = {slots}; recall = teacher-forced exact match of the target from the fact's prompt.",
        f"scope detector {'on' if needs_scope(cfg) else 'off'}; each forgotten fact is written back before the next trial.",
    ]
    return Report({"slots": slots, "points": points}, table, records, notes=notes)
