"""A Hugging Face causal LM conditioned on a Larimar latent z.

Reference: IBM/larimar ``pytorch_transformers/modeling_gpt2.py`` (Optimus-style injection,
Li et al. 2020). The latent z (B, C) enters the decoder in two ways:

1. KV prefix: ``kv_proj(z)`` is split into one key/value slot per attention layer (key = value,
   as in the reference). ``slots`` > 1 adds more slots per layer (``kv_extra(z)``), a deep prefix
   as in prefix tuning: with one slot every position reads the same vector, so a multi-token
   answer can only come out as a bag of tokens; several slots let each position's query pick
   what it reads (the next token of the object, say). The slot is a pre-filled entry of a transformers ``DynamicCache``, so it
   bypasses the layer's own projections, norms and rotary/position embeddings, exactly like the
   reference's ``past_key_values=z`` trick, and ``generate()`` treats it as an already-computed
   first token.
2. Embedding shift: ``emb_proj(z)`` is added to every token embedding, through a forward hook on
   the input embedding module that reads the shift from a ``ContextVar`` (thread- and
   asyncio-safe, so concurrent requests in a Serve replica do not see each other's latents).

z = 0 means "no conditioning" (out-of-scope queries, the LM term of the loss). Rather than
attend to an all-zero slot (which would still dilute attention and, in GPT-2, shift the
positions), the slot is masked out for those rows, so the logits equal the plain decoder's.
Tokens of conditioned rows start at position 1, the slot(s) taking position 0, as in the reference.

Dimensions: B batch, T tokens, C latent size, L layers, Hkv key/value heads, D head size, H hidden.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel


def attention_geometry(config) -> tuple[int, int, int, int]:
    """(L, Hkv, D, H) of a decoder config; GPT-2 and GPT-J alias their fields to these names."""
    cfg = config.get_text_config()
    heads = cfg.num_attention_heads
    hidden = cfg.hidden_size
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return cfg.num_hidden_layers, kv_heads, head_dim, hidden


@dataclass
class Decoding:
    """Prompts being decoded one token at a time, each row at its own length: the cache of every
    position so far (left-padded to a common length), the (B, T) mask over those positions, each
    row's next position (B,) and the embedding shift its new tokens get ((B, 1, H), or None).

    Rows join (`concat`) and leave (`select`) between two tokens: what serving's continuous
    batching (`larimar.serving.completion.Batch`) does with it. A row's logits do not depend on
    what it shares a batch with beyond the padding's rounding (exact in float32, to ~1e-5)."""

    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    shift: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.mask.shape[0]

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    @staticmethod
    def _cache(config, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        cache = DynamicCache(config=config)
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        return cache

    def select(self, rows: list[int], config) -> "Decoding":
        """The given rows only, without the leading positions none of them attends to any more."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[idx]
        start = int(mask.any(0).long().argmax()) if bool(mask.any()) else mask.shape[1]
        layers = [(k[idx, :, start:], v[idx, :, start:]) for k, v in self._layers()]
        shift = self.shift[idx] if self.shift is not None else None
        return Decoding(self._cache(config, layers), mask[:, start:], self.positions[idx], shift)

    @staticmethod
    def concat(parts: list["Decoding"], config) -> "Decoding":
        """One batch of the parts' rows, in order, each left-padded (cache zeros, mask 0) to the longest."""
        if len(parts) == 1:
            return parts[0]
        T = max(p.mask.shape[1] for p in parts)

        def left(x: torch.Tensor, dim: int) -> torch.Tensor:
            short = T - x.shape[dim]
            if not short:
                return x
            shape = list(x.shape)
            shape[dim] = short
            return torch.cat([x.new_zeros(shape), x], dim)

        layers = [
            (torch.cat([left(k, 2) for k, _ in per], 0), torch.cat([left(v, 2) for _, v in per], 0))
            for per in zip(*(p._layers() for p in parts))
        ]
        mask = torch.cat([left(p.mask, 1) for p in parts], 0)
        positions = torch.cat([p.positions for p in parts], 0)
        shift = None
        if any(p.shift is not None for p in parts):
            ref = next(p.shift for p in parts if p.shift is not None)
            shift = torch.cat(
                [p.shift if p.shift is not None else ref.new_zeros(len(p), *ref.shape[1:]) for p in parts]
            )
        return Decoding(Decoding._cache(config, layers), mask, positions, shift)


class ConditionedDecoder(nn.Module):
    """What the model, evaluation and serving call on a decoder conditioned on read-outs z (B, V):
    teacher-forced logits (``forward``), log-probs and loss, and ``generate``. A row with z = 0 is
    the plain LM. Two kinds: `LatentDecoder` (a latent slot, the paper) and
    `larimar.prefix_decoder.EmbeddingPrefixDecoder` (read-outs in the LM's embedding space)."""

    lm: PreTrainedModel

    @staticmethod
    def uses_latent(z: torch.Tensor) -> torch.Tensor:
        """(B,) 1 where z is nonzero (conditioned), 0 where z == 0 (plain decoder)."""
        return (z.detach().abs().amax(dim=-1) > 0).long()

    def generation_start(self, prompt_length: int, z: torch.Tensor) -> int:
        """Index of the first new token in the ids `lm.generate` shows stopping criteria."""
        raise NotImplementedError

    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, Decoding]:
        """Left-padded prompts and their read-outs -> (B, vocab) logits of the first new token, and
        the `Decoding` to continue from (`decode`). What `generate` does before its first token."""
        raise NotImplementedError

    def _applying(self, shift: torch.Tensor | None):
        """A context in which token embeddings get `shift` (`LatentDecoder`'s embedding shift)."""
        return contextlib.nullcontext()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, state: Decoding) -> torch.Tensor:
        """One new token per row (B,) -> (B, vocab) logits of the next; `state` moves on by one."""
        mask = torch.cat([state.mask, state.mask.new_ones(len(state), 1)], 1)
        with self._applying(state.shift):
            out = self.lm(
                input_ids=tokens.unsqueeze(1),
                attention_mask=mask,
                position_ids=state.positions.unsqueeze(1),
                cache=state.cache,
                use_cache=True,
            )
        state.mask, state.positions = mask, state.positions + 1
        return out.logits[:, -1]

    def _split_mixed(self, forward, input_ids, attention_mask, z, logits_to_keep: int) -> torch.Tensor | None:
        """A batch with both kinds of rows as two passes, the z = 0 rows through the LM alone, when
        the LM runs in bf16/int8 (`larimar.precision`); None otherwise. There the two paths round
        differently by tenths of a logit, enough to flip near-ties, and a z = 0 row must answer as
        the plain decoder does (the locality the scope detector promises: zsRE dev locality at int8
        was 0.972 in one pass, 1.000 split). In float32 (training, as-trained inference) the masked
        slot already makes a plain row equal the LM alone to ~1e-5, so it stays one pass."""
        if self.lm.get_input_embeddings().weight.dtype == torch.float32:
            return None
        cond = self.uses_latent(z).bool()
        if bool(cond.all()) or not bool(cond.any()):
            return None
        plain = self.lm(
            input_ids=input_ids[~cond],
            attention_mask=attention_mask[~cond],
            position_ids=(attention_mask[~cond].long().cumsum(-1) - 1).clamp_min(0) * attention_mask[~cond].long(),
            logits_to_keep=logits_to_keep,
        ).logits
        conditioned = forward(input_ids[cond], attention_mask[cond], z[cond], logits_to_keep)
        out = plain.new_empty((input_ids.shape[0], *plain.shape[1:]))
        out[~cond], out[cond] = plain, conditioned.to(plain.dtype)
        return out

    def chat_read(self, z: torch.Tensor) -> torch.Tensor:
        """The read-outs to condition chat-formatted queries on (`EmbeddingPrefixDecoder` weighs its
        slot differently there); the same z for a decoder that reads every query alike."""
        return z

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t, z) for t = 1..T-1 -> (B, T-1); 0 at padded targets."""
        logits = self(input_ids, attention_mask, z)[:, :-1].float()
        logp = torch.gather(F.log_softmax(logits, -1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return logp * attention_mask[:, 1:].to(logp.dtype)

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over non-padded targets (the reference also counts pads)."""
        logits = self(input_ids, attention_mask, z)[:, :-1]
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


