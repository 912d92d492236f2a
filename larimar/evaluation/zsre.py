"""zsRE single-fact editing, MEND format (Larimar Table 12; EasyEdit's token metrics).

Per case a fresh memory holds ``memory.edit(src, answers[0])``. Reported, teacher-forced
(`larimar.evaluation.forcing`):
- ES / PS: argmax token accuracy of ``answers[0]`` after ``src`` / after ``rephrase``, and exact
  match (all answer tokens right).
- locality (EasyEdit): fraction of ``loc_ans`` positions on the ``loc`` prompt whose argmax is the
  same as the unedited decoder's, 1.0 when nothing changed.
- NS (ROME zsRE, Larimar Table 12): token accuracy of ``loc_ans`` itself on the ``loc`` prompt;
  this one depends on what the base model knows, so it is low even when nothing changed.
Conditions: scope-gated read, ungated read, and the unedited decoder (z = 0).
"""

from __future__ import annotations

from larimar.baselines.base import EditRequest, Editor, timed_edit
from larimar.evaluation import metrics
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.benchmarks import ZsreCase, load_zsre
from larimar.evaluation.forcing import force_with_memory
from larimar.evaluation.report import Report, markdown_table


def conditions(cfg: EvalConfig) -> list[str]:
    if cfg.editor != "larimar":
        return ["edited", "unedited"]
    return (["scope"] if cfg.scope_model else []) + ["no_scope", "unedited"]


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.scope_model is not None and cfg.editor == "larimar"


def items(cfg: EvalConfig, slots: int) -> list[ZsreCase]:
    return load_zsre(cfg.data, cfg.limit)


def evaluate_case(ctx: EvalContext, case: ZsreCase) -> dict:
    mem = ctx.memory(capacity=1, scope=ctx.editor.scope_embedder is not None)
    mem.edit([case.prompt], [case.target], subject=ctx.subjects([case.subject]))
    prompts = [case.prompt, case.rephrase, case.loc]
    answers = [case.target, case.target, case.loc_ans]
    forced = {c: force_with_memory(None if c == "unedited" else mem, prompts, answers, use_scope=c == "scope",
                                   model=ctx.model) for c in conditions(ctx.cfg)}
    base_loc = forced["unedited"][2].pred_ids
    record = {"case_id": case.case_id}
    for c, (es, ps, loc) in forced.items():
        record[c] = {"ES": es.token_acc, "PS": ps.token_acc, "ES_exact": es.exact, "PS_exact": ps.exact,
                     "NS": loc.token_acc, "locality": metrics.unchanged_fraction(loc.pred_ids, base_loc),
                     "in_scope": [es.in_scope, ps.in_scope, loc.in_scope]}
    return record


def evaluate_editor(editor: Editor, cases: list[ZsreCase], tick=lambda k: None, batch_size: int = 16) -> list[dict]:
    """A peer baseline on the same cases: unedited, edit (timed), edited, reset; conditions edited/unedited."""
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


def evaluate(ctx: EvalContext, cases: list[ZsreCase], tick) -> list[dict]:
    if ctx.cfg.editor != "larimar":
        ctx.baseline.prepare()
        return evaluate_editor(ctx.baseline, cases, tick, ctx.cfg.batch_size)
    out = []
    for case in cases:
        out.append(evaluate_case(ctx, case))
        tick(1)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    keys = ("ES", "PS", "ES_exact", "PS_exact", "NS", "locality")
    summary = {"cases": len(records)}
    for c in conditions(cfg):
        summary[c] = {k: metrics.mean([float(r[c][k]) for r in records]) for k in keys}
        for i, g in enumerate(("ES", "PS", "loc")):
            summary[c][f"{g}_in_scope"] = metrics.mean([float(r[c]["in_scope"][i]) for r in records])
    rows = [[c, *(summary[c][k] for k in keys), summary[c]["PS_in_scope"], summary[c]["loc_in_scope"]]
            for c in conditions(cfg)]
    table = markdown_table(["condition", "ES (tok acc)", "PS (tok acc)", "ES exact", "PS exact", "NS (loc_ans acc)",
                            "locality (unchanged)", "PS in scope", "loc in scope"], rows)
    notes = ["ES/PS: teacher-forced argmax token accuracy of answers[0] after src / rephrase (exact: every token).",
             "NS: token accuracy of loc_ans on the loc prompt (ROME's zsRE neighbourhood metric, Larimar Table 12); "
             "locality: fraction of loc_ans positions whose argmax equals the unedited decoder's (EasyEdit).",
             f"scope threshold {cfg.scope_threshold} (cosine; {cfg.subject_threshold} for queries naming the edit's "
             f"subject{'' if cfg.use_subjects else ', subjects not passed'}); 'unedited' = z = 0."]
    return Report(summary, table, records, notes=notes)
