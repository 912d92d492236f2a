"""The Larimar model: encoder -> episodic memory -> latent-conditioned decoder.

Reference: Das et al., ICML 2024 (arXiv 2403.11901) §2-3 and IBM/larimar ``modules/mem_vae.py``.
A training batch is B episodes of N texts each. Each episode is written into its own memory
(one-shot least squares), read back with noisy addressing, and every text is decoded from its
read-out (the reconstruction term), from its own encoding (the autoencoder term) and from
z = 0 (the language-model term). See `larimar.losses` for the weights and the beta schedule.

A trained model is a directory in Hugging Face's layout: ``config.json`` (``model_type: larimar``
and this module's `LarimarConfig` under ``larimar``), ``model.safetensors``,
``generation_config.json`` (transformers' `GenerationConfig`: the special token ids and the
greedy defaults `generate_text` uses) and, for shipped adapters, a model card ``README.md``.
Frozen pretrained backbone weights are not written: they are reloaded from their registry name
(`larimar.backbones`), so a trained adapter stays a few MB.

Dimensions: B episodes, N texts per episode, T tokens, C latent size, K memory slots.
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig

from larimar import backbones
from larimar.config import apply_overrides, from_dict, to_dict
from larimar.continuations import continuation_ids, prompt_and_continuation, special_ids
from larimar.decoder import LatentDecoder
from larimar.encoder import LatentEncoder
from larimar.losses import LossConfig
from larimar.memory import EpisodicMemory, MemoryConfig, keyed_read
from larimar.prefix_decoder import EmbeddingPrefixDecoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENERATION_CONFIG_NAME = "generation_config.json"
MODEL_TYPE = "larimar"
BUNDLED_DIR = Path(__file__).resolve().parent / "pretrained"  # trained adapters shipped with the package
DEFAULT_MODEL = "larimar-smol-v3"  # the bundled adapter that the demo, the README and the editor default to


def bundled_models() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.glob("*") if (p / CONFIG_NAME).exists()) if BUNDLED_DIR.is_dir() else []


def resolve_model_dir(spec: str | Path) -> Path:
    """A saved model directory, or the name of a model shipped in larimar/pretrained (e.g. larimar-smol-v2)."""
    path = Path(spec).expanduser()
    if (path / CONFIG_NAME).exists():
        return path
    if str(spec) in bundled_models():
        return BUNDLED_DIR / str(spec)
    raise FileNotFoundError(
        f"{spec} is not a Larimar model directory (no {CONFIG_NAME}) nor a bundled model "
        f"({', '.join(bundled_models()) or 'none'})"
    )


@dataclass
class LarimarConfig:
    encoder: str = "minilm-l6"  # backbone name (larimar.backbones), local directory or hub id
    decoder: str = "smollm2-135m"
    pooling: Literal["mean", "cls"] = "mean"  # mean for sentence-transformers encoders, cls for BERT
    encoder_trainable_layers: int = 0  # -1 all, 0 frozen (only the latent head trains), n: top n layers
    decoder_trainable: bool = False  # fine-tune the whole decoder (the reference does); else only the
    # conditioning projections train and z = 0 reproduces the base LM exactly
    max_length: int = 64  # tokens per text; the paper's chunk size
    inject_layers: int = -1  # decoder layers given the latent slot: -1 all (the paper), n: the top n only
    embedding_shift: bool = True  # also shift the token embeddings by a projection of z (the paper)
    conditioning_init: Literal["normal", "zero"] = "normal"  # "zero" starts a pretrained decoder at its own predictions
    tie_key_value: bool = True  # the slot's key is its value (the paper); false: separate projections
    conditioning_slots: int = 1  # key/value slots per injected layer (the paper: 1); more let each position
    # read a different part of the latent (larimar.decoder)
    latent_scale_min: float = 1.0  # training only: each read-out is scaled by U(latent_scale_min, 1), so the
    # decoder also decodes the weaker read-outs a paraphrased query gets from a memory (1.0: off)
    value_target: bool = False  # values = head(enc(fact)) + target_head(enc(target)): the object, which mean
    # pooling dilutes in the sentence, gets its own term (larimar.fact_encoder)
    value_target_tokens: bool = False  # values also get a term from the decoder's own input embeddings of
    # the target's tokens (mean, through a zero-initialised head): the object's exact token identity,
    # which a MiniLM latent of an unseen name cannot spell (larimar.fact_encoder)
    value_space: Literal["latent", "decoder", "latent+decoder"] = "latent"  # where memory values live: the
    # encoder's latent space, decoded through the latent slot (the paper); the decoder's input-embedding
    # space, a value being the decoder's embeddings of the fact's first `value_tokens` tokens, read back
    # as a soft prompt inside `value_template` (larimar.prefix_decoder; no trained conditioning); or both,
    # one value [latent | rows] read once and decoded through the slot and the soft prompt together
    value_tokens: int = 24  # decoder-space values: fact tokens kept (rows of a value)
    value_latent_scale: float = 1.0  # latent+decoder: the latent part's weight in the slot (vs the rows' text)
    value_chat_latent_scale: float | None = None  # the same for chat-formatted queries (None: as above).
    # SmolLM2-Instruct in a chat turn ignores a fact given as text (0 of 3 Eiffel Tower questions, in
    # the system or the user message: README, v3), so there the slot must carry it alone
    value_template: str = "New Fact:{value}\nPrompt:"  # decoder-space values: the text around the soft
    # prompt (IKE's; its "Prompt:" cue is worth 16 zsRE points over "New Fact:{value}\n": README, v3)
    readout: Literal["raw", "value_norm"] = "raw"  # how read-outs are decoded (larimar.facts.FactMemory):
    # as read (the paper) or rescaled to the matched fact's value norm; training uses the same convention
    context_weight: float = 1.0  # keyed (edit) episodes: loss weight of the decoder tokens that are not the
    # target (the query prompt and EOS); the target tokens weigh 1
    ridge: float = 1e-3  # keyed episodes: the inference memory's ridge (SequentialMemory), see keyed_read
    tiny_hidden: int = 64  # width of tiny-* random backbones
    tiny_layers: int = 2
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.latent_scale_min <= 1.0:
            raise ValueError(f"latent_scale_min must be in (0, 1], got {self.latent_scale_min}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4 tokens, got {self.max_length}")
        if self.readout not in ("raw", "value_norm"):
            raise ValueError(f"readout must be 'raw' or 'value_norm', got {self.readout!r}")
        if self.context_weight < 0 or self.ridge <= 0:
            raise ValueError("context_weight must be >= 0 and ridge > 0")
        if self.value_space not in ("latent", "decoder", "latent+decoder"):
            raise ValueError(f"value_space must be 'latent', 'decoder' or 'latent+decoder', got {self.value_space!r}")
        if self.value_space != "latent":
            if self.value_tokens < 1:
                raise ValueError(f"value_tokens must be >= 1, got {self.value_tokens}")
            if self.value_latent_scale < 0:
                raise ValueError(f"value_latent_scale must be >= 0, got {self.value_latent_scale}")
            chat = self.value_chat_latent_scale
            if chat is not None and (chat < 0 or (chat > 0 and self.value_latent_scale == 0)):
                raise ValueError(
                    f"value_chat_latent_scale must be >= 0 and needs value_latent_scale > 0, got {chat} "
                    f"with value_latent_scale {self.value_latent_scale}"
                )
            if self.value_template.count("{value}") != 1 or self.value_template.endswith("{value}"):
                raise ValueError(
                    f"value_template must hold '{{value}}' once, with text after it, got {self.value_template!r}"
                )
        if self.value_space == "decoder" and (self.value_target or self.value_target_tokens):
            raise ValueError("value_target and value_target_tokens shape latent values (value_space: latent[+decoder])")
        if self.value_space != "latent+decoder" and self.value_chat_latent_scale is not None:
            raise ValueError("value_chat_latent_scale weighs the latent slot of value_space: latent+decoder models")


@dataclass
class LarimarOutput:
    loss: torch.Tensor
    terms: dict[str, float]  # each weighted term's unweighted value, for logging


class LarimarModel(nn.Module):
    def __init__(self, cfg: LarimarConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.memory.latent_dim
        enc, self.encoder_tokenizer = backbones.load_encoder(cfg.encoder, cfg.tiny_hidden, cfg.tiny_layers)
        lm, self.decoder_tokenizer = backbones.load_decoder(cfg.decoder, cfg.tiny_hidden, cfg.tiny_layers)
        self.encoder = LatentEncoder(enc, C, cfg.pooling, cfg.encoder_trainable_layers, target_head=cfg.value_target)
        self.bos_id, self.eos_id = special_ids(self.decoder_tokenizer)
        self.decoder: LatentDecoder | EmbeddingPrefixDecoder
        latent = (
            LatentDecoder(
                lm,
                C,
                pad_token_id=self.decoder_tokenizer.pad_token_id,
                inject_layers=cfg.inject_layers,
                embedding_shift=cfg.embedding_shift,
                init=cfg.conditioning_init,
                tie_key_value=cfg.tie_key_value,
                slots=cfg.conditioning_slots,
            )
            if cfg.value_space != "decoder"
            else None
        )
        if cfg.value_space == "latent":
            self.decoder = latent
        else:
            head, tail = cfg.value_template.split("{value}")
            ids = lambda text: self.decoder_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []  # noqa: E731
            self.decoder = EmbeddingPrefixDecoder(
                lm,
                self.decoder_tokenizer.pad_token_id,
                self.bos_id,
                cfg.value_tokens,
                ids(head),
                ids(tail),
                latent,
                cfg.value_latent_scale,
                cfg.value_chat_latent_scale,
            )
        self.decoder.lm.requires_grad_(cfg.decoder_trainable)
        hidden = lm.get_input_embeddings().embedding_dim
        self.target_token_head = nn.Linear(hidden, C, bias=False) if cfg.value_target_tokens else None
        if self.target_token_head is not None:
            nn.init.zeros_(self.target_token_head.weight)  # starts at the model's values as they were
        self.memory = EpisodicMemory(cfg.memory)
        self.generation_config = GenerationConfig(
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.decoder_tokenizer.pad_token_id,
            max_new_tokens=32,
            do_sample=False,
        )

    @property
    def device(self) -> torch.device:
        return self.memory.prior_mean.device

    @property
    def value_dim(self) -> int:
        """V, the width of a memory value: C (latent), value_tokens * H (decoder) or their sum (latent+decoder)."""
        return self.decoder.value_dim

    # -- tokenization -------------------------------------------------------------------------

    def tokenize_for_encoder(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.encoder_tokenizer(
            texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def tokenize_for_decoder(
        self, texts: list[str], add_eos: bool = True, padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """<bos> text [<eos>], padded; the targets the decoder reconstructs (the reference's format)."""
        ids = self.decoder_tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=self.cfg.max_length - 2
        )["input_ids"]
        seqs = [[self.bos_id, *x, *([self.eos_id] if add_eos else [])] for x in ids]
        return pad(seqs, self.decoder_tokenizer.pad_token_id, padding_side, self.device)

    # -- encode / train -----------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., C); leading dims are flattened through the encoder and restored."""
        lead = input_ids.shape[:-1]
        z = self.encoder(
            input_ids.reshape(-1, input_ids.shape[-1]), attention_mask.reshape(-1, attention_mask.shape[-1])
        )
        return z.reshape(*lead, -1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.encode(**self.tokenize_for_encoder(texts))

    def encode_pooled(self, texts: list[str], chunk: int = 16, pool: Executor | None = None) -> torch.Tensor:
        """(n,) texts -> (n, E) pooled encoder outputs, before any head (larimar.fact_encoder).

        Texts run in length-sorted chunks of `chunk`, as sentence-transformers' `encode` does:
        an edit's texts are its prompt, its whole sentence, its target and its subject (3 to 15
        tokens), and one batch padded to the longest spent about half its encoder work on
        padding (32 CounterFact edits: 1,472 padded tokens for 738 real; sorted chunks: 864).
        Masked mean pooling makes the padding irrelevant to the result, up to float rounding.

        pool: run the chunks on these threads (`larimar.serving.encoding.TextEncoding`: the
        encoder replica's `encoder_workers`), each on torch's one intra-op thread. The chunks
        are the same as without it, so are the results, bit for bit. Why threads over chunks
        rather than intra-op threads: 32 edits' pass on 2 cores took 62.1 ms this way against
        68.2 ms with `torch.set_num_threads(2)` and 122-131 ms on one (bf16, 2-core EPYC;
        `jobs/bench_edit_path.py --encoder-workers 2 | --threads 2`), and unlike OpenMP's teams
        the two threads share no barrier per operator, which a preempted thread stalls.
        Chunks on threads run a compiled backbone's eager module (`LatentEncoder.pooled`'s
        `eager`): Inductor's C++ kernels hold the GIL, and two threads on the compiled graph took
        135.0 ms where eager took 110.3 (80 texts; a scratch check); a batch of one chunk still runs compiled, so
        under `encoder_compile` a text's bits depend on its batch's size, as they already do
        on its padding (to float rounding)."""
        if len(texts) <= 1:
            batch = self.tokenize_for_encoder(texts)
            return self.encoder.pooled(batch["input_ids"], batch["attention_mask"])
        tok = self.encoder_tokenizer
        ids = tok(texts, truncation=True, max_length=self.cfg.max_length)["input_ids"]  # once, unpadded
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        chunks = [order[start : start + chunk] for start in range(0, len(order), chunk)]

        grad = torch.is_grad_enabled()  # thread-local: a pool thread takes the caller's mode
        threaded = pool is not None and len(chunks) > 1

        def run(idx: list[int]) -> torch.Tensor:
            batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            ids_t, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            with torch.set_grad_enabled(grad):
                return self.encoder.pooled(ids_t, mask, eager=threaded)

        pooled = list(pool.map(run, chunks)) if threaded else [run(c) for c in chunks]
        out: list[torch.Tensor | None] = [None] * len(texts)
        for idx, rows in zip(chunks, pooled):
            for i, row in zip(idx, rows):
                out[i] = row
        return torch.stack(out)

    def latents_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Key and query latents: the latent head on pooled outputs."""
        return self.encoder.head(pooled)

    def values_from_pooled(
        self, pooled_text: torch.Tensor, pooled_target: torch.Tensor | None, target_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Value latents: the fact's latent, plus the target terms of ``value_target`` (pooled encoder
        output of the target) and ``value_target_tokens`` (`target_token_features`) models."""
        z = self.encoder.head(pooled_text)
        if self.encoder.target_head is not None:
            if pooled_target is None:
                raise ValueError("this model's values need the pooled target texts (value_target)")
            z = z + self.encoder.target_head(pooled_target)
        if self.target_token_head is not None:
            if target_tokens is None:
                raise ValueError("this model's values need the target token features (value_target_tokens)")
            z = z + self.target_token_head(target_tokens.to(z.dtype))
        return z

    def decoder_space_values(self, texts: list[str]) -> torch.Tensor:
        """(n,) fact texts -> (n, value_tokens * H) decoder-space rows (`value_space: decoder` and the
        rows of `latent+decoder`): the decoder's embeddings of " " + text, as the text would be
        tokenised after the template's head."""
        ids = self.decoder_tokenizer([" " + t.strip() for t in texts], add_special_tokens=False)["input_ids"]
        return self.decoder.fact_values(ids)

    def tokenize_targets_for_decoder(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """ " target" as the decoder tokenizes a continuation (`tokenize_continuations`), right-padded."""
        tok = self.decoder_tokenizer
        seqs = [continuation_ids(tok, t)[: self.cfg.max_length] or [self.eos_id] for t in texts]
        return pad(seqs, tok.pad_token_id, "right", self.device)

    def target_token_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(..., T) decoder ids of targets -> (..., H): the mean of the decoder's input embeddings of
        each target's tokens. The embedding table is the (frozen) decoder's, so the features carry
        the tokens' identity in the very space the decoder reads and writes."""
        emb = self.decoder.lm.get_input_embeddings()(input_ids)  # (..., T, H)
        mask = attention_mask.unsqueeze(-1).to(emb.dtype)
        return (emb * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)

    def target_token_features_of(self, texts: list[str]) -> torch.Tensor:
        return self.target_token_features(**self.tokenize_targets_for_decoder(texts))

    def shares_scope_embedder(self, scope_model: str | None) -> bool:
        """True when the scope detector's sentence embedding is the frozen encoder backbone's own
        mean-pooled output (MiniLM-L6 for both), so one pass yields latents and scope vectors."""
        return (
            scope_model is not None
            and scope_model == self.cfg.encoder == "minilm-l6"
            and self.cfg.pooling == "mean"
            and self.cfg.encoder_trainable_layers == 0
        )

    def _pooled_episodes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, T) -> (B, N, E) pooled encoder outputs."""
        lead = input_ids.shape[:-1]
        p = self.encoder.pooled(
            input_ids.reshape(-1, input_ids.shape[-1]), attention_mask.reshape(-1, attention_mask.shape[-1])
        )
        return p.reshape(*lead, -1)

    def forward(
        self,
        enc_input_ids: torch.Tensor,
        enc_attention_mask: torch.Tensor,
        dec_input_ids: torch.Tensor,
        dec_attention_mask: torch.Tensor,
        beta: float = 0.0,
        key_input_ids: torch.Tensor | None = None,
        key_attention_mask: torch.Tensor | None = None,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        target_input_ids: torch.Tensor | None = None,
        target_attention_mask: torch.Tensor | None = None,
        target_dec_ids: torch.Tensor | None = None,
        target_dec_mask: torch.Tensor | None = None,
        dec_loss_weight: torch.Tensor | None = None,
    ) -> LarimarOutput:
        """Episodes: enc_* (B, N, Te), dec_* (B, N, Td) -> the weighted loss of paper Eq. 1.

        Plain episodes (the paper): each text is written, read back with its own latent and decoded.
        Keyed episodes (`key_*` and `query_*` given, `larimar.train.loop.edit_batch`): each fact is
        written as the inference memory writes it, key = latent of its prompt and value = latent of
        "prompt target" (+ target term), then read with the latent of a *query* (the prompt or
        another wording of it) and the decoder must continue that query with the target: the
        "write one text, answer another" objective. `dec_loss_weight` (B, N, Td) weighs each
        decoder token (the target tokens 1, the rest `context_weight`)."""
        if self.cfg.value_space != "latent":
            raise ValueError(
                f"value_space {self.cfg.value_space!r} reads facts with no new weights: train a latent model, "
                "then derive it (larimar derive --from MODEL --out DIR value_space=...)"
            )
        w = self.cfg.loss
        B, N, Td = dec_input_ids.shape
        if key_input_ids is None:
            z = self.encode(enc_input_ids, enc_attention_mask)  # (B, N, C)
            M = self.memory.write(z)  # (B, K, C)
            read = self.memory.read(z, M)  # z: (B, N, C)
            read_z, kl = read.z.reshape(B * N, -1), read.kl
        else:
            pooled_t = (
                self._pooled_episodes(target_input_ids, target_attention_mask) if target_input_ids is not None else None
            )
            tokens_t = (
                self.target_token_features(target_dec_ids, target_dec_mask) if target_dec_ids is not None else None
            )
            z = self.values_from_pooled(self._pooled_episodes(enc_input_ids, enc_attention_mask), pooled_t, tokens_t)
            keys = self.latents_from_pooled(self._pooled_episodes(key_input_ids, key_attention_mask))
            queries = self.latents_from_pooled(self._pooled_episodes(query_input_ids, query_attention_mask))
            read_z = keyed_read(keys, z, queries, self.cfg.ridge)
            if self.cfg.readout == "value_norm":  # each read-out at its own fact's value norm (perfect scope match)
                read_z = read_z * (z.norm(dim=-1, keepdim=True) / read_z.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            read_z, kl = read_z.reshape(B * N, -1), torch.zeros((), device=z.device)
            read = None
        if self.training and self.cfg.latent_scale_min < 1.0:
            lo = self.cfg.latent_scale_min
            read_z = read_z * (lo + (1 - lo) * torch.rand(B * N, 1, device=read_z.device, dtype=read_z.dtype))
        groups = {"reconstruction": read_z}
        if w.autoencoder > 0:
            groups["autoencoder"] = z.reshape(B * N, -1)
        if w.lm > 0 and self.cfg.decoder_trainable:  # with a frozen decoder the z = 0 term is a constant
            groups["lm"] = torch.zeros_like(groups["reconstruction"])
        latents = torch.cat(list(groups.values()))  # (G*B*N, C)
        ids = dec_input_ids.reshape(B * N, Td).repeat(len(groups), 1)
        mask = dec_attention_mask.reshape(B * N, Td).repeat(len(groups), 1)
        weight = mask[:, 1:].to(latents.dtype)
        if dec_loss_weight is not None:
            weight = weight * dec_loss_weight.reshape(B * N, Td).repeat(len(groups), 1)[:, 1:].to(latents.dtype)
        nll = -self.decoder.token_logprobs(ids, mask, latents).view(len(groups), B * N, Td - 1)
        weight = weight.view(len(groups), B * N, Td - 1)
        ce = (nll * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1e-6)  # (G,)
        terms = {name: ce[i] for i, name in enumerate(groups)}
        terms["kl"] = kl
        if w.latent_l2 > 0 and read is not None:
            terms["latent_l2"] = ((read.z - z) ** 2).sum(-1).mean()
        weights = {
            "reconstruction": w.reconstruction,
            "autoencoder": w.autoencoder,
            "lm": w.lm,
            "kl": beta,
            "latent_l2": w.latent_l2,
        }
        loss = sum(weights[k] * v for k, v in terms.items())
        return LarimarOutput(loss=loss, terms={k: float(v.detach()) for k, v in terms.items()})

    # -- decoding with given latents ----------------------------------------------------------

    @torch.no_grad()
    def generate_text(
        self, prompts: list[str], z: torch.Tensor, max_new_tokens: int | None = None, temperature: float = 0.0, **kwargs
    ) -> list[tuple[str, int]]:
        """Continue each prompt conditioned on its latent (rows of z; 0 = plain decoder) -> (text, new tokens).
        max_new_tokens: default the saved `generation_config.json`'s."""
        max_new_tokens = max_new_tokens or self.generation_config.max_new_tokens
        batch = self.tokenize_for_decoder(prompts, add_eos=False, padding_side="left")
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        out = self.decoder.generate(
            batch["input_ids"],
            batch["attention_mask"],
            z.to(self.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_id,
            **sampling,
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts = self.decoder_tokenizer.batch_decode(new, skip_special_tokens=True)
        lengths = (new != self.decoder_tokenizer.pad_token_id).sum(1).tolist()
        return [(t.strip(), int(n)) for t, n in zip(texts, lengths)]

    def tokenize_edits(
        self, prompts: list[str], targets: list[str], context_weight: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """ "<bos> prompt" + " target" + "<eos>" as `tokenize_continuations` cuts them (ROME's convention,
        the one evaluation scores), right-padded, and per-token loss weights: 1 on the target's tokens,
        `context_weight` elsewhere. A long prompt keeps its end (the part the target continues)."""
        tok = self.decoder_tokenizer
        seqs, weights = [], []
        for p, t in zip(prompts, targets):
            t_ids = continuation_ids(tok, t)[: self.cfg.max_length - 3]
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            p_ids = p_ids[max(0, len(p_ids) - (self.cfg.max_length - 2 - len(t_ids))) :]
            seqs.append([self.bos_id, *p_ids, *t_ids, self.eos_id])
            weights.append([context_weight] * (1 + len(p_ids)) + [1.0] * len(t_ids) + [context_weight])
        batch = pad(seqs, tok.pad_token_id, "right", self.device)
        w = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        for i, row in enumerate(weights):
            w[i, : len(row)] = torch.tensor(row)
        return batch, w.to(self.device)

    def tokenize_continuations(
        self, prompts: list[str], continuations: list[str]
    ) -> tuple[dict[str, torch.Tensor], list[tuple[int, list[int]]]]:
        """ "<bos> prompt" + " continuation", right-padded, and per pair (start index, continuation ids).

        Prompt and continuation are tokenized apart (ROME's convention), so the continuation's
        tokens are the same whatever the prompt.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        seqs, spans = [], []
        for p, c in zip(prompts, continuations):
            seq, start, c_ids = prompt_and_continuation(self.decoder_tokenizer, self.bos_id, p, c)
            if not c_ids:
                raise ValueError(f"continuation {c!r} is empty")
            seqs.append(seq)
            spans.append((start, c_ids))
        return pad(seqs, self.decoder_tokenizer.pad_token_id, "right", self.device), spans

    @torch.no_grad()
    def score_continuations(
        self, prompts: list[str], continuations: list[str], z: torch.Tensor
    ) -> list[tuple[float, float, int]]:
        """log p(" " + continuation | prompt, z) -> (sum of token log-probs, mean NLL, tokens) per pair.

        The pairs are left-padded so every continuation ends at the right edge; the vocabulary
        projection and log-softmax then run only over the last (longest continuation + 1)
        positions, not the whole sequence: (n, k, V) floats instead of (n, T, V)."""
        batch, spans = self.tokenize_continuations(prompts, continuations)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = mask.sum(1).tolist()
        batch = pad(
            [ids[i, :n].tolist() for i, n in enumerate(lengths)],
            self.decoder_tokenizer.pad_token_id,
            "left",
            self.device,
        )
        k = max(len(c) for _, c in spans) + 1
        logits = self.decoder(batch["input_ids"], batch["attention_mask"], z.to(self.device), logits_to_keep=k).float()
        logp = torch.log_softmax(logits[:, :-1], -1)  # position j predicts the token at T - k + j + 1
        out = []
        for i, (_, c_ids) in enumerate(spans):
            n = len(c_ids)
            rows = logp[i, k - 1 - n : k - 1]  # the n positions that predict the continuation
            token_lp = rows.gather(1, torch.tensor(c_ids, device=rows.device).unsqueeze(1)).squeeze(1)
            out.append((float(token_lp.sum()), float(-token_lp.mean()), n))
        return out

    # -- save / load --------------------------------------------------------------------------

    def _reloadable_prefixes(self) -> list[str]:
        """State-dict prefixes restored from the backbone registry instead of the weights file."""
        out = []
        if not backbones.is_random_init(self.cfg.encoder) and self.cfg.encoder_trainable_layers == 0:
            out.append("encoder.backbone.")
        if not backbones.is_random_init(self.cfg.decoder) and not self.cfg.decoder_trainable:
            out.append("decoder.lm.")
        return out

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """config.json + model.safetensors; `dtype` (e.g. torch.bfloat16) halves a shipped adapter."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skip = self._reloadable_prefixes()
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            if any(name.startswith(p) for p in skip) or tensor.data_ptr() in seen:
                continue  # frozen backbone, or a tied weight already written under another name
            seen.add(tensor.data_ptr())
            t = tensor.detach()
            state[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().cpu()
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, tmp, metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_NAME)
        return self.save_config(directory)

    def save_config(self, directory: str | Path) -> Path:
        """config.json and generation_config.json (the weights untouched)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": MODEL_TYPE,
            "architectures": ["LarimarModel"],
            "encoder": self.cfg.encoder,
            "decoder": self.cfg.decoder,
            "value_dim": self.value_dim,  # what a memory for this model stores per value (read_value_dim)
            "larimar": to_dict(self.cfg),
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        self.generation_config.save_pretrained(directory)
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> LarimarConfig:
        """The config of a saved model, without loading any weights."""
        directory = resolve_model_dir(directory)
        data = json.loads((directory / CONFIG_NAME).read_text())
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE or "larimar" not in data:
            raise ValueError(
                f"{directory / CONFIG_NAME} is not a Larimar config (model_type "
                f"{data.get('model_type')!r}, expected {MODEL_TYPE!r} with a 'larimar' section)"
            )
        return from_dict(LarimarConfig, data["larimar"])

    @staticmethod
    def read_value_dim(directory: str | Path) -> int:
        """V of a saved model without loading it (the server's store sizes memories with it)."""
        directory = resolve_model_dir(directory)
        data = json.loads((directory / CONFIG_NAME).read_text())
        cfg = LarimarModel.read_config(directory)
        if "value_dim" in data:
            return int(data["value_dim"])
        if cfg.value_space == "latent":  # configs saved before value_space existed
            return cfg.memory.latent_dim
        raise ValueError(f"{directory / CONFIG_NAME} has no value_dim; save the model again")

    def init_from(self, directory: str | Path, drop: tuple[str, ...] = ()) -> list[str]:
        """Start from a saved model's trained weights (fine-tuning): every tensor in its weights file
        is loaded, except those under the `drop` prefixes (modules this model replaces); returns the
        names this model has beyond them (new modules keep their init)."""
        directory = resolve_model_dir(directory)
        state = load_file(directory / WEIGHTS_NAME, device=str(self.device))
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{directory / WEIGHTS_NAME} has tensors this model lacks: {unexpected[:5]}")
        skip = self._reloadable_prefixes()
        tied = {n for n, _ in self.named_parameters(remove_duplicate=False)} - {n for n, _ in self.named_parameters()}
        return [m for m in missing if m not in tied and not any(m.startswith(p) for p in skip)]

    @classmethod
    def derive(cls, source: str | Path, overrides: list[str]) -> tuple["LarimarModel", list[str]]:
        """A model with `source`'s config changed by ``key=value`` overrides (``larimar.config``) and
        its trained weights where the new model still has them: e.g. ``value_space=decoder`` keeps
        the trained key encoder and replaces the latent slot. -> (model, names of dropped tensors).
        A new module the source lacks is refused: deriving never leaves weights untrained."""
        source = resolve_model_dir(source)
        data = apply_overrides(to_dict(cls.read_config(source)), overrides)
        model = cls(from_dict(LarimarConfig, data))
        have = set(model.state_dict())
        dropped = sorted(k for k in load_file(source / WEIGHTS_NAME) if k not in have)
        missing = model.init_from(source, drop=tuple(dropped))
        if missing:
            raise ValueError(f"the derived model has weights {source} cannot give it: {missing[:5]}")
        if (source / GENERATION_CONFIG_NAME).exists():
            model.generation_config = GenerationConfig.from_pretrained(source)
        return model.eval(), dropped

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "LarimarModel":
        directory = resolve_model_dir(directory)
        model = cls(cls.read_config(directory))
        state = load_file(directory / WEIGHTS_NAME, device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
        skip = model._reloadable_prefixes()
        missing = [m for m in missing if m not in tied and not any(m.startswith(p) for p in skip)]
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_NAME} does not match the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        if (directory / GENERATION_CONFIG_NAME).exists():
            model.generation_config = GenerationConfig.from_pretrained(directory)
        return model.to(map_location).eval()


def pad(seqs: list[list[int]], pad_id: int, side: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad token lists to one (B, T) tensor with its attention mask, on the left or right."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
