"""The one place where texts become what a memory stores and what a query reads with.

An edit or a free-text fact becomes (key, value, scope vectors); a query becomes (latent, scope
vectors of its sentences). The Python editor (`larimar.editor`) and the serving encoder
deployment (`larimar/serving/app.py`) both call these functions, so keys, values and the scope embedding
can never drift apart between the two paths.

- key: the latent of the fact's prompt (its text for free-text facts): queries look like prompts
  (paper App. E, "keys from prompts").
- value: the latent of the whole fact "prompt target" (for `value_space: decoder` models, the
  decoder's input embeddings of its tokens instead), plus, for models trained with
  ``value_target``, a second head on the latent of the target alone (the object is one word of
  the sentence, and mean pooling dilutes it; the edit API knows it, so the value can carry it).
- scope vectors: the frozen MiniLM's normalised mean-pooled output of the texts the scope index
  keeps (`larimar.facts.scope_texts`); when the model's encoder is that frozen MiniLM
  (`LarimarModel.shares_scope_embedder`), one encoder pass yields latents and scope vectors.
  Otherwise `embed` (a sentence embedder) computes them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch

from larimar.facts import Fact, key_texts, scope_texts, target_texts
from larimar.model import LarimarModel
from larimar.scope import query_sentences

Embed = Callable[[list[str]], torch.Tensor]  # texts -> (n, D) unit-norm sentence embeddings


@dataclass
class EncodedFacts:
    keys: torch.Tensor  # (n, C)
    values: torch.Tensor  # (n, V): V = C, or the decoder-space width (`LarimarModel.value_dim`)
    scope: torch.Tensor | None  # (len(scope_texts(facts)), D) on CPU, None when scope is off


@dataclass
class EncodedQueries:
    latents: torch.Tensor  # (q, C)
    sentences: torch.Tensor | None  # (S, D) on CPU: one row per query sentence, None when scope is off
    owners: list[int]  # query index of each sentence
    texts: list[str]  # the queries, for the scope detector's subject rule


def _pooled(model: LarimarModel, texts: list[str], pool: Executor | None = None) -> dict[str, torch.Tensor]:
    """Unique texts -> their pooled encoder outputs, one encoder pass (its chunks on `pool`'s
    threads when given: `LarimarModel.encode_pooled`)."""
    unique = list(dict.fromkeys(texts))
    pooled = model.encode_pooled(unique, pool=pool)
    return {t: pooled[i] for i, t in enumerate(unique)}


@torch.no_grad()
def encode_facts(
    model: LarimarModel,
    facts: list[Fact],
    scope: bool,
    embed: Embed | None = None,
    shared: bool = False,
    pool: Executor | None = None,
) -> EncodedFacts:
    """Keys, values and (when `scope`) scope vectors of `facts`; `shared`: scope vectors come from
    the encoder pass itself (see the module docstring), else from `embed`; `pool`: threads for the
    encoder pass's chunks (`LarimarModel.encode_pooled`)."""
    if not facts:
        C = model.cfg.memory.latent_dim
        return EncodedFacts(torch.empty(0, C), torch.empty(0, model.value_dim), torch.empty(0, 0) if scope else None)
    _, scope_text = scope_texts(facts)
    keys_t, values_t = key_texts(facts), [f.text for f in facts]
    space = model.cfg.value_space
    targets_t = target_texts(facts) if model.cfg.value_target else []
    encoded = keys_t + ([] if space == "decoder" else values_t) + targets_t + (scope_text if scope and shared else [])
    pooled = _pooled(model, encoded, pool)
    stack = lambda texts: torch.stack([pooled[t] for t in texts])  # noqa: E731
    keys = model.latents_from_pooled(stack(keys_t))
    parts = []
    if space != "decoder":
        tokens = model.target_token_features_of(target_texts(facts)) if model.cfg.value_target_tokens else None
        parts.append(model.values_from_pooled(stack(values_t), stack(targets_t) if targets_t else None, tokens))
    if space != "latent":
        parts.append(model.decoder_space_values(values_t).to(keys.dtype))
    values = torch.cat(parts, 1)  # latent+decoder: [latent | rows], as EmbeddingPrefixDecoder splits it
    vectors = None
    if scope:
        if shared:
            vectors = torch.nn.functional.normalize(stack(scope_text).float(), dim=-1).cpu()
        elif embed is not None:
            vectors = embed(scope_text).cpu()
        else:
            raise ValueError("scope vectors need either the shared MiniLM encoder or a sentence embedder")
    return EncodedFacts(keys, values, vectors)


@torch.no_grad()
def encode_queries(
    model: LarimarModel,
    queries: list[str],
    scope: bool,
    embed: Embed | None = None,
    shared: bool = False,
    pool: Executor | None = None,
) -> EncodedQueries:
    """Query latents and (when `scope`) the scope vectors of every query sentence."""
    sentences, owners = query_sentences(queries)
    pooled = _pooled(model, queries + (sentences if scope and shared else []), pool)
    latents = model.latents_from_pooled(torch.stack([pooled[q] for q in queries]))
    vectors = None
    if scope:
        if shared:
            vectors = torch.nn.functional.normalize(torch.stack([pooled[s] for s in sentences]).float(), dim=-1).cpu()
        elif embed is not None:
            vectors = embed(sentences).cpu()
        else:
            raise ValueError("scope vectors need either the shared MiniLM encoder or a sentence embedder")
    return EncodedQueries(latents, vectors, owners, list(queries))
