"""Wall time per edit, split into its parts and reported apart from scoring (Larimar Table 1).

For each fact, in a fresh memory: encode (the fact's value and its prompt's key, one encoder
pass each, as `EditableMemory.edit` does), memory write (the RLS update), scope index (embedding
the fact for the scope detector, when one is loaded), read (encoding the query and addressing
the memory, scope match included) and, apart, scoring (one teacher-forced decoder pass for the
new target). ``edit_api`` times `EditableMemory.edit` end to end on another fresh memory. One
warm-up edit runs first; reported: median and p90 in milliseconds. Timings include whatever else
runs on the machine: use --workers 0 for numbers to report.
"""

from __future__ import annotations

import time

import torch

from larimar.evaluation import metrics
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.benchmarks import Fact, load_facts
from larimar.evaluation.forcing import force_with_memory
from larimar.evaluation.report import Report, markdown_table
from larimar.fact_encoder import encode_facts
from larimar.facts import make_fact

PARTS = ("encode", "write", "scope_index", "read", "edit_api", "score")


def needs_scope(cfg: EvalConfig) -> bool:
    return cfg.scope_model is not None


def items(cfg: EvalConfig, slots: int) -> list[Fact]:
    return load_facts(cfg.data, cfg.limit, cfg.seed)


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def time_edit(ctx: EvalContext, fact: Fact) -> dict[str, float]:
    clock, m = _Clock(ctx.model.device), ctx.model
    mem = ctx.memory(capacity=1)
    t = {}
    with torch.no_grad():
        t0 = clock.now()
        enc = encode_facts(m, [make_fact(prompt=fact.prompt, target=fact.target)], scope=False)
        t1 = clock.now()
        mem.state.write(enc.keys, enc.values)
        t2 = clock.now()
        if mem.scope is not None:
            mem.scope.add([1], [fact.prompt])
            mem.scope.add([1], [fact.text])
        t3 = clock.now()
        z, _ = mem.read([fact.prompt], use_scope=mem.scope is not None)
        t4 = clock.now()
    t.update(encode=t1 - t0, write=t2 - t1, scope_index=t3 - t2, read=t4 - t3)
    api = ctx.memory(capacity=1)
    t5 = clock.now()
    api.edit([fact.prompt], [fact.target])
    t6 = clock.now()
    force_with_memory(api, [fact.prompt], [fact.target], use_scope=api.scope is not None)
    t7 = clock.now()
    t.update(edit_api=t6 - t5, score=t7 - t6)
    return {k: v * 1000 for k, v in t.items()}


def evaluate(ctx: EvalContext, facts: list[Fact], tick) -> list[dict]:
    if facts:
        time_edit(ctx, facts[0])  # warm-up: first-call allocations and lazy imports
    out = []
    for r in range(ctx.cfg.repeats):
        for f in facts:
            out.append({"prompt": f.prompt, "repeat": r, **time_edit(ctx, f)})
            tick(1 / ctx.cfg.repeats)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    summary = {"edits": len(records), "device": None}
    rows = []
    for part in PARTS:
        vals = [r[part] for r in records]
        summary[part] = {
            "median_ms": metrics.percentile(vals, 50),
            "p90_ms": metrics.percentile(vals, 90),
            "mean_ms": metrics.mean(vals),
        }
        rows.append([part, summary[part]["median_ms"], summary[part]["p90_ms"], summary[part]["mean_ms"]])
    edit_parts = [sum(r[p] for p in ("encode", "write", "scope_index")) for r in records]
    summary["edit_total"] = {
        "median_ms": metrics.percentile(edit_parts, 50),
        "p90_ms": metrics.percentile(edit_parts, 90),
        "mean_ms": metrics.mean(edit_parts),
    }
    rows.insert(
        3,
        [
            "edit = encode + write + scope_index",
            summary["edit_total"]["median_ms"],
            summary["edit_total"]["p90_ms"],
            summary["edit_total"]["mean_ms"],
        ],
    )
    summary["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    summary["threads"] = torch.get_num_threads()
    table = markdown_table(["part", "median ms", "p90 ms", "mean ms"], rows)
    notes = [
        f"device {summary['device']}, {summary['threads']} torch threads, single-fact edits into fresh memories "
        f"(K = {slots}); 'score' (a teacher-forced decoder pass) is evaluation, not editing.",
        "edit_api = EditableMemory.edit end to end (encode + write + scope index + bookkeeping).",
    ]
    return Report(summary, table, records, notes=notes)
