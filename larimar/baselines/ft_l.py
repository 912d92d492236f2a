"""FT-L: constrained fine-tuning of one MLP layer (Zhu et al. 2020, "Modifying Memories in
Transformer Models", arXiv 2012.00363; the FT+L baseline of ROME, Meng et al. 2022, §3).

The weights of one MLP output projection (ROME's ``rewrite_module``: ``down_proj`` for Llama,
``c_proj`` for GPT-2) are fine-tuned with Adam on the new target's negative log-likelihood given
the rewrite prompt, and after every step projected back into an L-infinity ball of radius
``norm_constraint`` around the unedited weights (Zhu et al.'s constraint ||theta - theta_0||_inf
<= delta). ROME's FT+L settings: 25 steps, lr 5e-4, delta 5e-4, early stop at loss 1e-2. We
train on every target token (teacher forcing), as EasyEdit's FT does, rather than ROME's
"all target tokens from the last prompt position". The default layer is ROME's (17% depth), so
FT-L and ROME change the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from larimar.baselines.base import EditRequest, LMEditor, WeightSnapshot, layer_count, mlp_out
from larimar.baselines.rome import default_layer


@dataclass
class FTLConfig:
    layer: int = -1  # -1: ROME's layer (17% depth)
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # L-inf radius around the unedited weights
    early_stop_loss: float = 1e-2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.norm_constraint <= 0:
            raise ValueError("ft-l: steps >= 1, lr > 0 and norm_constraint > 0 are required")


class FTLEditor(LMEditor):
    name = "ft-l"

    def __init__(self, lm, tokenizer, bos_id=None, cfg: FTLConfig | None = None):
        super().__init__(lm, tokenizer, bos_id)
        self.cfg = cfg or FTLConfig()
        self.layer = self.cfg.layer if self.cfg.layer >= 0 else default_layer(layer_count(lm), 0.17)
        self.module, _ = mlp_out(lm, self.layer)
        self.snapshot = WeightSnapshot({"weight": self.module.weight})

    def edit(self, request: EditRequest) -> None:
        c, w = self.cfg, self.module.weight
        enc = self.encode([request.prompt], [request.target_new])
        anchor = w.detach().clone()  # Zhu et al. constrain each edit around the weights it starts from
        w.requires_grad_(True)
        opt = torch.optim.Adam([w], lr=c.lr)
        try:
            for _ in range(c.steps):
                opt.zero_grad()
                loss = self.target_loss(enc, self._logits(enc))
                if loss.item() < c.early_stop_loss:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    w.copy_(torch.clamp(w, anchor - c.norm_constraint, anchor + c.norm_constraint))
        finally:
            w.requires_grad_(False)
            w.grad = None
        self.edits += 1

    def reset(self) -> None:
        self.snapshot.restore()
        self.edits = 0
