"""Held-out metrics measured inside the training loop, so Tune compares trials on what users see.

Three measurements, all in eval mode (no observation or read noise: the paper evaluates with
sigma_w = 0 and xi = 0, App. E):

- **Reconstruction through memory** (``val/rec_*``): held-out text chunks (never trained on; by
  default WikiText-2 *test* while training reads *valid*) are written ``data.episode_size`` at a
  time into fresh memories with the trained `EpisodicMemory` (Algorithm 1), read back with their
  own latents, and decoded. ``val/rec_nll`` / ``val/rec_token_acc`` are the teacher-forced mean
  NLL and argmax token accuracy of the chunk from its read-out; ``val/ae_token_acc`` decodes the
  encoder's own latent (the ceiling the memory can reach). Two decoder-free measures of the
  memory itself: ``val/latent_err``, the squared read error ||z_read - z||^2 relative to the
  spread of the written latents around their mean (the fraction of their variance the memory
  loses), and ``val/latent_recall``, the fraction of chunks whose read-out is nearest (Euclidean)
  to their own encoding among those written into the memory. Neither is relative to ||z||: an
  untrained encoder maps all text into a narrow cone around one direction, which would make any
  read look perfect.
- **Capacity** (``val/recall@N``, ``val/latent_recall@N``, ``val/latent_err@N``): for each N of
  ``validation.capacity_sizes`` one memory holds N held-out chunks; recall is the token accuracy
  decoded from the read-outs (paper Fig. 2a measures recall against N for a fixed K). With exact
  pseudo-inverses a memory returns its N latents exactly while N <= min(K, C).
- **CounterFact** (``val/ES``, ``val/PS``, ``val/NS``, ``val/Score``): a small slice scored with
  `larimar.evaluation.counterfact` (ROME protocol, one edit per fresh sequential memory), with the
  memory read for every prompt (no scope detector: the trained model alone is being compared).

Work is split over the data-parallel ranks (episodes, capacity sizes and cases round-robin) and
the per-rank sums are combined by the ``reduce`` callable the caller passes (an all-reduce sum
in `larimar.train.distributed`; the identity in a single process), so every rank returns the same
numbers, as ``ray.train.report`` on every rank expects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch

from larimar.config import ConfigError
from larimar.sources import chunk_paragraphs, decoder_tokenizer, read_paragraphs, resolve_source
from larimar.model import LarimarModel
from larimar.train.config import TrainConfig

ENCODE_BATCH = 128  # chunks per encoder pass
DECODE_BATCH = 16  # chunks per decoder pass: logits are (16, T, vocab) floats


def prepare_validation_texts(cfg: TrainConfig) -> list[str]:
    """The held-out chunks (driver side): chunked like the training data, shuffled with
    ``validation.seed``, as many as the largest of ``validation.chunks`` and ``capacity_sizes``."""
    v = cfg.validation
    source = resolve_source(v.source)
    if not isinstance(source, Path):
        raise ConfigError(f"validation.source: {v.source!r} is not a local file or directory")
    train_source = resolve_source(cfg.data.source) if cfg.data.source else None  # None: fact sentences only
    if isinstance(train_source, Path) and source.resolve() == train_source.resolve():
        raise ConfigError(
            f"validation.source: {v.source!r} is the training data (data.source); "
            "held-out metrics need text the model never trains on"
        )
    chunks = chunk_paragraphs(
        read_paragraphs(source, cfg.data.text_field),
        decoder_tokenizer(cfg.model.decoder),
        cfg.chunk_tokens,
        cfg.data.min_chunk_tokens,
    )
    random.Random(v.seed).shuffle(chunks)
    need = max([v.chunks, *v.capacity_sizes])
    if len(chunks) < need:
        raise ConfigError(
            f"validation.chunks/validation.capacity_sizes: need {need} held-out chunks, "
            f"{v.source!r} gives {len(chunks)}"
        )
    return chunks[:need]


def metric_names(cfg: TrainConfig) -> list[str]:
    """The val/* keys every report carries under this config (what a sweep may optimise)."""
    v = cfg.validation
    names = ["val/rec_nll", "val/rec_token_acc", "val/ae_token_acc", "val/latent_err", "val/latent_recall"]
    for n in v.capacity_sizes:
        names += [f"val/recall@{n}", f"val/latent_recall@{n}", f"val/latent_err@{n}"]
    if v.counterfact:
        names += ["val/ES", "val/PS", "val/NS", "val/Score"]
    return names


def _identity(values: list[float]) -> list[float]:
    return values


class Validator:
    """Computes the val/* metrics of one rank's share and combines them across ranks."""

    def __init__(self, cfg: TrainConfig, texts: list[str], rank: int = 0, world: int = 1):
        v = cfg.validation
        self.cfg, self.rank, self.world = cfg, rank, world
        E = cfg.data.episode_size
        usable = (min(v.chunks, len(texts)) // E) * E
        if usable < E:
            raise ValueError(f"validation needs at least data.episode_size={E} held-out chunks, got {len(texts)}")
        self.episode_texts = texts[:usable]
        self.capacity_sizes = [n for n in v.capacity_sizes if n <= len(texts)]
        self.texts = texts
        self.cases = []
        if v.counterfact:
            from larimar.benchmarks import load_counterfact

            self.cases = load_counterfact(v.counterfact, v.counterfact_cases)

    # -- sums, combined across ranks ----------------------------------------------------------

    def _keys(self) -> list[str]:
        """Every (sum, count) slot, identical on all ranks so one vector all-reduces them."""
        keys = ["rec_nll", "rec_token_acc", "ae_token_acc", "latent_err", "latent_recall"]
        for n in self.capacity_sizes:
            keys += [f"recall@{n}", f"latent_recall@{n}", f"latent_err@{n}"]
        if self.cases:
            keys += ["ES", "PS", "NS"]
        return keys

    @torch.no_grad()
    def metrics(
        self, model: LarimarModel, reduce: Callable[[list[float]], list[float]] = _identity
    ) -> dict[str, float]:
        """The val/* metrics; `reduce` sums a list of floats over ranks (collective: call on every rank)."""
        was_training = model.training
        devices = [model.device] if model.device.type == "cuda" else []
        # Own RNG stream: the CounterFact memories are seeded, and training's noise must not shift.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.validation.seed)
            model.eval()
            try:
                sums = dict.fromkeys(self._keys(), 0.0)
                counts = dict.fromkeys(self._keys(), 0.0)
                self._episodes(model, sums, counts)
                for i, n in enumerate(self.capacity_sizes):
                    if i % self.world == self.rank:
                        self._capacity(model, n, sums, counts)
                for i, case in enumerate(self.cases):
                    if i % self.world == self.rank:
                        self._counterfact(model, case, sums, counts)
            finally:
                model.train(was_training)
        keys = list(sums)
        total = reduce([sums[k] for k in keys] + [counts[k] for k in keys])
        out = {
            f"val/{k}": total[i] / total[len(keys) + i] if total[len(keys) + i] else float("nan")
            for i, k in enumerate(keys)
        }
        if self.cases:
            rates = [out["val/ES"], out["val/PS"], out["val/NS"]]
            out["val/Score"] = 0.0 if min(rates) <= 0 else len(rates) / sum(1 / r for r in rates)
        return out

    # -- the measurements ---------------------------------------------------------------------

    def _encode(self, model: LarimarModel, texts: list[str]) -> torch.Tensor:
        return torch.cat(
            [model.encode_texts(texts[i : i + ENCODE_BATCH]) for i in range(0, len(texts), ENCODE_BATCH)]
        )  # (n, C)

    def _through_memory(self, model: LarimarModel, z: torch.Tensor) -> torch.Tensor:
        """z (B, N, C) -> read-outs (B, N, C) of B memories each written with its N latents."""
        M = model.memory.write(z)  # (B, K, C)
        return model.memory.read(z, M).z

    @staticmethod
    def _latent_scores(read: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """read, z (B, N, C) -> squared error over the latents' spread (B, N) and whether each
        read-out's nearest written latent is its own (B, N)."""
        spread = ((z - z.mean(1, keepdim=True)) ** 2).sum(-1).mean(1, keepdim=True)  # (B, 1)
        err = ((read - z) ** 2).sum(-1) / spread.clamp_min(1e-12)
        hit = torch.cdist(read, z).argmin(-1) == torch.arange(z.shape[1], device=z.device)  # (B, N, N) -> (B, N)
        return err, hit

    def _decode(self, model: LarimarModel, texts: list[str], z: torch.Tensor) -> tuple[float, float, float]:
        """Teacher-forced decoding of texts from latents z (n, C) -> (NLL sum, correct tokens, tokens)."""
        nll = correct = tokens = 0.0
        for s in range(0, len(texts), DECODE_BATCH):
            batch = model.tokenize_for_decoder(texts[s : s + DECODE_BATCH])
            ids, mask = batch["input_ids"], batch["attention_mask"]
            logits = model.decoder(ids, mask, z[s : s + DECODE_BATCH])[:, :-1].float()  # (b, T-1, V)
            target, m = ids[:, 1:], mask[:, 1:].bool()
            logp = torch.log_softmax(logits, -1).gather(2, target.unsqueeze(-1)).squeeze(-1)  # (b, T-1)
            nll -= float(logp[m].sum())
            correct += float((logits.argmax(-1) == target)[m].sum())
            tokens += float(m.sum())
        return nll, correct, tokens

    def _episodes(self, model: LarimarModel, sums: dict, counts: dict) -> None:
        E = self.cfg.data.episode_size
        n_episodes = len(self.episode_texts) // E
        decode_episodes = math.ceil(self.cfg.validation.decode_cap / E)  # the first ones, over all ranks
        mine = [e for e in range(n_episodes) if e % self.world == self.rank]
        if not mine:
            return
        texts = [t for e in mine for t in self.episode_texts[e * E : (e + 1) * E]]
        z = self._encode(model, texts).view(len(mine), E, -1)  # (B, N, C)
        read = self._through_memory(model, z)
        err, hit = self._latent_scores(read, z)  # (B, N)
        sums["latent_err"] += float(err.sum())
        sums["latent_recall"] += float(hit.sum())
        counts["latent_err"] += err.numel()
        counts["latent_recall"] += hit.numel()
        decode = [i for i, e in enumerate(mine) if e < decode_episodes]
        if decode:
            dtexts = [t for i in decode for t in texts[i * E : (i + 1) * E]]
            nll, correct, tokens = self._decode(model, dtexts, read[decode].reshape(len(dtexts), -1))
            _, ae_correct, _ = self._decode(model, dtexts, z[decode].reshape(len(dtexts), -1))
            sums["rec_nll"] += nll
            sums["rec_token_acc"] += correct
            sums["ae_token_acc"] += ae_correct
            for k in ("rec_nll", "rec_token_acc", "ae_token_acc"):
                counts[k] += tokens

    def _capacity(self, model: LarimarModel, n: int, sums: dict, counts: dict) -> None:
        texts = self.texts[:n]
        z = self._encode(model, texts).unsqueeze(0)  # (1, N, C)
        read = self._through_memory(model, z)  # (1, N, C)
        err, hit = self._latent_scores(read, z)
        sums[f"latent_err@{n}"] += float(err.sum())
        sums[f"latent_recall@{n}"] += float(hit.sum())
        counts[f"latent_err@{n}"] += n
        counts[f"latent_recall@{n}"] += n
        cap = min(n, self.cfg.validation.decode_cap)  # held-out chunks are already shuffled
        _, correct, tokens = self._decode(model, texts[:cap], read[0, :cap])
        sums[f"recall@{n}"] += correct
        counts[f"recall@{n}"] += tokens

    def _counterfact(self, model: LarimarModel, case, sums: dict, counts: dict) -> None:
        from larimar.evaluation import counterfact
        from larimar.evaluation.config import EvalConfig
        from larimar.evaluation.context import EvalContext

        if not hasattr(self, "_cf_context") or self._cf_context.model is not model:
            cfg = EvalConfig(
                experiment="counterfact",
                model="<training>",
                data=str(self.cfg.validation.counterfact),
                scope_model=None,
                seed=self.cfg.validation.seed,
                progress=False,
            )
            self._cf_context = EvalContext(cfg, model=model, needs_scope=False)
        record = counterfact.evaluate(self._cf_context, [case], lambda k: None)[0]
        summary = counterfact.condition_summary([record], "no_scope")
        for key in ("ES", "PS", "NS"):
            if summary[key] is not None:
                sums[key] += summary[key]
                counts[key] += 1
