"""Fact-style text the project generates itself, for the demo and tests (no downloads).

Every fact is "<person> <relation> <object> ." over small closed vocabularies, so a tiny model
learns to reconstruct them in a minute of CPU training, and every fact has a natural prompt
("<person> <relation>") and target ("<object>") for editing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PEOPLE = [
    "alice",
    "bob",
    "carol",
    "david",
    "emma",
    "frank",
    "grace",
    "henry",
    "irene",
    "jack",
    "kate",
    "leo",
    "maria",
    "nina",
    "oscar",
    "paul",
    "quinn",
    "rosa",
    "sam",
    "tina",
    "victor",
    "wendy",
    "yusuf",
    "zoe",
]
RELATIONS = {
    "lives in": [
        "paris",
        "tokyo",
        "lima",
        "cairo",
        "oslo",
        "delhi",
        "rome",
        "berlin",
        "sydney",
        "toronto",
        "madrid",
        "seoul",
    ],
    "works as a": ["doctor", "pilot", "teacher", "chef", "farmer", "lawyer", "painter", "nurse", "baker", "singer"],
    "plays the": ["piano", "guitar", "violin", "drums", "flute", "cello", "trumpet", "harp"],
    "likes to eat": ["apples", "rice", "bread", "cheese", "soup", "fish", "pasta", "cake", "noodles"],
    "drives a": ["red car", "blue truck", "green bike", "yellow bus", "black van", "white boat"],
}


@dataclass(frozen=True)
class SyntheticFact:
    person: str
    relation: str
    obj: str

    @property
    def prompt(self) -> str:
        return f"{self.person} {self.relation}"

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.obj} ."


def sample_facts(n: int, seed: int = 0) -> list[SyntheticFact]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        relation = rng.choice(list(RELATIONS))
        out.append(SyntheticFact(rng.choice(PEOPLE), relation, rng.choice(RELATIONS[relation])))
    return out


def distinct_facts(n: int, seed: int = 0) -> list[SyntheticFact]:
    """n facts with pairwise distinct prompts (one object per person and relation)."""
    rng = random.Random(seed)
    prompts = [(p, r) for p in PEOPLE for r in RELATIONS]
    if n > len(prompts):
        raise ValueError(f"at most {len(prompts)} distinct synthetic facts exist, asked for {n}")
    return [SyntheticFact(p, r, rng.choice(RELATIONS[r])) for p, r in rng.sample(prompts, n)]
