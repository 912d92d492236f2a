"""Long-context recall with hierarchical memories (Larimar §5, Table 6).

The "long document" is the text of n facts (zsRE, CounterFact or synthetic; default n = 64,
96, 128, 256). It is split into segments of --segment-facts facts, each written into its own
memory M_i (``memory.edit``: key = prompt encoding, value = fact encoding). A query (a fact's
prompt, encoded as z_q) is read from every M_i; the T readouts are stacked into higher-level
memories of the same fan-in (`SequentialMemory`, key = value = readout), which are read with
z_q again, and so on until one latent remains, from which the target is teacher-forced.
The paper leaves the higher levels' addressing open; keying them by the readouts themselves
means a level-l read is the least-squares projection of z_q onto the readouts below it.

Reported per n: hierarchical recall, and the flat baseline of one memory holding all n facts
(the capacity experiment's point N = n), both as exact match and token accuracy over a seeded
sample of at most --eval-cap facts.
"""

from __future__ import annotations

import random

import torch

from larimar.memory import reference_memory
from larimar.config import ConfigError
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.evaluation.forcing import recall, recall_rates, teacher_force
from larimar.evaluation.report import Curve, Report, markdown_table
from larimar.memory import SequentialMemory


def needs_scope(cfg: EvalConfig) -> bool:
    return False


def items(cfg: EvalConfig, slots: int) -> list[dict]:
    return [{"n": n} for n in (cfg.sizes or [64, 96, 128, 256])]


def hierarchical_read(ctx: EvalContext, segments: list, queries: list[str]) -> tuple[torch.Tensor, int]:
    """Read queries through the memory tree -> ((n_q, C) final latents, number of levels)."""
    cfg, fan_in = ctx.cfg, ctx.cfg.segment_facts
    Z = torch.stack([seg.read(queries, use_scope=False)[0] for seg in segments], dim=1).double()  # (n_q, T, C)
    zq = ctx.model.encode_texts(queries).detach().double().unsqueeze(1)  # (n_q, 1, C)
    ref = reference_memory(ctx.slots, ctx.model.cfg.memory.latent_dim, cfg.seed)
    levels = 1
    while Z.shape[1] > 1:
        reads = []
        for s in range(0, Z.shape[1], fan_in):
            mem = SequentialMemory(ref, batch=Z.shape[0], ridge=cfg.ridge)  # one memory per query
            mem.write(Z[:, s : s + fan_in])  # key = value = the readouts below
            reads.append(mem.read(zq))  # (n_q, 1, C)
        Z = torch.cat(reads, dim=1)  # (n_q, ceil(T / fan_in), C)
        levels += 1
    return Z[:, 0].float(), levels


def evaluate_count(ctx: EvalContext, n_asked: int) -> dict:
    cfg = ctx.cfg
    if ctx.model.cfg.value_space != "latent":  # the tree writes read-outs as keys: they must be latents
        raise ConfigError(
            f"long-context needs a model whose values are latents (value_space: latent); "
            f"--model {cfg.model} has value_space {ctx.model.cfg.value_space!r}"
        )
    facts = ctx.facts[:n_asked]
    n = len(facts)
    segments = []
    for s in range(0, n, cfg.segment_facts):
        chunk = facts[s : s + cfg.segment_facts]
        mem = ctx.memory(capacity=len(chunk), scope=False)
        mem.edit([f.prompt for f in chunk], [f.target for f in chunk])
        segments.append(mem)
    rng = random.Random(cfg.seed * 1_000_003 + n)
    sample = facts if n <= cfg.eval_cap else rng.sample(facts, cfg.eval_cap)
    forced, levels = [], 1
    with torch.no_grad():
        for s in range(0, len(sample), cfg.batch_size):
            batch = sample[s : s + cfg.batch_size]
            z, levels = hierarchical_read(ctx, segments, [f.prompt for f in batch])
            forced += teacher_force(ctx.model, [f.prompt for f in batch], [f.target for f in batch], z)
    hier = recall_rates(forced)
    flat_mem = ctx.memory(capacity=n, scope=False)
    for s in range(0, n, cfg.batch_size):
        chunk = facts[s : s + cfg.batch_size]
        flat_mem.edit([f.prompt for f in chunk], [f.target for f in chunk])
    flat = recall_rates(recall(flat_mem, sample, False, cfg.batch_size))
    return {
        "n_asked": n_asked,
        "n": n,
        "segments": len(segments),
        "levels": levels,
        "evaluated": len(sample),
        "recall": hier["exact"],
        "token_acc": hier["token_acc"],
        "flat_recall": flat["exact"],
        "flat_token_acc": flat["token_acc"],
    }


def evaluate(ctx: EvalContext, work: list[dict], tick) -> list[dict]:
    out = []
    for item in work:
        out.append(evaluate_count(ctx, item["n"]))
        tick(1)
    return out


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    rows = [
        [r["n"], r["segments"], r["levels"], r["recall"], r["token_acc"], r["flat_recall"], r["flat_token_acc"]]
        for r in records
    ]
    table = markdown_table(
        [
            "facts",
            "segments",
            "levels",
            "hierarchical recall",
            "hier. tok acc",
            f"flat recall (one K = {slots} memory)",
            "flat tok acc",
        ],
        rows,
    )
    xs = [r["n"] for r in records]
    curve = Curve(
        f"Long-context recall ({cfg.segment_facts} facts per segment, K = {slots})",
        "facts in the document",
        "recall (exact match)",
        {"hierarchical": (xs, [r["recall"] for r in records]), "flat": (xs, [r["flat_recall"] for r in records])},
    )
    notes = [
        "recall = teacher-forced exact match of each fact's target from its prompt.",
        "higher levels: key = value = the readouts below, read with the query's encoding.",
    ]
    return Report({"slots": slots, "segment_facts": cfg.segment_facts, "points": records}, table, records, curve, notes)
