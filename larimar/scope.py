"""External scope detector: does a query concern any fact stored in a memory?

Paper §4 and App. B (the "ESD"), reference ``PyriteSentenceScope.py::ScopeMemory`` in
``mode="embedder"``: embed stored facts and queries with all-MiniLM-L6-v2, take the
1-nearest-neighbour cosine similarity (the max over a query's sentences, so a distractor
sentence in front of a question does not hide it), and call the query in scope when it reaches
`threshold`. The reference's ``eval.sh`` uses distance 0.3, i.e. cosine >= 0.7. Out-of-scope
queries decode with z = 0, which is what keeps neighbourhood prompts unchanged (NS).

Subjects. An edit that names its subject (EasyEdit's ``subject``) is matched by it: a query is in
scope for such a fact only if it names the subject (case-insensitive, whole words) and its
similarity reaches the lower `subject_threshold`. Neighbourhood prompts share the relation and
the wording but not the subject, which is exactly what embeddings confuse. Measured with
MiniLM on CounterFact (`jobs/diagnostics/scope_stats.py`): at cosine 0.7 alone 91.7% of
the training file's paraphrases and 5.5% of its neighbourhood prompts are in scope; with the
subject rule and 0.3, 99.7% and 0.3%. Facts without a subject keep the plain threshold.
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


def embed_texts(embedder: "SentenceTransformer", texts: list[str]) -> torch.Tensor:
    """(n, D) unit-norm sentence embeddings on CPU: the one call every scope index, the serving
    encoder and IKE's demonstration retrieval make, so all of them embed alike."""
    if not texts:
        dim = embedder.get_sentence_embedding_dimension() or 0
        return torch.empty(0, dim)
    return embedder.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).cpu()


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

    def __init__(
        self,
        embedder: "str | SentenceTransformer | None" = "minilm-l6",
        threshold: float = 0.7,
        subject_threshold: float = 0.3,
    ):
        """embedder: a loaded SentenceTransformer (shared between memories), a name to load, or None.
        threshold: cosine at or above which a query is in scope for a fact without a subject;
        subject_threshold: the cosine a query that names a fact's subject needs."""
        for name, value in (("threshold", threshold), ("subject_threshold", subject_threshold)):
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"scope {name} is a cosine similarity in [-1, 1], got {value}")
        self.embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
        self.threshold = threshold
        self.subject_threshold = subject_threshold
        self._ids: list[int] = []
        self._subjects: list[str | None] = []  # per vector: its fact's subject, casefolded
        self._vectors: torch.Tensor | None = None  # (F, D) unit rows

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(n, D) unit-norm sentence embeddings."""
        if self.embedder is None:
            raise RuntimeError("this scope index has no embedder; pass embeddings (add_vectors / match_vectors)")
        return embed_texts(self.embedder, texts)

    def add(self, fact_ids: list[int], texts: list[str], subjects: list[str | None] | None = None) -> None:
        if len(fact_ids) != len(texts):
            raise ValueError("fact_ids and texts must have the same length")
        if texts:
            self.add_vectors(fact_ids, self.embed(texts), subjects)

    def add_vectors(self, fact_ids: list[int], vectors: torch.Tensor, subjects: list[str | None] | None = None) -> None:
        subjects = subjects if subjects is not None else [None] * len(fact_ids)
        if not len(fact_ids) == len(vectors) == len(subjects):
            raise ValueError("fact_ids, vectors and subjects must have the same length")
        vectors = vectors.detach().float().cpu()
        self._vectors = vectors if self._vectors is None else torch.cat([self._vectors, vectors])
        self._ids.extend(fact_ids)
        self._subjects.extend(_fold(s) if s else None for s in subjects)

    def remove(self, fact_id: int) -> None:
        keep = [i for i, f in enumerate(self._ids) if f != fact_id]
        if self._vectors is not None:
            self._vectors = self._vectors[keep]
        self._ids = [self._ids[i] for i in keep]
        self._subjects = [self._subjects[i] for i in keep]

    def __len__(self) -> int:
        return len(set(self._ids))

    def match(self, queries: list[str]) -> list[ScopeMatch]:
        sentences, owners = query_sentences(queries)
        if not self._ids:
            return [ScopeMatch(False, None, float("-inf")) for _ in queries]
        return self.match_vectors(self.embed(sentences), owners, queries)

    def match_vectors(self, vectors: torch.Tensor, owners: list[int], queries: list[str]) -> list[ScopeMatch]:
        """vectors (S, D): embeddings of the queries' sentences; owners[s]: the query sentence s belongs to.

        Per query, the fact that decides is the in-scope one of highest similarity (a fact with a
        subject counts only if the query names it), else the most similar one, reported out of scope."""
        out = [ScopeMatch(False, None, float("-inf")) for _ in queries]
        if not self._ids:
            return out
        sims = vectors.float().cpu() @ self._vectors.T  # (S, F)
        per_query = torch.full((len(queries), sims.shape[1]), float("-inf"))
        for s, qi in enumerate(owners):
            per_query[qi] = torch.maximum(per_query[qi], sims[s])
        named = torch.ones(len(queries), len(self._ids), dtype=torch.bool)  # only facts with a subject can fail
        with_subject = [j for j, subj in enumerate(self._subjects) if subj is not None]
        if with_subject:
            folded = [_fold(q) for q in queries]
            for j in with_subject:
                named[:, j] = torch.tensor([_names(self._subjects[j], q) for q in folded])
        needed = torch.tensor([self.threshold if subj is None else self.subject_threshold for subj in self._subjects])
        in_scope = named & (per_query >= needed)  # (Q, F)
        for qi in range(len(queries)):
            row = per_query[qi]
            if bool(in_scope[qi].any()):
                j = int(torch.where(in_scope[qi], row, torch.full_like(row, float("-inf"))).argmax())
                out[qi] = ScopeMatch(True, self._ids[j], float(row[j]))
            else:
                j = int(row.argmax())
                out[qi] = ScopeMatch(False, self._ids[j], float(row[j]))
        return out

    def state_dict(self) -> dict:
        return {
            "ids": list(self._ids),
            "vectors": self._vectors,
            "subjects": list(self._subjects),
            "threshold": self.threshold,
            "subject_threshold": self.subject_threshold,
        }

    def load_state_dict(self, state: dict) -> None:
        self._ids = list(state["ids"])
        self._vectors = state["vectors"]
        self._subjects = list(state.get("subjects", [None] * len(self._ids)))
        self.threshold = state["threshold"]
        self.subject_threshold = state.get("subject_threshold", self.subject_threshold)


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _names(subject: str, query: str) -> bool:
    """Does the (casefolded) query name the (casefolded) subject as whole words?"""
    start = query.find(subject)
    while start >= 0:
        end = start + len(subject)
        if (start == 0 or not query[start - 1].isalnum()) and (end == len(query) or not query[end].isalnum()):
            return True
        start = query.find(subject, start + 1)
    return False


def query_sentences(queries: list[str]) -> tuple[list[str], list[int]]:
    """Split queries into sentences: (sentences, index of the query each came from)."""
    sentences, owners = [], []
    for qi, q in enumerate(queries):
        for s in split_sentences(q):
            sentences.append(s)
            owners.append(qi)
    return sentences, owners