class LatentDecoder(ConditionedDecoder):
    def __init__(
        self,
        lm: PreTrainedModel,
        latent_dim: int,
        pad_token_id: int,
        inject_layers: int = -1,
        embedding_shift: bool = True,
        init: str = "normal",
        tie_key_value: bool = True,
        slots: int = 1,
    ):
        """inject_layers: -1 puts the slot in every layer (the paper), n > 0 in the top n only; the
        lower layers then see an all-zero slot, take no gradient and, with a frozen decoder, run
        without building an autograd graph (the cheap CPU recipe).
        embedding_shift: also add emb_proj(z) to the token embeddings (the paper); this makes the
        gradient flow through every layer.
        init: "normal" (std = the LM's initializer_range, the reference) or "zero", which starts a
        pretrained decoder exactly at its own predictions (plus a zero slot) instead of under a
        random perturbation.
        tie_key_value: the slot's key is its value (the reference); False projects them apart, so
        where a layer attends and what it reads there are learned separately.
        slots: key/value slots per injected layer. The first is ``kv_proj``'s, the others come from
        their own projection ``kv_extra``, so a one-slot model's weights start a many-slot one
        (``run.init_from``); its slots start at zero like any new conditioning."""
        super().__init__()
        if init not in ("normal", "zero"):
            raise ValueError(f"conditioning init must be 'normal' or 'zero', got {init!r}")
        self.lm = lm
        self.pad_token_id = pad_token_id
        self.value_dim = latent_dim
        self.num_layers, self.kv_heads, self.head_dim, hidden = attention_geometry(lm.config)
        if inject_layers == 0 or inject_layers < -1 or inject_layers > self.num_layers:
            raise ValueError(f"inject_layers must be -1 (all) or 1..{self.num_layers}, got {inject_layers}")
        self.inject_layers = self.num_layers if inject_layers == -1 else inject_layers
        std = getattr(lm.config.get_text_config(), "initializer_range", 0.02)
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.tie_key_value = tie_key_value
        self.slots = slots
        per_slot = self.inject_layers * self.kv_heads * self.head_dim * (1 if tie_key_value else 2)
        self.kv_proj = nn.Linear(latent_dim, per_slot, bias=False)
        self.kv_extra = nn.Linear(latent_dim, per_slot * (slots - 1), bias=False) if slots > 1 else None
        self.emb_proj = nn.Linear(latent_dim, hidden, bias=False) if embedding_shift else None
        for proj in (self.kv_proj, self.kv_extra, self.emb_proj):
            if proj is not None:
                nn.init.normal_(proj.weight, std=std) if init == "normal" else nn.init.zeros_(proj.weight)
        self._shift: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
            f"shift{id(self)}", default=None
        )
        lm.get_input_embeddings().register_forward_hook(self._add_shift)

    # -- conditioning -------------------------------------------------------------------------

    def _add_shift(self, module, args, output):
        shift = self._shift.get()
        return output if shift is None else output + shift.to(output.dtype)

    def shift_of(self, z: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, H): what the embedding shift adds to each token embedding of a row (None without one)."""
        return None if self.emb_proj is None else self.emb_proj(z.to(self.emb_proj.weight.dtype)).unsqueeze(1)

    @contextlib.contextmanager
    def _applying(self, shift: torch.Tensor | None) -> Iterator[None]:
        if shift is None:
            yield
            return
        token = self._shift.set(shift)
        try:
            yield
        finally:
            self._shift.reset(token)

    def _shifted(self, z: torch.Tensor):
        return self._applying(self.shift_of(z))

    def prefix_cache(self, z: torch.Tensor) -> DynamicCache:
        """S slots per layer, key = value unless untied: (B, C) -> cache of length S (zeros below the
        injected layers)."""
        B, S = z.shape[0], self.slots
        z = z.to(self.kv_proj.weight.dtype)
        kv = self.kv_proj(z) if self.kv_extra is None else torch.cat([self.kv_proj(z), self.kv_extra(z)], -1)
        kv = kv.view(B, S, self.inject_layers, 1 if self.tie_key_value else 2, self.kv_heads, self.head_dim)
        kv = kv.permute(0, 2, 3, 4, 1, 5)  # (B, Li, 1|2, Hkv, S, D)
        keys, values = kv[:, :, 0], kv[:, :, -1]  # (B, Li, Hkv, S, D) each
        first = self.num_layers - self.inject_layers
        zero = kv.new_zeros(B, self.kv_heads, S, self.head_dim).detach() if first else None
        cache = DynamicCache(config=self.lm.config)
        for layer in range(self.num_layers):
            if layer < first:
                cache.update(zero, zero, layer)
            else:
                cache.update(keys[:, layer - first], values[:, layer - first], layer)
        return cache

    def generation_start(self, prompt_length: int, z: torch.Tensor) -> int:
        """The slot ids lead the prompt in what generate() sees."""
        return self.slots + prompt_length

    def _inputs(self, z: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S+T) attention mask and positions: the slots take position 0 (masked out where z = 0),
        a conditioned row's tokens start at 1, a plain row's at 0; padding gets position 0."""
        slot = self.uses_latent(z).unsqueeze(1)  # (B, 1)
        mask = attention_mask.long()
        full_mask = torch.cat([slot.expand(-1, self.slots), mask], dim=1)  # (B, S+T)
        tokens = (mask.cumsum(-1) - 1 + slot).clamp_min(0) * mask
        positions = torch.cat([torch.zeros_like(full_mask[:, : self.slots]), tokens], dim=1)
        return full_mask, positions

    # -- teacher forcing ----------------------------------------------------------------------

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T), z (B, C) -> logits (B, T, V); with `logits_to_keep`
        k > 0 only the last k positions' (B, k, V): the vocabulary projection is most of the memory."""
        if (split := self._split_mixed(self.forward, input_ids, attention_mask, z, logits_to_keep)) is not None:
            return split
        full_mask, positions = self._inputs(z, attention_mask)
        with self._shifted(z):
            out = self.lm(
                input_ids=input_ids,
                attention_mask=full_mask,
                position_ids=positions[:, self.slots :],
                cache=self.prefix_cache(z),
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        return out.logits

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, Decoding]:
        full_mask, positions = self._inputs(z, attention_mask)
        cache, shift = self.prefix_cache(z), self.shift_of(z)
        with self._applying(shift):
            out = self.lm(
                input_ids=input_ids,
                attention_mask=full_mask,
                position_ids=positions[:, self.slots :],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1], Decoding(cache, full_mask, positions[:, -1] + 1, shift)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, z: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """transformers ``generate()`` with the latent; returns (B, T + new) ids without the slot.

        Batches must be left-padded. The slots are already-cached first tokens for generate():
        the pad id stands for each in ``input_ids`` and is stripped from the output.
        """
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError(
                "LatentDecoder.generate supports num_beams=1 and num_return_sequences=1; "
                "repeat the inputs and latents for several samples"
            )
        B = input_ids.shape[0]
        full_mask, positions = self._inputs(z, attention_mask)
        slot_ids = torch.full((B, self.slots), self.pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        with self._shifted(z):
            out = self.lm.generate(
                input_ids=torch.cat([slot_ids, input_ids], 1),
                attention_mask=full_mask,
                position_ids=positions,
                cache=self.prefix_cache(z),
                **kwargs,
            )
        return out[:, self.slots :]
