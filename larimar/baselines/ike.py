"""IKE: In-context Knowledge Editing (Zheng, Li, Dong, Fan, Wu, Xu, Chang, EMNLP 2023, "Can We
Edit Factual Knowledge by In-Context Learning?", arXiv 2305.12740).

No weight changes: the new fact is written into the prompt. Every query is preceded by k
demonstrations and then the fact itself,

    New Fact: {demo prompt} {demo target_new}
    Prompt: {copy | paraphrase | neighbourhood prompt} {its answer}
    ...
    New Fact: {edit prompt} {target_new}
    Prompt: {query}

Demonstrations come from other CounterFact records (never the edited one), retrieved by the
cosine similarity of their "New Fact" line to the edit's in all-MiniLM-L6-v2 space (IKE's
retriever), and cycle IKE's three kinds: copy (the rewrite prompt, new target), update (a
paraphrase, new target) and retain (a neighbourhood prompt, its true answer), so the model
sees when to use the fact and when to ignore it. IKE uses 32 demonstrations on GPT-J; a 135M
decoder's context and a CPU budget call for fewer (``demos``, default 4).

An edit stores the fact (and embeds it for retrieval). With several stored facts (sequential
editing) the query's context holds the ``facts_in_context`` stored facts nearest to the query
(the same MiniLM retrieval); with one fact this is exactly IKE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from larimar.baselines.base import EditRequest, LMEditor
from larimar.scope import embed_texts
from larimar.sources import resolve_source


@dataclass
class IKEConfig:
    demos: int = 4
    demo_pool: str = "../shared/data/counterfact/dev_canonical_100.json"  # ROME-format CounterFact; "" = none
    facts_in_context: int = 1
    embedder: str = "minilm-l6"

    def __post_init__(self) -> None:
        if self.demos < 0 or self.facts_in_context < 1:
            raise ValueError("ike: demos >= 0 and facts_in_context >= 1 are required")


@dataclass(frozen=True)
class Demo:
    fact: str  # "prompt target_new"
    kinds: tuple[str, str, str]  # copy, update and retain lines "Prompt: ... answer"
    subject: str


def load_demo_pool(path: str) -> list[Demo]:
    resolved = resolve_source(path)
    records = json.loads(open(resolved, encoding="utf-8").read())
    out = []
    for r in records:
        rw = r.get("requested_rewrite")
        if not rw:
            raise ValueError(f"ike: demo_pool {path} must hold ROME-format CounterFact records (requested_rewrite)")
        prompt = rw["prompt"].format(rw["subject"])
        new, true = rw["target_new"]["str"], rw["target_true"]["str"]
        para = (r.get("paraphrase_prompts") or [prompt])[0].split(". ")[-1]  # drop CounterFact's distractor prefix
        neigh = (r.get("neighborhood_prompts") or [prompt])[0]
        out.append(Demo(f"{prompt} {new}", (f"{prompt} {new}", f"{para} {new}", f"{neigh} {true}"), rw["subject"]))
    return out


class IKEEditor(LMEditor):
    name = "ike"

    def __init__(self, lm, tokenizer, bos_id=None, cfg: IKEConfig | None = None):
        super().__init__(lm, tokenizer, bos_id)
        self.cfg = cfg or IKEConfig()
        self.pool: list[Demo] = []
        self.pool_vecs: torch.Tensor | None = None
        self.embedder = None
        self.facts: list[EditRequest] = []
        self.fact_vecs: list[torch.Tensor] = []
        self.contexts: list[str] = []  # the demonstrations block of each stored fact

    def prepare(self) -> dict[str, float]:
        import time

        if self.embedder is not None:
            return {}
        t0 = time.perf_counter()
        from larimar.scope import load_embedder  # sentence-transformers: only when IKE runs

        self.embedder = load_embedder(self.cfg.embedder)
        if self.cfg.demos and self.cfg.demo_pool:
            self.pool = load_demo_pool(self.cfg.demo_pool)
            self.pool_vecs = self._embed([d.fact for d in self.pool])
        return {"embedder_and_demo_pool": time.perf_counter() - t0}

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return embed_texts(self.embedder, texts)

    def edit(self, request: EditRequest) -> None:
        if self.embedder is None:
            self.prepare()
        fact = f"{request.prompt} {request.target_new}"
        vec = self._embed([fact])[0]
        lines = []
        if self.pool:
            sims = self.pool_vecs @ vec
            order = [int(i) for i in sims.argsort(descending=True)]
            # never the edited fact itself, nor another record about the same subject
            picks = [i for i in order if self.pool[i].fact != fact and self.pool[i].subject != request.subject]
            for rank, i in enumerate(picks[: self.cfg.demos]):
                d = self.pool[i]
                lines.append(f"New Fact: {d.fact}\nPrompt: {d.kinds[rank % 3]}\n\n")
        self.facts.append(request)
        self.fact_vecs.append(vec)
        self.contexts.append("".join(reversed(lines)))  # most similar demonstration nearest the query
        self.edits += 1

    def prompt_text(self, prompt: str) -> str:
        if not self.facts:
            return prompt
        if len(self.facts) == 1:
            chosen = [0]
        else:
            sims = torch.stack(self.fact_vecs) @ self._embed([prompt])[0]
            chosen = [int(i) for i in sims.argsort(descending=True)[: self.cfg.facts_in_context]]
        demos = self.contexts[chosen[0]]
        facts = "".join(f"New Fact: {self.facts[i].prompt} {self.facts[i].target_new}\n" for i in reversed(chosen))
        return f"{demos}{facts}Prompt: {prompt}"

    def reset(self) -> None:
        self.facts, self.fact_vecs, self.contexts = [], [], []
        self.edits = 0
