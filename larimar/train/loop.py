"""A plain single-process training loop: the demo's trainer and the no-Ray, no-DeepSpeed baseline.

`jobs/train.py` runs the same `LarimarModel.forward` under Ray Train and DeepSpeed; this loop is
what its overhead is measured against, and what trains the demo model in a minute on a laptop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from larimar.losses import beta
from larimar.model import LarimarModel


def episode_batch(model: LarimarModel, texts: list, episodes: int, episode_size: int) -> dict[str, torch.Tensor]:
    """B*N rows -> encoder and decoder tensors shaped (B, N, T). Rows are texts (plain episodes) or
    {text, key, query, target} dicts (`larimar.train.data.episode_batches`); dicts with a key make a
    keyed batch (`edit_batch`)."""
    if len(texts) != episodes * episode_size:
        raise ValueError(
            f"need {episodes * episode_size} texts for {episodes} episodes of {episode_size}, got {len(texts)}"
        )
    if texts and isinstance(texts[0], dict):
        keyed = [bool(r["key"]) for r in texts]
        if all(keyed):
            return edit_batch(model, texts, episodes, episode_size)
        if any(keyed):
            raise ValueError(
                "a micro-batch mixes plain and keyed rows (larimar.train.data.prepare_chunks keeps them apart)"
            )
        texts = [r["text"] for r in texts]
    enc = model.tokenize_for_encoder(texts)
    dec = model.tokenize_for_decoder(texts)
    shape = (episodes, episode_size, -1)
    return {
        "enc_input_ids": enc["input_ids"].view(shape),
        "enc_attention_mask": enc["attention_mask"].view(shape),
        "dec_input_ids": dec["input_ids"].view(shape),
        "dec_attention_mask": dec["attention_mask"].view(shape),
    }


def edit_batch(model: LarimarModel, rows: list[dict], episodes: int, episode_size: int) -> dict[str, torch.Tensor]:
    """Keyed episodes (`LarimarModel.forward`): each row's fact "prompt target" is written with its
    prompt as the key, read with its query, and the decoder continues the query with the target."""
    shape = (episodes, episode_size, -1)
    out = {}
    for name, texts in (
        ("enc", [r["text"] for r in rows]),
        ("key", [r["key"] for r in rows]),
        ("query", [r["query"] for r in rows]),
        ("target", [r["target"] for r in rows]),
    ):
        if name == "target" and not model.cfg.value_target:
            continue
        enc = model.tokenize_for_encoder(texts)
        out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = (
            enc["input_ids"].view(shape),
            enc["attention_mask"].view(shape),
        )
    if model.cfg.value_target_tokens:
        dec_t = model.tokenize_targets_for_decoder([r["target"] for r in rows])
        out["target_dec_ids"], out["target_dec_mask"] = (
            dec_t["input_ids"].view(shape),
            dec_t["attention_mask"].view(shape),
        )
    dec, weight = model.tokenize_edits(
        [r["query"] for r in rows], [r["target"] for r in rows], model.cfg.context_weight
    )
    out.update(
        dec_input_ids=dec["input_ids"].view(shape),
        dec_attention_mask=dec["attention_mask"].view(shape),
        dec_loss_weight=weight.view(shape),
    )
    return out


def lr_factor(warmup: int, steps: int):
    """The LR schedule of every trainer (this loop, Ray Train's workers): linear warmup, then
    linear decay to 0 at `steps`; evaluated at the current config's `steps`, so a resumed run
    may extend the schedule. A `LambdaLR` factor of the step."""
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / steps)


@dataclass
class StepLog:
    step: int
    loss: float
    terms: dict[str, float]
    beta: float
    seconds: float
    tokens: int


def train_plain(
    model: LarimarModel,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    warmup: int = 0,
    clip: float = 1.0,
    on_step: Callable[[StepLog], None] | None = None,
) -> list[StepLog]:
    """AdamW with linear warmup then linear decay, gradient clipping and the cyclic beta."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(warmup, steps))
    model.train()
    logs = []
    for step in range(steps):
        batch = next(batches)
        t0 = time.perf_counter()
        b = beta(step, steps, model.cfg.loss)
        out = model(**batch, beta=b)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        log = StepLog(
            step + 1,
            float(out.loss.detach()),
            out.terms,
            b,
            time.perf_counter() - t0,
            int(batch["dec_attention_mask"].sum()),
        )
        logs.append(log)
        if on_step is not None:
            on_step(log)
    model.eval()
    return logs
