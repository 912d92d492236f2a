"""GRACE: General Retrieval Adaptors for Continual Editing (Hartvigsen, Sankaranarayanan,
Palangi, Kim, Ghassemi, NeurIPS 2023, arXiv 2211.11031; EasyEdit's ``models/grace/GRACE.py``).

A discrete key-value codebook wraps one layer (here the MLP output projection of a late layer:
GRACE's GPT-2 XL placement is block 35 of 48, EasyEdit's Llama-2 placement the last block's
``down_proj``). The model's weights never change.

- Key: the wrapped layer's input at the last prompt token (the query position).
- Inference: if the nearest key (Euclidean) lies within its deferral radius epsilon, its value
  replaces the layer's output at that position (GRACE's ``replace_last``); otherwise the layer
  runs unchanged, which is what leaves unrelated prompts alone.
- Edit: a new value (GRACE's cold init: uniform random) is trained with Adam at lr 1.0 for up
  to ``n_iter`` steps (100 in EasyEdit's Llama settings) so that the model, with the value in
  place, predicts the new target; early stop below ``early_stop_loss``. Codebook update:
  a query farther than eps_init + eps_nearest from every key opens a new entry (radius eps_init);
  inside the nearest ball with a different target, a new entry is added and both radii are
  halved (to half their distance); with the same target, the nearest ball grows to cover the
  query ("coverage") and its value is retrained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from larimar.baselines.base import EditRequest, LMEditor, Encoded, layer_count, mlp_out


@dataclass
class GRACEConfig:
    layer: int = -1  # -1: the block at 73% depth (GRACE's GPT-2 XL block 35 of 48)
    eps_init: float = 1.0
    n_iter: int = 100
    lr: float = 1.0
    early_stop_loss: float = 1e-2
    value_init: str = "cold"  # cold: uniform random (GRACE, EasyEdit); warm: the layer's own output

    def __post_init__(self) -> None:
        if self.n_iter < 1 or self.eps_init <= 0:
            raise ValueError("grace: n_iter >= 1 and eps_init > 0 are required")
        if self.value_init not in ("cold", "warm"):
            raise ValueError(f"grace: value_init must be 'cold' or 'warm', got {self.value_init!r}")


class GRACEEditor(LMEditor):
    name = "grace"

    def __init__(self, lm, tokenizer, bos_id=None, cfg: GRACEConfig | None = None):
        super().__init__(lm, tokenizer, bos_id)
        self.cfg = cfg or GRACEConfig()
        n = layer_count(lm)
        self.layer = self.cfg.layer if self.cfg.layer >= 0 else min(n - 1, round(0.73 * n))
        self.module, _ = mlp_out(lm, self.layer)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.eps: list[float] = []
        self.labels: list[str] = []
        self._query_pos: torch.Tensor | None = None  # (B,) set around each forward
        self._train_value: torch.Tensor | None = None  # the value being trained (replaces unconditionally)
        self._seen_keys: torch.Tensor | None = None
        self.module.register_forward_hook(self._hook)

    # -- the adaptor ------------------------------------------------------------------------------

    def _hook(self, _m, args, out):
        if self._query_pos is None:
            return out
        rows = torch.arange(out.shape[0], device=out.device)
        query = args[0][rows, self._query_pos]  # (B, d_in)
        self._seen_keys = query.detach()
        if self._train_value is not None:
            replace = torch.ones(out.shape[0], dtype=torch.bool, device=out.device)
            value = self._train_value.expand(out.shape[0], -1)
        elif self.keys:
            dist = torch.cdist(query.float(), torch.stack(self.keys).float())  # (B, n_keys)
            best, j = dist.min(1)
            replace = best <= torch.tensor(self.eps, device=out.device)[j]
            value = torch.stack(self.values)[j]
        else:
            return out
        at = torch.zeros(out.shape[:2], dtype=torch.bool, device=out.device)
        at[rows, self._query_pos] = replace
        return torch.where(at.unsqueeze(-1), value.unsqueeze(1).to(out.dtype), out)

    def _logits(self, enc: Encoded) -> torch.Tensor:
        self._query_pos = enc.prompt_last
        try:
            return super()._logits(enc)
        finally:
            self._query_pos = None

    # -- edits ------------------------------------------------------------------------------------

    def _query(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and the layer's own output at the query position, with the codebook bypassed."""
        got = {}

        def grab(_m, args, out):
            got["k"], got["v"] = args[0][0, enc.prompt_last[0]].detach(), out[0, enc.prompt_last[0]].detach()

        saved, self.keys = self.keys, []
        h = self.module.register_forward_hook(grab)
        try:
            with torch.no_grad():
                self.lm(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        finally:
            h.remove()
            self.keys = saved
        return got["k"], got["v"]

    def edit(self, request: EditRequest) -> None:
        c = self.cfg
        enc = self.encode([request.prompt], [request.target_new])
        key, own = self._query(enc)
        value = torch.rand_like(own) if c.value_init == "cold" else own.clone()
        slot = self._update_codebook(key, request.target_new)
        if slot is not None:  # same label inside the nearest ball: that entry covers this query too
            value = self.values[slot].clone()
        value.requires_grad_(True)
        opt = torch.optim.Adam([value], lr=c.lr)
        self._train_value = value
        try:
            for _ in range(c.n_iter):
                opt.zero_grad()
                loss = self.target_loss(enc, self._logits(enc))
                if loss.item() < c.early_stop_loss:
                    break
                loss.backward()
                opt.step()
        finally:
            self._train_value = None
        trained = value.detach()
        if slot is None:
            self.keys.append(key)
            self.values.append(trained)
            self.labels.append(request.target_new)
            self.eps.append(self._new_eps)
        else:
            self.values[slot] = trained
        self.edits += 1

    def _update_codebook(self, key: torch.Tensor, label: str) -> int | None:
        """GRACE's codebook rules; returns the entry to retrain, or None when a new entry is due."""
        self._new_eps = self.cfg.eps_init
        if not self.keys:
            return None
        dist = torch.cdist(key[None].float(), torch.stack(self.keys).float())[0]
        d, j = float(dist.min()), int(dist.argmin())
        if d > self.cfg.eps_init + self.eps[j]:
            return None
        if self.labels[j] != label:
            self.eps[j] = d / 2 - 1e-5
            self._new_eps = d / 2
            return None
        self.eps[j] = max(self.eps[j], d)
        return j

    def reset(self) -> None:
        self.keys, self.values, self.eps, self.labels = [], [], [], []
        self.edits = 0
