"""The CounterFact, zsRE and sequential experiments for a baseline editor, with Larimar's protocol.

Each function returns records in the same format as the Larimar experiment it mirrors
(`larimar.evaluation.counterfact`, `.zsre`, `.sequential`), so that module's `summarize` turns
them into the same table. The conditions are "edited" (after the edit) and "unedited" (the
base decoder, scored before the edit). Per case: score unedited, apply the edit (timed, wall
clock, the edit only), score edited, reset. Sequential: edits accumulate, recall is measured
at the same checkpoints on the same seeded samples as Larimar's run.
"""

from __future__ import annotations

import random
import time

from larimar.baselines.base import EditRequest, Editor
from larimar.evaluation import metrics
from larimar.evaluation.counterfact import _prompts
from larimar.evaluation.data import CounterFactCase, Fact, ZsreCase
from larimar.evaluation.forcing import recall_rates
from larimar.evaluation.sequential import checkpoints

CONDITIONS = ["edited", "unedited"]


def timed_edit(editor: Editor, request: EditRequest) -> float:
    t0 = time.perf_counter()
    editor.edit(request)
    return time.perf_counter() - t0


def _counterfact_scores(editor: Editor, case: CounterFactCase, batch_size: int) -> dict:
    groups = {g: v for g, v in _prompts(case).items() if v[0]}
    prompts = [p for ps, _ in groups.values() for p in ps]
    trues = [t for ps, t in groups.values() for _ in ps]
    nll = editor.score(prompts + prompts, [case.target_new] * len(prompts) + trues, batch_size)
    new, true = nll[:len(prompts)], nll[len(prompts):]
    out, i = {}, 0
    for g, (ps, _) in groups.items():
        out[g] = {"nll_new": new[i:i + len(ps)], "nll_true": true[i:i + len(ps)], "in_scope": [True] * len(ps)}
        i += len(ps)
    return out


def counterfact(editor: Editor, cases: list[CounterFactCase], tick=lambda k: None, batch_size: int = 16) -> list[dict]:
    out = []
    for case in cases:
        editor.reset()
        record = {"case_id": case.case_id, "format": case.format, "unedited": _counterfact_scores(editor, case, batch_size)}
        record["edit_s"] = timed_edit(editor, EditRequest(case.prompt, case.target_new, case.subject, case.target_true))
        record["edited"] = _counterfact_scores(editor, case, batch_size)
        out.append(record)
        tick(1)
    editor.reset()
    return out


def zsre(editor: Editor, cases: list[ZsreCase], tick=lambda k: None, batch_size: int = 16) -> list[dict]:
    out = []
    for case in cases:
        editor.reset()
        prompts, answers = [case.prompt, case.rephrase, case.loc], [case.target, case.target, case.loc_ans]
        forced = {"unedited": editor.force(prompts, answers, batch_size)}
        edit_s = timed_edit(editor, EditRequest(case.prompt, case.target, case.subject))
        forced["edited"] = editor.force(prompts, answers, batch_size)
        base_loc = forced["unedited"][2].pred_ids
        record = {"case_id": case.case_id, "edit_s": edit_s}
        for c, (es, ps, loc) in forced.items():
            record[c] = {"ES": es.token_acc, "PS": ps.token_acc, "ES_exact": es.exact, "PS_exact": ps.exact,
                         "NS": loc.token_acc, "locality": metrics.unchanged_fraction(loc.pred_ids, base_loc),
                         "in_scope": [c == "edited"] * 3}
        out.append(record)
        tick(1)
    editor.reset()
    return out


def _recall(editor: Editor, facts: list[Fact], batch_size: int, rephrase: bool = False):
    prompts = [f.rephrases[0] if rephrase else f.prompt for f in facts]
    return recall_rates(editor.force(prompts, [f.target for f in facts], batch_size)) if facts else \
        {"token_acc": None, "exact": None}


def sequential(editor: Editor, facts: list[Fact], n_checkpoints: int, eval_cap: int, seed: int,
               tick=lambda k: None, batch_size: int = 16) -> tuple[list[dict], list[float]]:
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
            out.append({"edits": i, "evaluated": len(sample), "retention": kept["token_acc"],
                        "retention_exact": kept["exact"], "rephrase": reph["token_acc"], "rephrase_exact": reph["exact"]})
    editor.reset()
    return out, times
