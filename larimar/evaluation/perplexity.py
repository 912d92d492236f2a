"""Language modelling kept: WikiText perplexity of the decoder with z = 0 against the base LM.

The paper reports the 1.3B/6B models' WikiText perplexity (14.6 / 15.9) to show that memory
conditioning did not cost the decoder its language modelling. Here: held-out text (e.g.
WikiText-2 test) cut into chunks of ``model.max_length - 2`` decoder tokens like the training
data, each scored as ``<bos> chunk <eos>`` three ways:
- base: the plain pretrained LM (``decoder.lm``, no slot, no hooks);
- z0: the Larimar decoder with z = 0 (what an out-of-scope query gets);
- self: the Larimar decoder given the chunk's own value, as a memory would store it (how much the
  value carries; for decoder-space values the chunk's first tokens are in the soft prompt).
Perplexity = exp(total NLL / total target tokens) over all chunks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from larimar.config import ConfigError
from larimar.fact_encoder import encode_facts
from larimar.facts import make_fact
from larimar.sources import chunk_paragraphs, read_paragraphs
from larimar.evaluation.config import EvalConfig
from larimar.evaluation.context import EvalContext
from larimar.evaluation.report import Report, markdown_table

CONDITIONS = ("base", "z0", "self")


def needs_scope(cfg: EvalConfig) -> bool:
    return False


def items(cfg: EvalConfig, slots: int) -> list[dict]:
    path = Path(cfg.data)
    if not path.exists() or path.suffix not in (".raw", ".txt", ".jsonl"):
        raise ConfigError(f"--data: perplexity needs a .raw/.txt/.jsonl text file, got {cfg.data!r}")
    return [{"path": str(path)}]


@torch.no_grad()
def _nll(ctx: EvalContext, texts: list[str]) -> dict[str, tuple[float, int]]:
    m = ctx.model
    batch = m.tokenize_for_decoder(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    n = int((targets != -100).sum())
    out = {}
    logits = m.decoder.lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
    out["base"] = float(
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
    )
    zero = torch.zeros(len(texts), m.value_dim, device=m.device)
    out["z0"] = float(-m.decoder.token_logprobs(ids, mask, zero).sum())
    own = encode_facts(m, [make_fact(text=t) for t in texts], scope=False).values  # what a memory would store
    out["self"] = float(-m.decoder.token_logprobs(ids, mask, own.to(m.device)).sum())
    return {k: (v, n) for k, v in out.items()}


def evaluate(ctx: EvalContext, work: list[dict], tick) -> list[dict]:
    cfg, m = ctx.cfg, ctx.model
    chunks = chunk_paragraphs(
        read_paragraphs(Path(work[0]["path"])), m.decoder_tokenizer, m.cfg.max_length - 2, min_chunk_tokens=8
    )
    chunks = chunks[: cfg.limit] if cfg.limit else chunks
    records = []
    for s in range(0, len(chunks), cfg.batch_size):
        part = _nll(ctx, chunks[s : s + cfg.batch_size])
        records.append({"chunks": len(chunks[s : s + cfg.batch_size]), **{k: list(v) for k, v in part.items()}})
    tick(1)
    return records


def summarize(records: list[dict], cfg: EvalConfig, slots: int) -> Report:
    tokens = sum(r["base"][1] for r in records)
    ppl = {c: math.exp(sum(r[c][0] for r in records) / max(1, tokens)) for c in CONDITIONS}
    summary = {
        "chunks": sum(r["chunks"] for r in records),
        "tokens": tokens,
        **{f"ppl_{c}": ppl[c] for c in CONDITIONS},
        "z0_vs_base": ppl["z0"] / ppl["base"] - 1,
    }
    table = markdown_table(
        ["condition", "perplexity", "vs base"],
        [[c, ppl[c], f"{100 * (ppl[c] / ppl['base'] - 1):+.2f}%"] for c in CONDITIONS],
    )
    notes = [
        f"{summary['chunks']} chunks of <= max_length - 2 decoder tokens from {cfg.data}, scored as "
        "<bos> chunk <eos>; base = the plain pretrained LM; z0 = the Larimar decoder with z = 0; self = "
        "conditioned on the chunk's own value (what a memory would store for it)."
    ]
    return Report(summary, table, records, notes=notes)
