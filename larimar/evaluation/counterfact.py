"""CounterFact single-fact editing, ROME protocol (Larimar Table 2, and Table 8 without scope).

Per case a fresh memory holds one edit, ``memory.edit(prompt.format(subject), target_new)``
(N = 1, as IBM's ``counterfact_eval.py``). Rewrite, paraphrase and neighbourhood prompts are
scored as ``prompt + " " + target`` for the new and the true target (mean per-token NLL,
`EditableMemory.score`) under three conditions: the memory read gated by the scope detector
(decided per prompt, so both candidates get the same latent), the memory read for every prompt,
and the unedited decoder (an empty memory reads z = 0). ES/PS/NS and the probability gaps are
in `larimar.evaluation.metrics`.
"""

from __future__ import annotations

from larimar.baselines.base import EditRequest, Editor, timed_edit
from larimar.evaluation import metrics
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.benchmarks import CounterFactCase, load_counterfact
from larimar.evaluation.report import Report, markdown_table

GROUPS = ("rewrite", "paraphrase", "neighborhood", "paraphrase_ref")
KEYS = ("ES", "PS", "NS", "PS_ref")


CONDITIONS = ("scope", "no_scope", "edited", "unedited")  # the views of an edited state, then the unedited model


def conditions(records: list[dict]) -> list[str]:
    """The conditions the records hold (an Editor's views, `evaluate_editor`), in table order."""
    return [c for c in CONDITIONS if records and c in records[0]]


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.scope_model is not None and cfg.editor == "larimar"


def items(cfg: EvalConfig, slots: int) -> list[CounterFactCase]:
    return load_counterfact(cfg.data, cfg.limit)


def reference_paraphrase(prompt: str) -> str:
    """A paraphrase prompt as IBM's ``counterfact_eval.py`` scores it: ``p.split('. ')[-1]``, which
    drops ROME's random distractor sentence (the paper's PS; ours, the headline, keeps it)."""
    return prompt.split(". ")[-1]


def _prompts(case: CounterFactCase) -> dict[str, tuple[list[str], str]]:
    """group -> (prompts, the target that counts as true there)."""
    return {
        "rewrite": ([case.prompt], case.target_true),
        "paraphrase": (list(case.paraphrases), case.target_true),
        "neighborhood": (list(case.neighborhood), case.neighborhood_true),
        "paraphrase_ref": ([reference_paraphrase(p) for p in case.paraphrases], case.target_true),
    }


def evaluate(ctx: EvalContext, cases: list[CounterFactCase], tick) -> list[dict]:
    """Larimar (one edit in a fresh memory per case, as IBM's counterfact_eval.py) or a baseline
    (`ctx.baseline`), through the same protocol (`evaluate_editor`)."""
    editor = ctx.method_editor(capacity=1)
    editor.prepare()
    return evaluate_editor(editor, cases, tick, ctx.cfg.batch_size)


def _counterfact_scores(editor: Editor, case: CounterFactCase, batch_size: int) -> dict:
    """Every prompt group of a case scored with the new and the true target; both candidates of a
    prompt are scored in the same batch, under the same read (the same latent for Larimar)."""
    groups = {g: v for g, v in _prompts(case).items() if v[0]}
    prompts = [p for ps, _ in groups.values() for p in ps]
    trues = [t for ps, t in groups.values() for _ in ps]
    new, true = [], []
    for s in range(0, len(prompts), batch_size):
        p, t = prompts[s : s + batch_size], trues[s : s + batch_size]
        scored = editor.score_with_scope(p + p, [case.target_new] * len(p) + t, 2 * len(p))
        new += scored[: len(p)]
        true += scored[len(p) :]
    out, i = {}, 0
    for g, (ps, _) in groups.items():
        out[g] = {
            "nll_new": [x for x, _ in new[i : i + len(ps)]],
            "nll_true": [x for x, _ in true[i : i + len(ps)]],
            "in_scope": [x for _, x in new[i : i + len(ps)]],
        }
        i += len(ps)
    return out


def evaluate_editor(
    editor: Editor, cases: list[CounterFactCase], tick=lambda k: None, batch_size: int = 16
) -> list[dict]:
    """Any `Editor` on the same cases and prompts: per case reset, score unedited, edit (timed),
    score every view of the edited state ("edited" for a baseline, "scope" / "no_scope" for
    Larimar); records in this module's format."""
    out = []
    for case in cases:
        editor.reset()
        record = {
            "case_id": case.case_id,
            "format": case.format,
            "unedited": _counterfact_scores(editor, case, batch_size),
        }
        record["edit_s"] = timed_edit(editor, EditRequest(case.prompt, case.target_new, case.subject, case.target_true))
        for cond, view in editor.views().items():
            record[cond] = _counterfact_scores(view, case, batch_size)
        out.append(record)
        tick(1)
    editor.reset()
    return out


def condition_summary(records: list[dict], cond: str) -> dict:
    s = {}
    for g, key in zip(GROUPS, KEYS):
        per = [r[cond][g] for r in records if g in r[cond]]
        nb = g == "neighborhood"
        s[key] = metrics.case_mean([metrics.rome_success(p["nll_new"], p["nll_true"], nb) for p in per])
        s[key.replace("S", "M")] = metrics.case_mean(
            [metrics.probability_gap(p["nll_new"], p["nll_true"], nb) for p in per]
        )
        s[f"{key}_in_scope"] = metrics.case_mean([[float(x) for x in p["in_scope"]] for p in per])
    s["Score"] = metrics.harmonic_mean([s["ES"], s["PS"], s["NS"]])
    return s


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    summary = {"cases": len(records), **{c: condition_summary(records, c) for c in conditions(records)}}
    rows = [
        [
            c,
            summary[c]["ES"],
            summary[c]["PS"],
            summary[c]["NS"],
            summary[c]["Score"],
            summary[c]["PS_ref"],
            summary[c]["EM"],
            summary[c]["PM"],
            summary[c]["NM"],
            summary[c]["PS_in_scope"],
            summary[c]["NS_in_scope"],
        ]
        for c in conditions(records)
    ]
    table = markdown_table(
        ["condition", "ES", "PS", "NS", "Score", "PS (paper)", "EM", "PM", "NM", "PS in scope", "NS in scope"], rows
    )
    notes = [
        "S = success rate (new target's mean NLL below the true target's; on neighbourhood prompts the true "
        "target must win); M = mean probability gap exp(-NLL_new) - exp(-NLL_true), negated on neighbourhood "
        "prompts (ROME's NM); Score = harmonic mean of ES, PS, NS.",
        "PS (paper): the same paraphrases with ROME's distractor sentence stripped as IBM's counterfact_eval.py "
        "does (p.split('. ')[-1]); PS, the headline, scores them as they are.",
        f"scope threshold {cfg.scope_threshold} (cosine; {cfg.subject_threshold} for queries naming the edit's "
        f"subject{'' if cfg.use_subjects else ', subjects not passed'}); scope decided per prompt; "
        "'unedited' = empty memory (z = 0).",
    ]
    if any(r["format"] == "flat" for r in records):
        notes.append(
            "flattened (EasyEdit) records carry no reliable paraphrase: PS and Score are n/a for them; "
            "NS uses locality_prompt with locality_ground_truth as the true target."
        )
    return Report(summary, table, records, notes=notes)
