"""Requests' texts -> what the memory actor stores or reads with, for a batch of requests at a time.

The serving side of `larimar.fact_encoder`, in a plain class the encoder deployment wraps (and a
test or a script can run without Ray). Each request gets its own answer: a batch's texts share
one encoder pass, and the answer is split back per request ({"error"} for a request that is
refused, the rest still encoded).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from larimar.fact_encoder import encode_facts, encode_queries
from larimar.facts import Fact, make_fact, scope_texts
from larimar.model import LarimarModel
from larimar.precision import compile_encoder, default_encoder_precision, set_encoder_precision
from larimar.scope import embed_texts, load_embedder
from larimar.serving.errors import ApiError, refusal


class TextEncoding:
    """The model's encoder side in one process: fact batches (writes) and query batches (reads)."""

    def __init__(
        self,
        model_dir: str,
        scope_model: str | None,
        threads: int | None = None,
        precision: str | None = None,
        compiled: bool = False,
        workers: int = 1,
    ):
        """compiled: `larimar.precision.compile_encoder` (ServeSettings.encoder_compile), warmed up
        here, so that the process is compiled before it takes its first request. workers: threads
        a batch's encoder chunks run on (ServeSettings.encoder_workers; `LarimarModel.encode_pooled`)."""
        if threads:
            torch.set_num_threads(threads)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="encode") if workers > 1 else None
        self.model = LarimarModel.from_pretrained(model_dir)
        # resolved here, on the process's own CPU (ServeSettings.encoder_precision)
        set_encoder_precision(self.model.encoder, precision or default_encoder_precision())
        if compiled:
            compile_encoder(self.model.encoder)
            with torch.no_grad():  # one text and two: sizes 0 and 1 get graphs of their own
                self.model.encode_pooled(["warm up"])
                self.model.encode_pooled(["warm up the encoder", "with two texts of different lengths"])
        # With the MiniLM encoder frozen, its pooled output is the scope embedding: one pass, no embedder.
        self.shared = self.model.shares_scope_embedder(scope_model)
        self.embedder = load_embedder(scope_model) if scope_model and not self.shared else None
        self.scope_on = scope_model is not None

    def _embed(self, texts: list[str]) -> torch.Tensor:
        if self.embedder is None or not texts:
            return torch.empty(len(texts), 0)
        return embed_texts(self.embedder, texts)

    def _too_long(self, facts: list[Fact]) -> dict | None:
        """A fact longer than the encoder reads (max_length tokens) is refused, never silently cut:
        its whole text ("prompt target" for an edit) is what becomes its value."""
        limit = self.model.cfg.max_length - 2  # [CLS] ... [SEP]
        for i, f in enumerate(facts):
            n = len(self.model.encoder_tokenizer(f.text, add_special_tokens=False)["input_ids"])
            if n > limit:
                field = "text" if f.prompt is None else "prompt"
                return refusal(
                    ApiError(
                        413,
                        f"facts[{i}] has {n} encoder tokens; the limit is {limit}",
                        param=f"facts[{i}].{field}",
                        code="fact_too_long",
                    )
                )
        return None

    def facts(self, requests: list[list[dict]]) -> list[dict]:
        """The facts of several write requests -> {"keys", "values", "scope"} or {"error"} per
        request. The request schema checked the fields' types; `make_fact` (once per fact here,
        and again by the store, which owns what may enter the log) checks what a fact is."""
        facts = [
            [make_fact(f.get("text"), f.get("prompt"), f.get("target"), f.get("subject")) for f in r] for r in requests
        ]
        refused = [self._too_long(r) for r in facts]
        ok = [r for r, why in zip(facts, refused) if why is None]
        done = iter(self._encode_checked(ok) if ok else [])
        return [why if why is not None else next(done) for why in refused]

    def _encode_checked(self, per_request: list[list[Fact]]) -> list[dict]:
        flat = [f for facts in per_request for f in facts]
        enc = encode_facts(self.model, flat, self.scope_on, embed=self._embed, shared=self.shared, pool=self.pool)
        scope_owner, _ = scope_texts(flat)
        vectors = enc.scope if enc.scope is not None else torch.empty(len(scope_owner), 0)
        out, start = [], 0
        for facts in per_request:
            rows = [i for i, o in enumerate(scope_owner) if start <= o < start + len(facts)]
            out.append(
                {
                    "keys": enc.keys[start : start + len(facts)],
                    "values": enc.values[start : start + len(facts)],
                    "scope": vectors[rows],
                }
            )
            start += len(facts)
        return out

    def queries(self, requests: list[list[str]]) -> list[dict]:
        """Several requests' queries -> {"z", "sentences", "owners", "texts"} per request: latents
        and, with a scope model, the query sentences' scope vectors (owners re-based on the
        request's own queries); without one (``scope_model: null``) "sentences" is None and the
        memory is read for every query, as the Python editor does without a scope detector."""
        flat = [q for r in requests for q in r]
        enc = encode_queries(self.model, flat, self.scope_on, embed=self._embed, shared=self.shared, pool=self.pool)
        out, start = [], 0
        for r in requests:
            rows = [i for i, o in enumerate(enc.owners) if start <= o < start + len(r)]
            out.append(
                {
                    "z": enc.latents[start : start + len(r)],
                    "sentences": enc.sentences[rows] if enc.sentences is not None else None,
                    "owners": [enc.owners[i] - start for i in rows],
                    "texts": enc.texts[start : start + len(r)],
                }
            )
            start += len(r)
        return out
