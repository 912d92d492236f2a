"""Greedy generation of an edited fact: does the continuation begin with the new object?

The product's promise in one number: write a fact into a fresh memory, ask its rewrite prompt
(and its paraphrases), decode greedily, and check that the text *begins* with the new target
(casefolded, leading spaces and quotes ignored). Then forget the fact and ask again: the
continuation must no longer begin with it (it should be the base model's answer). Scores are
counted per prompt; "unedited" is the plain decoder (z = 0), the rate at which SmolLM2 already
says the new object. Reads go through the scope detector, as a user's queries do.

Records: CounterFact (either format) or zsRE; each case is its own memory (N = 1).
"""

from __future__ import annotations

from larimar.evaluation import metrics
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.benchmarks import load_facts
from larimar.evaluation.report import Report, markdown_table

MAX_NEW_TOKENS = 12
_LEADING = " \t\n\"'`“‘"


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.scope_model is not None


def items(cfg: EvalConfig, slots: int) -> list:
    return load_facts(cfg.data, cfg.limit, cfg.seed)


def begins_with(text: str, target: str) -> bool:
    """Does `text` start with `target` as whole words (casefolded, leading spaces and quotes dropped)?"""
    t, want = text.lstrip(_LEADING).casefold(), target.strip().casefold()
    return t.startswith(want) and (len(t) == len(want) or not t[len(want)].isalnum())


def evaluate(ctx: EvalContext, facts: list, tick) -> list[dict]:
    empty = ctx.memory(scope=False)
    out = []
    for f in facts:
        prompts = [f.prompt, *f.rephrases]
        mem = ctx.memory(capacity=1, scope=needs_scope(ctx.cfg))
        fid = mem.edit([f.prompt], [f.target], subject=ctx.subjects([f.subject]))[0]
        edited = [g.text for g in mem.generate(prompts, max_new_tokens=MAX_NEW_TOKENS)]
        mem.forget(fid)
        forgotten = [g.text for g in mem.generate(prompts, max_new_tokens=MAX_NEW_TOKENS)]
        unedited = [g.text for g in empty.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, use_scope=False)]
        out.append(
            {
                "prompt": f.prompt,
                "target": f.target,
                "prompts": prompts,
                **{
                    name: {"texts": texts, "begins": [begins_with(t, f.target) for t in texts]}
                    for name, texts in (("edited", edited), ("forgotten", forgotten), ("unedited", unedited))
                },
            }
        )
        tick(1)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    summary = {"cases": len(records)}
    rows = []
    for cond in ("edited", "forgotten", "unedited"):
        rewrite = metrics.mean([float(r[cond]["begins"][0]) for r in records])
        para = metrics.mean([float(b) for r in records for b in r[cond]["begins"][1:]])
        summary[cond] = {"rewrite": rewrite, "paraphrase": para}
        rows.append([cond, rewrite, para])
    table = markdown_table(["condition", "rewrite prompt begins with the new object", "paraphrases"], rows)
    notes = [
        f"greedy decoding, {MAX_NEW_TOKENS} new tokens; each fact alone in a fresh memory, read through the scope "
        "detector; 'forgotten' = the same memory after forget(); 'unedited' = z = 0."
    ]
    return Report(summary, table, records, notes=notes)
