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
from larimar.evaluation.report import Report, markdown_table


CONDITIONS = ("scope", "no_scope", "edited", "unedited")  # the views of an edited state, then the unedited model


def conditions(records: list[dict]) -> list[str]:
    """The conditions the records hold (an Editor's views, `evaluate_editor`), in table order."""
    return [c for c in CONDITIONS if records and c in records[0]]


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.scope_model is not None and cfg.editor == "larimar"


def items(cfg: EvalConfig, slots: int) -> list[ZsreCase]:
    return load_zsre(cfg.data, cfg.limit)


def evaluate_editor(editor: Editor, cases: list[ZsreCase], tick=lambda k: None, batch_size: int = 16) -> list[dict]:
    """Any `Editor` on the same cases: per case reset, force unedited, edit (timed), force every view
    of the edited state ("edited" for a baseline, "scope" / "no_scope" for Larimar's memory)."""
    out = []
    for case in cases:
        editor.reset()
        prompts, answers = [case.prompt, case.rephrase, case.loc], [case.target, case.target, case.loc_ans]
        forced = {"unedited": editor.force(prompts, answers, batch_size)}
        edit_s = timed_edit(editor, EditRequest(case.prompt, case.target, case.subject))
        for cond, view in editor.views().items():
            forced[cond] = view.force(prompts, answers, batch_size)
        base_loc = forced["unedited"][2].pred_ids
        record = {"case_id": case.case_id, "edit_s": edit_s}
        for c, (es, ps, loc) in forced.items():
            reached = [False] * 3 if c == "unedited" else [es.in_scope, ps.in_scope, loc.in_scope]
            record[c] = {
                "ES": es.token_acc,
                "PS": ps.token_acc,
                "ES_exact": es.exact,
                "PS_exact": ps.exact,
                "NS": loc.token_acc,
                "locality": metrics.unchanged_fraction(loc.pred_ids, base_loc),
                "in_scope": reached,
            }
        out.append(record)
        tick(1)
    editor.reset()
    return out


def evaluate(ctx: EvalContext, cases: list[ZsreCase], tick) -> list[dict]:
    """Larimar (one edit in a fresh memory per case) or a baseline, through `evaluate_editor`."""
    editor = ctx.method_editor(capacity=1)
    editor.prepare()
    return evaluate_editor(editor, cases, tick, ctx.cfg.batch_size)


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    keys = ("ES", "PS", "ES_exact", "PS_exact", "NS", "locality")
    summary = {"cases": len(records)}
    for c in conditions(records):
        summary[c] = {k: metrics.mean([float(r[c][k]) for r in records]) for k in keys}
        for i, g in enumerate(("ES", "PS", "loc")):
            summary[c][f"{g}_in_scope"] = metrics.mean([float(r[c]["in_scope"][i]) for r in records])
    rows = [
        [c, *(summary[c][k] for k in keys), summary[c]["PS_in_scope"], summary[c]["loc_in_scope"]]
        for c in conditions(records)
    ]
    table = markdown_table(
        [
            "condition",
            "ES (tok acc)",
            "PS (tok acc)",
            "ES exact",
            "PS exact",
            "NS (loc_ans acc)",
            "locality (unchanged)",
            "PS in scope",
            "loc in scope",
        ],
        rows,
    )
    notes = [
        "ES/PS: teacher-forced argmax token accuracy of answers[0] after src / rephrase (exact: every token).",
        "NS: token accuracy of loc_ans on the loc prompt (ROME's zsRE neighbourhood metric, Larimar Table 12); "
        "locality: fraction of loc_ans positions whose argmax equals the unedited decoder's (EasyEdit).",
        f"scope threshold {cfg.scope_threshold} (cosine; {cfg.subject_threshold} for queries naming the edit's "
        f"subject{'' if cfg.use_subjects else ', subjects not passed'}); 'unedited' = z = 0.",
    ]
    return Report(summary, table, records, notes=notes)
