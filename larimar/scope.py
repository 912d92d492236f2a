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
    """A sentence-embedding index of stored facts, keyed by fact id."""

    def __init__(self, embedder: "str | SentenceTransformer" = "minilm-l6", threshold: float = 0.7):
        """embedder: a loaded SentenceTransformer (shared between memories) or a name to load."""
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"scope threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
        self.threshold = threshold
        self._ids: list[int] = []
        self._vectors = torch.empty(0, self.embedder.get_embedding_dimension())

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(n, D) unit-norm sentence embeddings."""
        return self.embedder.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).cpu()

    def add(self, fact_ids: list[int], texts: list[str]) -> None:
        if len(fact_ids) != len(texts):
            raise ValueError("fact_ids and texts must have the same length")
        if texts:
            self._vectors = torch.cat([self._vectors, self.embed(texts)])
            self._ids.extend(fact_ids)

    def remove(self, fact_id: int) -> None:
        keep = [i for i, f in enumerate(self._ids) if f != fact_id]
        self._vectors = self._vectors[keep]
        self._ids = [self._ids[i] for i in keep]

    def __len__(self) -> int:
        return len(self._ids)

    def match(self, queries: list[str]) -> list[ScopeMatch]:
        if not self._ids:
            return [ScopeMatch(False, None, float("-inf")) for _ in queries]
        sentences, owner = [], []
        for qi, q in enumerate(queries):
            for s in split_sentences(q):
                sentences.append(s)
                owner.append(qi)
        sims = self.embed(sentences) @ self._vectors.T  # (S, F)
        best_sim, best_fact = sims.max(dim=1)
        out = [ScopeMatch(False, None, float("-inf")) for _ in queries]
        for s, qi in enumerate(owner):
            if float(best_sim[s]) > out[qi].similarity:
                sim = float(best_sim[s])
                out[qi] = ScopeMatch(sim >= self.threshold, self._ids[int(best_fact[s])], sim)
        return out
