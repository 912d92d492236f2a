"""Text -> latent z: a Hugging Face encoder, a pooling step and a linear head to C dims.

Reference: IBM/larimar ``BertForLatentConnector`` pools BERT's [CLS] and maps it with a
bias-free Linear to (mu, logvar), of which only mu is used: the encoder is deterministic.
We keep that (one Linear to C, no variance head) and also offer mean pooling, which is how
sentence-transformers models such as all-MiniLM-L6-v2 were trained.

Dimensions: B batch, T tokens, E encoder hidden size, C latent size.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel


class LatentEncoder(nn.Module):
    def __init__(
        self,
        backbone: PreTrainedModel,
        latent_dim: int,
        pooling: Literal["mean", "cls"] = "mean",
        trainable_layers: int = -1,
        target_head: bool = False,
    ):
        """trainable_layers: -1 trains the whole backbone, 0 freezes it, n > 0 trains the top n layers.
        target_head: a second, zero-initialised head for the target term of a value latent
        (`LarimarModel.values_from_pooled`); zero init leaves a model's values as they were."""
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"encoder pooling must be 'mean' or 'cls', got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Linear(backbone.config.hidden_size, latent_dim, bias=False)
        nn.init.normal_(self.head.weight, std=backbone.config.hidden_size**-0.5)
        self.target_head = nn.Linear(backbone.config.hidden_size, latent_dim, bias=False) if target_head else None
        if self.target_head is not None:
            nn.init.zeros_(self.target_head.weight)
        self.set_trainable_layers(trainable_layers)

    def set_trainable_layers(self, n: int) -> None:
        self.backbone.requires_grad_(n < 0)
        if n > 0:  # BERT-family layout: backbone.encoder.layer is the stack of transformer blocks
            for layer in self.backbone.encoder.layer[-n:]:
                layer.requires_grad_(True)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """(B, T) token ids -> (B, E) pooled backbone output (for MiniLM + mean pooling this is,
        once normalised, exactly the sentence-transformers embedding the scope detector uses).
        eager: a compiled backbone (`larimar.precision.compile_encoder`) runs its own eager
        module instead (`LarimarModel.encode_pooled` on several threads)."""
        backbone = getattr(self.backbone, "_orig_mod", self.backbone) if eager else self.backbone
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, E)
        # in the heads' dtype: a bf16 backbone under float32 heads (larimar.precision.set_encoder_precision)
        # pools in float32; a model cast whole (DeepSpeed bf16) stays in its dtype
        hidden = hidden.to(self.head.weight.dtype)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, C) latents."""
        return self.head(self.pooled(input_ids, attention_mask))  # (B, C)
