"""A causal LM conditioned on a memory read-out that lives in its own input-embedding space.

The latent decoder (`larimar.decoder`) turns a 384-d read-out into a key/value slot; trained on
two CPU cores it recalls zsRE targets at about 50% token accuracy, while SmolLM2 itself, given
the fact in its context, recalls 92% (README, "Larimar-smol v3"). This decoder closes that gap by
giving the memory values the decoder can read without training: a fact's value is SmolLM2's
input embeddings of the fact's first L tokens, flattened to (L * H,). The memory still does what
Larimar's does (one-shot least-squares write, a read addressed by the query's latent, rank-one
write and forget), only its values are wider than its keys (`SequentialMemory(value_dim=...)`).

A read-out enters as a soft prompt in front of the query, inside a template
(``LarimarConfig.value_template``, e.g. IKE's "New Fact:{value}\\nPrompt:", Zheng et al. 2023):

    [latent slot] <bos> New Fact: [row 1] ... [row l] \\n Prompt: <query tokens>

With ``latent`` (``value_space: latent+decoder``) each value also carries the trained latent
value in front of the rows, z = [latent (C) | rows (L * H)], and the inner `LatentDecoder` puts it
(times ``latent_scale``) in its key/value slot as before: the trained slot makes CounterFact's
counterfactuals win against SmolLM2's priors, the in-context text spells rare objects, and both
come from one memory read. On the dev slices (README, "Larimar-smol v3"): slot alone zsRE 52 /
50, CounterFact PS 100; text alone in IKE's template 94 / 84, PS 93; both, with one worked
demonstration in the template and the slot at 0.5, 96 / 97 and PS 100. Chat-formatted queries
read with ``chat_latent_scale`` instead (`chat_read`): SmolLM2-Instruct in a chat turn ignores the
text, so there the slot must carry the fact alone.

Rows whose norm is under half the smallest token embedding's are empty (a fact shorter than L, or
what a blended read leaves there) and are masked out. The query's own <bos> is replaced by the
template's last token, so the query's tokens and the logits callers see keep their places in
``input_ids``. The slot and the prefix are run once into a transformers ``DynamicCache`` and the
query continues from it (``forward``) or is generated from it (``generate``, which sees the cached
positions as placeholder ids, as `LatentDecoder.generate` does with its slot).

z = 0 means "no conditioning", exactly as in `LatentDecoder`: a batch with no conditioned row
calls the LM on its ids alone; in a mixed batch the plain rows' slot and prefix are masked.

Dimensions: B batch, T query tokens, S slots, P prefix positions, L value rows, H hidden size.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache, PreTrainedModel

from larimar.decoder import ConditionedDecoder, Decoding, LatentDecoder


class EmbeddingPrefixDecoder(ConditionedDecoder):
    def __init__(
        self,
        lm: PreTrainedModel,
        pad_token_id: int,
        bos_id: int,
        rows: int,
        head_ids: list[int],
        tail_ids: list[int],
        latent: LatentDecoder | None = None,
        latent_scale: float = 1.0,
        chat_latent_scale: float | None = None,
    ):
        """rows: L, the value rows (fact tokens kept); head_ids / tail_ids: the template's tokens
        before and after the rows (tail_ids must not be empty: its last token takes the place of
        the query's <bos>); latent: a trained latent decoder on the same LM, conditioned on the
        first C dims of each read-out (None: read-outs are rows only); latent_scale: what the latent
        part is multiplied by before it reaches the slot (how hard the slot pulls against the text);
        chat_latent_scale: the same for chat-formatted queries (`chat_read`; None: latent_scale)."""
        super().__init__()
        if rows < 1:
            raise ValueError(f"value rows must be >= 1, got {rows}")
        if not tail_ids:
            raise ValueError("the value template needs at least one token after {value}")
        if latent is not None and latent.lm is not lm:
            raise ValueError("the latent decoder must wrap the same LM")
        self.lm = lm
        # The latent decoder is not a submodule: its projections are registered here under the names
        # a latent model saves them with (decoder.kv_proj, ...), so its trained weights load as they are.
        self.__dict__["latent"] = latent
        for name in ("kv_proj", "kv_extra", "emb_proj"):
            if latent is not None and getattr(latent, name) is not None:
                setattr(self, name, getattr(latent, name))
        self.pad_token_id, self.bos_id, self.rows = pad_token_id, bos_id, rows
        table = lm.get_input_embeddings().weight
        self.hidden = table.shape[1]
        self.latent_dim = latent.value_dim if latent is not None else 0
        self.latent_scale = latent_scale
        self.chat_latent_scale = latent_scale if chat_latent_scale is None else chat_latent_scale
        if self.chat_latent_scale != latent_scale and latent_scale == 0:
            raise ValueError("chat_latent_scale needs latent_scale > 0 (it rescales the latent part)")
        # the template without the rows: <bos> head | tail[:-1]; the rows go in at value_start
        self.register_buffer("template_ids", torch.tensor([bos_id, *head_ids, *tail_ids[:-1]]), persistent=False)
        self.value_start = 1 + len(head_ids)
        self.joint_id = tail_ids[-1]
        self.row_floor = 0.5 * float(table.detach().norm(dim=-1).min())

    @property
    def value_dim(self) -> int:
        return self.latent_dim + self.rows * self.hidden

    def chat_read(self, z: torch.Tensor) -> torch.Tensor:
        """z with its latent part reweighted so that the slot gets chat_latent_scale instead of
        latent_scale: a linear rescale, so z = 0 stays 0 and each row of a batch can be either."""
        if self.latent is None or self.chat_latent_scale == self.latent_scale:
            return z
        z = z.clone()
        z[:, : self.latent_dim] *= self.chat_latent_scale / self.latent_scale
        return z

    @property
    def lead(self) -> int:
        """Cached positions before the query at most: the latent slots and the prefix with all L rows."""
        return (self.latent.slots if self.latent is not None else 0) + len(self.template_ids) + self.rows

    def _filled(self, values: torch.Tensor) -> torch.Tensor:
        """(B, L, H) value rows -> (B, L) 1 where a row holds a token embedding, 0 where it is empty."""
        return (values.norm(dim=-1) >= self.row_floor).long()

    def _kept(self, z: torch.Tensor) -> torch.Tensor:
        """(L,) the value rows a batch runs: those filled in at least one of its rows. A row empty in
        every one is masked for all of them, so leaving it out changes no logit; it only saves its
        prefill and its place in every later attention (a CounterFact fact fills ~10 of 24)."""
        values = z[:, self.latent_dim :].reshape(z.shape[0], self.rows, self.hidden)
        return self._filled(values).bool().any(0)

    def _lead(self, z: torch.Tensor) -> int:
        """Cached positions before the query for this batch's read-outs."""
        return self.lead - self.rows + int(self._kept(z).sum())

    def fact_values(self, ids: list[list[int]]) -> torch.Tensor:
        """Token ids of facts -> (n, L * H) rows: their first L input embeddings, zero-padded (the
        latent part of a latent+decoder value is the model's, `LarimarModel.decoder_space_values`)."""
        emb = self.lm.get_input_embeddings()
        # float32 whatever the LM runs in (larimar.precision): memory values are float32
        out = torch.zeros(len(ids), self.rows, self.hidden, dtype=torch.float32, device=emb.weight.device)
        for i, t in enumerate(ids):
            t = t[: self.rows]
            if t:
                out[i, : len(t)] = emb(torch.tensor(t, device=emb.weight.device)).float()
        return out.flatten(1)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp_min(0) * mask

    def _prefilled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor):
        """Run the slot and the prefix into a cache -> (cache, query ids, (B, lead + T) mask and positions,
        the latent part of z or None, lead: the cached positions, `_lead`)."""
        cache, prefix, ids, full_mask, positions, z_lat, S = self._prefix(input_ids, attention_mask, z)
        lead = S + prefix.shape[1]
        self.lm(
            inputs_embeds=prefix,
            attention_mask=full_mask[:, :lead],
            position_ids=positions[:, S:lead],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return cache, ids, full_mask, positions, z_lat, lead

    def _prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor):
        """The conditioning laid out -> (cache holding the latent slots, (B, P, H) prefix embeddings,
        query ids, (B, S + P + T) mask and positions, the latent part of z or None, S: the slots)."""
        B, L, H = input_ids.shape[0], self.rows, self.hidden
        cond = self.uses_latent(z).bool()  # (B,)
        mask = attention_mask.long()
        first = mask.argmax(-1)  # the first attended token: the query's <bos>
        rows_b = torch.arange(B, device=input_ids.device)[cond]
        if not bool((input_ids[rows_b, first[cond]] == self.bos_id).all()):
            raise ValueError("conditioned queries must start with <bos> (LarimarModel.tokenize_for_decoder)")
        ids = input_ids.clone()
        ids[rows_b, first[cond]] = self.joint_id
        z_lat, values = z[:, : self.latent_dim] * self.latent_scale, z[:, self.latent_dim :]
        if self.latent is not None:
            # conditioned rows with a zero latent part still get their prefix: their slot is masked
            cache, slot_mask = self.latent.prefix_cache(z_lat), self.latent.uses_latent(z_lat)
            slot_mask = slot_mask.unsqueeze(1).expand(B, self.latent.slots)
        else:
            cache, slot_mask = DynamicCache(config=self.lm.config), mask[:, :0]
        template = self.lm.get_input_embeddings()(self.template_ids).unsqueeze(0).expand(B, -1, -1)
        values = values.to(template.dtype).view(B, L, H)[:, self._kept(z)]
        s = self.value_start
        prefix = torch.cat([template[:, :s], values, template[:, s:]], 1)  # (B, P, H)
        if self.latent is not None and self.latent.emb_proj is not None:  # the shift its hook gives token embeddings
            prefix = prefix + self.latent.emb_proj(z_lat.to(self.latent.emb_proj.weight.dtype)).unsqueeze(1)
        ones = torch.ones(B, template.shape[1], dtype=torch.long, device=mask.device)
        filled = self._filled(values)  # rows empty here but filled in another row of the batch are masked
        prefix_mask = torch.cat([ones[:, :s], filled, ones[:, s:]], 1) * cond.long().unsqueeze(1)
        full_mask = torch.cat([slot_mask.long(), prefix_mask, mask], 1)
        positions = self._positions(full_mask)
        return (
            cache,
            prefix,
            ids,
            full_mask,
            positions,
            (z_lat if self.latent is not None else None),
            slot_mask.shape[1],
        )

    def _shifted(self, z_lat: torch.Tensor | None):
        """The inner latent decoder's embedding shift of the query tokens, if it has one."""
        return self.latent._shifted(z_lat) if z_lat is not None else contextlib.nullcontext()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """input_ids (B, T) starting with <bos>, attention_mask (B, T), z (B, V) -> logits (B, T, vocab)
        (the last `logits_to_keep` positions' when > 0), aligned with input_ids."""
        if not bool(self.uses_latent(z).any()):
            return self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=self._positions(attention_mask.long()),
                logits_to_keep=logits_to_keep,
            ).logits
        if (split := self._split_mixed(self.forward, input_ids, attention_mask, z, logits_to_keep)) is not None:
            return split
        cache, ids, full_mask, positions, z_lat, lead = self._prefilled(input_ids, attention_mask, z)
        with self._shifted(z_lat):
            out = self.lm(
                input_ids=ids,
                attention_mask=full_mask,
                position_ids=positions[:, lead:],
                cache=cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        return out.logits

    def _applying(self, shift: torch.Tensor | None):
        return self.latent._applying(shift) if self.latent is not None else contextlib.nullcontext()

    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, Decoding]:
        """As `forward` on the last position, keeping the cache: a batch with no conditioned row
        runs the LM on its ids alone; otherwise the slot and prefix are prefilled first."""
        if not bool(self.uses_latent(z).any()):
            mask = attention_mask.long()
            positions = self._positions(mask)
            cache = DynamicCache(config=self.lm.config)
            out = self.lm(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1], Decoding(cache, mask, positions[:, -1] + 1)
        # The prefix and the query in one pass, not two as `forward` runs them: each pass streams
        # every weight once, and a pass of 50-odd rows runs as a GEMM (larimar.precision).
        cache, prefix, ids, full_mask, positions, z_lat, S = self._prefix(input_ids, attention_mask, z)
        shift = self.latent.shift_of(z_lat) if z_lat is not None else None
        with self._applying(shift):  # the query's token embeddings get the shift, the prefix has its own
            query = self.lm.get_input_embeddings()(ids)
            out = self.lm(
                inputs_embeds=torch.cat([prefix, query.to(prefix.dtype)], 1),
                attention_mask=full_mask,
                position_ids=positions[:, S:],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1], Decoding(cache, full_mask, positions[:, -1] + 1, shift)

    def generation_start(self, prompt_length: int, z: torch.Tensor) -> int:
        """Where new tokens begin in the ids `lm.generate` shows stopping criteria: after the cached
        slot and prefix placeholders and the prompt (after the prompt alone for plain batches)."""
        return prompt_length + (self._lead(z) if bool(self.uses_latent(z).any()) else 0)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """transformers ``generate()`` with the read-out; (B, T + new) ids (the slot and prefix are not
        in them). Batches must be left-padded."""
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("EmbeddingPrefixDecoder.generate supports num_beams=1 and num_return_sequences=1")
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        if not bool(self.uses_latent(z).any()):
            return self.lm.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=self._positions(attention_mask.long()),
                **kwargs,
            )
        cache, ids, full_mask, positions, z_lat, lead = self._prefilled(input_ids, attention_mask, z)
        placeholders = torch.full((ids.shape[0], lead), self.pad_token_id, dtype=ids.dtype, device=ids.device)
        with self._shifted(z_lat):
            out = self.lm.generate(
                input_ids=torch.cat([placeholders, ids], 1),
                attention_mask=full_mask,
                position_ids=positions,
                cache=cache,
                **kwargs,
            )
        return torch.cat([input_ids, out[:, lead + ids.shape[1] :]], 1)
