"""Sequential editing, GRACE protocol (Larimar Table 3 and Fig. 2b).

N facts are written one after another into one memory of K slots (the paper: K = 1000,
ZsRE). After every N/checkpoints edits we measure, over all facts written so far (a seeded
sample of at most --eval-cap):
- edit retention: teacher-forced recall of each fact's target from its own prompt (token
  accuracy, our stand-in for the paper's F1; exact match beside it); ERR = retention after the
  last edit;
- held-out rephrase recall: the same from the fact's rephrase, which was never written.
"""

from __future__ import annotations

import random

from larimar.baselines.base import EditRequest, Editor, timed_edit
from larimar.benchmarks import Fact
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.evaluation.forcing import recall_rates
from larimar.evaluation.report import Curve, Report, markdown_table


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.use_scope and cfg.scope_model is not None and cfg.editor == "larimar"


def items(cfg: EvalConfig, slots: int) -> list[dict]:
    return [{"run": 0}]  # one memory written in order: nothing to split over workers


def checkpoints(n: int, parts: int) -> list[int]:
    step = max(1, -(-n // parts))  # ceil
    return sorted(set(list(range(step, n, step)) + [n]))


def _recall(editor: Editor, facts: list[Fact], batch_size: int, rephrase: bool = False):
    prompts = [f.rephrases[0] if rephrase else f.prompt for f in facts]
    return (
        recall_rates(editor.force(prompts, [f.target for f in facts], batch_size))
        if facts
        else {"token_acc": None, "exact": None}
    )


def evaluate_editor(
    editor: Editor,
    facts: list[Fact],
    n_checkpoints: int,
    eval_cap: int,
    seed: int,
    tick=lambda k: None,
    batch_size: int = 16,
) -> tuple[list[dict], list[float]]:
    """Edits one after another into the same model; (checkpoint records, per-edit seconds)."""
    rng = random.Random(seed)
    editor.reset()
    marks, out, times = set(checkpoints(len(facts), n_checkpoints)), [], []
    for i, f in enumerate(facts, 1):
        times.append(timed_edit(editor, EditRequest(f.prompt, f.target, f.subject)))
        tick(1)
        if i in marks:
            seen = facts[:i]
            sample = seen if len(seen) <= eval_cap else rng.sample(seen, eval_cap)
            kept = _recall(editor, sample, batch_size)
            reph = _recall(editor, [f for f in sample if f.rephrases], batch_size, rephrase=True)
            out.append(
                {
                    "edits": i,
                    "evaluated": len(sample),
                    "retention": kept["token_acc"],
                    "retention_exact": kept["exact"],
                    "rephrase": reph["token_acc"],
                    "rephrase_exact": reph["exact"],
                }
            )
    editor.reset()
    return out, times


def evaluate(ctx: EvalContext, _items: list[dict], tick) -> list[dict]:
    """Larimar (every fact into one memory of K slots, reads gated by scope with --use-scope) or a
    baseline (edits accumulating in the model), through `evaluate_editor`."""
    cfg = ctx.cfg
    editor = ctx.method_editor(capacity=len(ctx.facts), scope=needs_scope(cfg))
    editor.prepare()
    records, _ = evaluate_editor(editor, ctx.facts, cfg.checkpoints, cfg.eval_cap, cfg.seed, tick, cfg.batch_size)
    return records


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    last = records[-1]
    summary = {
        "edits": last["edits"],
        "slots": slots,
        "ERR": last["retention"],
        "ERR_exact": last["retention_exact"],
        "rephrase": last["rephrase"],
        "rephrase_exact": last["rephrase_exact"],
    }
    table = markdown_table(
        [
            "edits",
            "retention (tok acc)",
            "retention exact",
            "held-out rephrase (tok acc)",
            "rephrase exact",
            "facts evaluated",
        ],
        [
            [r["edits"], r["retention"], r["retention_exact"], r["rephrase"], r["rephrase_exact"], r["evaluated"]]
            for r in records
        ],
    )
    xs = [r["edits"] for r in records]
    curve = Curve(
        f"Sequential edits into one memory (K = {slots})",
        "edits written",
        "recall",
        {
            "edit retention": (xs, [r["retention"] for r in records]),
            "held-out rephrase": (xs, [r["rephrase"] for r in records]),
        },
    )
    notes = [
        f"K = {slots}; ERR = retention after the last edit (token accuracy; the paper uses F1).",
        f"scope detector {'on' if needs_scope(cfg) else 'off'} (memory read for every query).",
    ]
    return Report(summary, table, records, curve, notes)
