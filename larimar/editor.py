"""The user-facing editing API: memories you write facts into, forget them from, and query.

    editor = LarimarEditor.from_pretrained("path/to/model")
    memory = editor.create_memory(slots=512)
    ids = memory.edit(prompts=["The Eiffel Tower is in"], target_new=["Rome"])   # ids; EasyEdit metrics: larimar.evaluation.easyedit
    ids += memory.write(["Mira Tal teaches chemistry in Oslo."])               # free-text facts
    memory.generate(["Where is the Eiffel Tower? The Eiffel Tower is in"])
    memory.score(["The Eiffel Tower is in"], ["Rome"])
    memory.forget(ids[0])

Each memory is a `SequentialMemory` (paper Eqs. 2-4): writing and forgetting a fact is a
rank-one least-squares update, no gradient step. A fact's key is the encoding of its prompt
(or of its whole text for free-text facts) and its value the encoding of the full fact, as in
the paper's App. E; keys are addressed through a fixed random orthogonal reference memory, so
the key of a fact being forgotten is recomputed exactly. A scope detector (`larimar.scope`)
decides per query whether the memory is consulted at all; out-of-scope queries decode with
z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from larimar import memory_file
from larimar.fact_encoder import encode_facts, encode_queries
from larimar.facts import Fact, FactMemory, MemoryFullError, MemorySpec, UnknownFactError, make_fact
from larimar.memory import SequentialMemory
from larimar.model import DEFAULT_MODEL, LarimarModel
from larimar.scope import ScopeDetector, load_embedder

__all__ = ["EditableMemory", "Fact", "Generation", "LarimarEditor", "MemoryFullError", "Score", "UnknownFactError"]


@dataclass
class Generation:
    text: str  # generated continuation (without the prompt)
    in_scope: bool
    matched_fact: int | None
    similarity: float


@dataclass
class Score:
    logprob: float  # sum of log p(continuation tokens | prompt, memory)
    mean_nll: float  # mean per-token negative log-likelihood (the CounterFact criterion)
    tokens: int
    in_scope: bool


class EditableMemory:
    """One memory with the model that encodes for it. Create with `LarimarEditor.create_memory`."""

    def __init__(self, editor: "LarimarEditor", core: FactMemory):
        self.editor = editor
        self.core = core

    @property
    def model(self) -> LarimarModel:
        return self.editor.model

    @property
    def state(self) -> SequentialMemory:
        return self.core.state

    @property
    def facts(self) -> dict[int, Fact]:
        return self.core.facts

    @property
    def capacity(self) -> int:
        return self.core.capacity

    @property
    def scope(self) -> ScopeDetector | None:
        return self.core.scope

    @scope.setter
    def scope(self, value: ScopeDetector | None) -> None:
        self.core.scope = value

    # -- edits ----------------------------------------------------------------------------------

    def write(self, facts: str | list[str]) -> list[int]:
        """Write free-text facts (key = value = the fact's encoding). Returns their ids."""
        texts = [facts] if isinstance(facts, str) else list(facts)
        return self.write_facts([make_fact(text=t) for t in texts])

    def edit(
        self, prompts: str | list[str], target_new: str | list[str], subject: str | list[str] | None = None
    ) -> list[int]:
        """Make each prompt continue with its target. Returns the facts' ids. (EasyEdit's full
        `edit`, with rephrase/locality/portability inputs and its metrics: `larimar.evaluation.easyedit`.)

        subject (optional, one per prompt): what each edit is about; the scope detector then only
        consults the memory for queries that name it (`larimar.scope`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        targets = [target_new] if isinstance(target_new, str) else list(target_new)
        subjects = (
            [subject] if isinstance(subject, str) else list(subject) if subject is not None else [None] * len(prompts)
        )
        if not len(prompts) == len(targets) == len(subjects):
            raise ValueError(f"got {len(prompts)} prompts, {len(targets)} targets and {len(subjects)} subjects")
        return self.write_facts(
            [make_fact(prompt=p, target=t, subject=s) for p, t, s in zip(prompts, targets, subjects)]
        )

    def write_facts(self, facts: list[Fact]) -> list[int]:
        """Write `Fact`s (`larimar.facts.make_fact`: edits and free-text facts, mixed) in one update,
        as the server's ``POST /v1/memories/{id}/facts`` does with one request's facts."""
        self.core.check_room(len(facts))
        if not facts:
            return []
        scope = self.scope is not None
        enc = encode_facts(
            self.model, facts, scope, embed=self.scope.embed if scope else None, shared=self.editor.shared_scope
        )
        return self.core.write(facts, enc.keys, enc.values, enc.scope)

    def forget(self, fact_id: int) -> None:
        """Remove a fact (alpha = -1 with its original key and value)."""
        self.core.forget(fact_id)

    # -- queries --------------------------------------------------------------------------------

    def read(self, queries: list[str], use_scope: bool = True) -> tuple[torch.Tensor, list]:
        """Latents for decoding each query: the memory read-out, or 0 when out of scope."""
        scope = use_scope and self.scope is not None
        enc = encode_queries(
            self.model, queries, scope, embed=self.scope.embed if scope else None, shared=self.editor.shared_scope
        )
        matches = self.scope.match_vectors(enc.sentences, enc.owners, queries) if scope else None
        z = self.core.read(enc.latents, matches).to(self.model.device, self.model.memory.prior_mean.dtype)  # (n, C)
        return z, matches if matches is not None else [None] * len(queries)

    def generate(
        self,
        prompts: str | list[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        use_scope: bool = True,
        **kwargs,
    ) -> list[Generation]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        z, matches = self.read(prompts, use_scope)
        outs = self.model.generate_text(prompts, z, max_new_tokens, temperature, **kwargs)
        return [
            Generation(text, bool(z[i].abs().sum() > 0), m.fact_id if m else None, m.similarity if m else 1.0)
            for i, ((text, _), m) in enumerate(zip(outs, matches))
        ]

    def score(self, prompts: list[str], continuations: list[str], use_scope: bool = True) -> list[Score]:
        """log p(" " + continuation | prompt) under the memory; scope is decided per prompt."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        z, _ = self.read(prompts, use_scope)
        return [
            Score(lp, nll, n, bool(z[i].abs().sum() > 0))
            for i, (lp, nll, n) in enumerate(self.model.score_continuations(prompts, continuations, z))
        ]

    def __len__(self) -> int:
        return len(self.core)

    def save(self, path: str | Path) -> Path:
        """Write the whole memory to one file (`larimar.memory_file`); the server imports it with
        `POST /v1/memories/import` and `LarimarEditor.load_memory` reads it back."""
        return memory_file.save_file(
            self.core, path, encoder=self.model.cfg.encoder, scope_model=self.editor.scope_model
        )


class LarimarEditor:
    """A trained Larimar model plus the scope detector, from which memories are created."""

    def __init__(
        self,
        model: LarimarModel,
        scope_model: str | None = "minilm-l6",
        scope_threshold: float = 0.7,
        subject_threshold: float = 0.3,
        readout: str | None = None,
    ):
        """scope_model: sentence embedder for the scope detector (None: always consult the memory);
        scope_threshold / subject_threshold: see `ScopeDetector`; readout: override the model's
        trained read-out convention ("raw" or "value_norm", see `FactMemory`), for ablations."""
        self.model = model.eval()
        self.scope_model = scope_model
        self.scope_embedder = load_embedder(scope_model) if scope_model else None
        self.scope_threshold = scope_threshold
        self.subject_threshold = subject_threshold
        self.readout = readout or model.cfg.readout
        # The scope embedding is the frozen MiniLM encoder's normalised mean-pooled output: edits
        # and queries then take one encoder pass instead of two (the embedder stays for add/match).
        self.shared_scope = model.shares_scope_embedder(scope_model)

    @classmethod
    def from_pretrained(cls, directory: str = DEFAULT_MODEL, **kwargs) -> "LarimarEditor":
        """A saved model directory or a bundled name; by default the shipped Larimar-smol v3."""
        return cls(LarimarModel.from_pretrained(directory), **kwargs)

    def create_memory(
        self,
        slots: int | None = None,
        capacity: int | None = None,
        ridge: float = 1e-3,
        seed: int = 0,
        keys: str = "linear",
    ) -> EditableMemory:
        """A new empty memory with `slots` rows (default: the trained K); holds up to `capacity` facts (default K).

        keys: "linear" addressing (the paper; keys span at most C dimensions, so more than C facts
        blend) or "relu" random-feature addressing (up to K facts kept apart); see SequentialMemory."""
        spec = MemorySpec(slots or self.model.cfg.memory.slots, capacity, ridge, seed, keys)
        return EditableMemory(
            self,
            spec.build(
                self.model.cfg.memory.latent_dim, self._scope(), self.readout, self.model.device, self.model.value_dim
            ),
        )

    def _scope(self) -> ScopeDetector | None:
        return (
            ScopeDetector(self.scope_embedder, self.scope_threshold, self.subject_threshold)
            if self.scope_embedder
            else None
        )

    def load_memory(self, path: str | Path) -> EditableMemory:
        """A memory saved by `EditableMemory.save` or exported by the server
        (`GET /v1/memories/{id}/export`); refused if it was made with another encoder or scope model."""
        core = memory_file.load_file(
            path,
            self._scope(),
            latent_dim=self.model.cfg.memory.latent_dim,
            value_dim=self.model.value_dim,
            encoder=self.model.cfg.encoder,
            scope_model=self.scope_model,
        )
        core.readout = self.readout
        return EditableMemory(self, core)
