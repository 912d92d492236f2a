"""External scope detector: does a query concern any fact stored in a memory?

Paper §4 and App. B (the "ESD"), reference ``PyriteSentenceScope.py::ScopeMemory`` in
``mode="embedder"``: embed stored facts and queries with all-MiniLM-L6-v2, take the
1-nearest-neighbour cosine similarity (the max over a query's sentences, so a distractor
sentence in front of a question does not hide it), and call the query in scope when it reaches
`threshold`. The reference's ``eval.sh`` uses distance 0.3, i.e. cosine >= 0.7. Out-of-scope
queries decode with z = 0, which is what keeps neighbourhood prompts unchanged (NS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch

from larimar import backbones

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p] or [text]


def load_embedder(name: str = "minilm-l6", device: str = "cpu") -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer  # heavy import, only when used

    path = backbones.minilm_dir() if name == "minilm-l6" else name
    return SentenceTransformer(str(path), device=device)


@dataclass
class ScopeMatch:
    in_scope: bool
    fact_id: int | None  # nearest stored fact, even when out of scope (None if nothing is stored)
    similarity: float  # its cosine similarity


class ScopeDetector:
    """A sentence-embedding index of stored facts, keyed by fact id (an id may own several vectors).

    With an embedder it embeds texts itself; without one (embedder=None) it is a pure vector
    index, which is how the serving memory actor uses it: embeddings are computed elsewhere.
    """

    def __init__(self, embedder: "str | SentenceTransformer | None" = "minilm-l6", threshold: float = 0.7):
        """embedder: a loaded SentenceTransformer (shared between memories), a name to load, or None."""
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"scope threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
        self.threshold = threshold
        self._ids: list[int] = []
        self._vectors: torch.Tensor | None = None  # (F, D) unit rows

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(n, D) unit-norm sentence embeddings."""
        if self.embedder is None:
            raise RuntimeError("this scope index has no embedder; pass embeddings (add_vectors / match_vectors)")
        return self.embedder.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).cpu()

    def add(self, fact_ids: list[int], texts: list[str]) -> None:
        if len(fact_ids) != len(texts):
            raise ValueError("fact_ids and texts must have the same length")
        if texts:
            self.add_vectors(fact_ids, self.embed(texts))

    def add_vectors(self, fact_ids: list[int], vectors: torch.Tensor) -> None:
        if len(fact_ids) != len(vectors):
            raise ValueError("fact_ids and vectors must have the same length")
        vectors = vectors.detach().float().cpu()
        self._vectors = vectors if self._vectors is None else torch.cat([self._vectors, vectors])
        self._ids.extend(fact_ids)

    def remove(self, fact_id: int) -> None:
        keep = [i for i, f in enumerate(self._ids) if f != fact_id]
        if self._vectors is not None:
            self._vectors = self._vectors[keep]
        self._ids = [self._ids[i] for i in keep]

    def __len__(self) -> int:
        return len(set(self._ids))

    def match(self, queries: list[str]) -> list[ScopeMatch]:
        sentences, owners = query_sentences(queries)
        if not self._ids:
            return [ScopeMatch(False, None, float("-inf")) for _ in queries]
        return self.match_vectors(self.embed(sentences), owners, len(queries))

    def match_vectors(self, vectors: torch.Tensor, owners: list[int], n_queries: int) -> list[ScopeMatch]:
        """vectors (S, D): embeddings of the queries' sentences; owners[s]: the query sentence s belongs to."""
        out = [ScopeMatch(False, None, float("-inf")) for _ in range(n_queries)]
        if not self._ids:
            return out
        sims = vectors.float().cpu() @ self._vectors.T  # (S, F)
        best_sim, best_fact = sims.max(dim=1)
        for s, qi in enumerate(owners):
            if float(best_sim[s]) > out[qi].similarity:
                sim = float(best_sim[s])
                out[qi] = ScopeMatch(sim >= self.threshold, self._ids[int(best_fact[s])], sim)
        return out

    def state_dict(self) -> dict:
        return {"ids": list(self._ids), "vectors": self._vectors, "threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self._ids = list(state["ids"])
        self._vectors = state["vectors"]
        self.threshold = state["threshold"]


def query_sentences(queries: list[str]) -> tuple[list[str], list[int]]:
    """Split queries into sentences: (sentences, index of the query each came from)."""
    sentences, owners = [], []
    for qi, q in enumerate(queries):
        for s in split_sentences(q):
            sentences.append(s)
            owners.append(qi)
    return sentences, owners
