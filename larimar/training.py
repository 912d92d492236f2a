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


def episode_batch(model: LarimarModel, texts: list[str], episodes: int, episode_size: int) -> dict[str, torch.Tensor]:
    """B*N texts -> encoder and decoder tensors shaped (B, N, T)."""
    if len(texts) != episodes * episode_size:
        raise ValueError(f"need {episodes * episode_size} texts for {episodes} episodes of {episode_size}, got {len(texts)}")
    enc = model.tokenize_for_encoder(texts)
    dec = model.tokenize_for_decoder(texts)
    shape = (episodes, episode_size, -1)
    return {"enc_input_ids": enc["input_ids"].view(shape), "enc_attention_mask": enc["attention_mask"].view(shape),
            "dec_input_ids": dec["input_ids"].view(shape), "dec_attention_mask": dec["attention_mask"].view(shape)}


@dataclass
class StepLog:
    step: int
    loss: float
    terms: dict[str, float]
    beta: float
    seconds: float
    tokens: int


def train_plain(model: LarimarModel, batches: Iterator[dict[str, torch.Tensor]], steps: int, lr: float = 1e-3,
                warmup: int = 0, clip: float = 1.0, on_step: Callable[[StepLog], None] | None = None) -> list[StepLog]:
    """AdamW with linear warmup then linear decay, gradient clipping and the cyclic beta."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / steps))
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
        log = StepLog(step + 1, float(out.loss.detach()), out.terms, b, time.perf_counter() - t0,
                      int(batch["dec_attention_mask"].sum()))
        logs.append(log)
        if on_step is not None:
            on_step(log)
    model.eval()
    return logs
