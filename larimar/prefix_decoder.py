"""A causal LM conditioned on a memory read-out that lives in its own input-embedding space.

The latent decoder (`larimar.decoder`) turns a 384-d read-out into a key/value slot; trained on
two CPU cores it recalls zsRE targets at about 50% token accuracy, while SmolLM2 itself, given
the fact in its context, recalls 92% (README, "Larimar-smol v2"). This decoder closes that gap by
giving the memory values the decoder can read without any training: a fact's value is SmolLM2's
input embeddings of the fact's first L tokens, flattened to (L * H,). The memory still does what
Larimar's does (one-shot least-squares write, a read addressed by the query's latent, rank-one
write and forget), only its values are wider than its keys (`SequentialMemory(value_dim=...)`).

A read-out z (B, L * H) enters as a soft prompt in front of the query, inside an in-context
editing template (IKE's, Zheng et al. 2023; ``LarimarConfig.value_template``):

    <bos> New Fact: [z row 1] ... [z row l] \\n <query tokens>

Rows whose norm is under half the smallest token embedding's are empty slots (a fact shorter
than L, or what a blended read leaves there) and are masked out. The query's own <bos> is
replaced by the template's last token, so the query's tokens and the logits callers see keep
their positions in ``input_ids``.

z = 0 means "no conditioning", exactly as in `LatentDecoder`: the whole prefix is masked, the
row runs as the plain decoder, and a batch with no conditioned row calls the LM on its ids alone.

Dimensions: B batch, T query tokens, P prefix positions, L value rows, H hidden size.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from larimar.decoder import ConditionedDecoder


class EmbeddingPrefixDecoder(ConditionedDecoder):
    def __init__(
        self, lm: PreTrainedModel, pad_token_id: int, bos_id: int, rows: int, head_ids: list[int], tail_ids: list[int]
    ):
        """rows: L, the value rows (fact tokens kept); head_ids / tail_ids: the template's tokens
        before and after the value rows (tail_ids must not be empty: its last token takes the
        place of the query's <bos>)."""
        super().__init__()
        if rows < 1:
            raise ValueError(f"value rows must be >= 1, got {rows}")
        if not tail_ids:
            raise ValueError("the value template needs at least one token after {value}")
        self.lm = lm
        self.pad_token_id, self.bos_id, self.rows = pad_token_id, bos_id, rows
        table = lm.get_input_embeddings().weight
        self.hidden = table.shape[1]
        # the template's tokens without the value rows: <bos> head | tail[:-1]; the rows go at value_start
        self.register_buffer("template_ids", torch.tensor([bos_id, *head_ids, *tail_ids[:-1]]), persistent=False)
        self.value_start = 1 + len(head_ids)
        self.joint_id = tail_ids[-1]
        self.row_floor = 0.5 * float(table.detach().norm(dim=-1).min())

    @property
    def value_dim(self) -> int:
        return self.rows * self.hidden

    @property
    def prefix_length(self) -> int:
        return len(self.template_ids) + self.rows

    def fact_values(self, ids: list[list[int]]) -> torch.Tensor:
        """Token ids of facts -> (n, L * H) values: their first L input embeddings, zero-padded."""
        emb = self.lm.get_input_embeddings()
        out = torch.zeros(len(ids), self.rows, self.hidden, dtype=emb.weight.dtype, device=emb.weight.device)
        for i, t in enumerate(ids):
            t = t[: self.rows]
            if t:
                out[i, : len(t)] = emb(torch.tensor(t, device=emb.weight.device))
        return out.flatten(1)

    def _inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, P+T, H) input embeddings, (B, P+T) attention mask and positions."""
        emb = self.lm.get_input_embeddings()
        B, P, L = input_ids.shape[0], self.prefix_length, self.rows
        cond = self.uses_latent(z).bool()  # (B,)
        mask = attention_mask.long()
        first = mask.argmax(-1)  # the first attended token: the query's <bos>
        rows = torch.arange(B, device=input_ids.device)
        if cond.any() and not bool((input_ids[rows[cond], first[cond]] == self.bos_id).all()):
            raise ValueError("conditioned queries must start with <bos> (LarimarModel.tokenize_for_decoder)")
        ids = input_ids.clone()
        ids[rows[cond], first[cond]] = self.joint_id
        template = emb(self.template_ids).unsqueeze(0).expand(B, -1, -1)  # (B, P - L, H)
        values = z.to(template.dtype).view(B, L, self.hidden)
        s = self.value_start
        prefix = torch.cat([template[:, :s], values, template[:, s:]], 1)  # (B, P, H)
        ones = torch.ones(B, P - L, dtype=torch.long, device=mask.device)
        filled = (values.norm(dim=-1) >= self.row_floor).long()  # (B, L): empty rows are masked
        prefix_mask = torch.cat([ones[:, :s], filled, ones[:, s:]], 1) * cond.long().unsqueeze(1)
        full_mask = torch.cat([prefix_mask, mask], 1)
        return torch.cat([prefix, emb(ids)], 1), full_mask, self._plain_positions(full_mask)

    def _plain_positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.long()
        return (mask.cumsum(-1) - 1).clamp_min(0) * mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """input_ids (B, T) starting with <bos>, attention_mask (B, T), z (B, L * H) -> logits (B, T, V)
        (the last `logits_to_keep` positions' when > 0), aligned with input_ids."""
        if not bool(self.uses_latent(z).any()):
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=self._plain_positions(attention_mask),
                logits_to_keep=logits_to_keep,
            )
            return out.logits
        x, full_mask, positions = self._inputs(input_ids, attention_mask, z)
        out = self.lm(inputs_embeds=x, attention_mask=full_mask, position_ids=positions, logits_to_keep=logits_to_keep)
        return out.logits if logits_to_keep else out.logits[:, self.prefix_length :]

    def generation_start(self, prompt_length: int, z: torch.Tensor) -> int:
        """Where the new tokens begin in the ids `lm.generate` hands to stopping criteria: after the
        prompt for plain batches; at 0 for prefixed ones (generate() from embeddings has no prompt ids)."""
        return prompt_length if not bool(self.uses_latent(z).any()) else 0

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """transformers ``generate()`` with the read-out; (B, T + new) ids (the prefix is not in them).
        Batches must be left-padded."""
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("EmbeddingPrefixDecoder.generate supports num_beams=1 and num_return_sequences=1")
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        if not bool(self.uses_latent(z).any()):
            return self.lm.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=self._plain_positions(attention_mask),
                **kwargs,
            )
        x, full_mask, positions = self._inputs(input_ids, attention_mask, z)
        new = self.lm.generate(inputs_embeds=x, attention_mask=full_mask, position_ids=positions, **kwargs)
        return torch.cat([input_ids, new], 1)
