"""A memory of facts without any model: RLS state, fact log, scope index, snapshot/restore.

`FactMemory` takes latents and scope embeddings computed elsewhere. The Python editing API
(`larimar.editor.EditableMemory`) wraps it with an encoder; the serving memory actor holds many
of them and receives the latents from the encoder deployment, so the component that serialises
edits never runs a neural network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from larimar.memory import SequentialMemory, reference_memory
from larimar.scope import ScopeDetector, ScopeMatch


class MemoryFullError(RuntimeError):
    """Writing would exceed the memory's fact capacity."""


class UnknownFactError(KeyError):
    """No fact with this id is stored in the memory."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass
class Fact:
    id: int
    text: str  # the full fact, as written and as embedded by the scope detector
    prompt: str | None = None  # for (prompt, target) edits
    target: str | None = None
    subject: str | None = None  # what the edit is about (EasyEdit's `subject`): when given, the scope
    # detector only lets through queries that name it (larimar.scope)


def make_fact(
    text: str | None = None, prompt: str | None = None, target: str | None = None, subject: str | None = None
) -> Fact:
    """Validate one fact: free text, or a (prompt, target) edit whose text is "prompt target". The one
    owner of what a fact is: the editor, the HTTP schema (`larimar.serving.schemas.FactIn`) and the
    serving store all call it."""
    if text is not None and (prompt is not None or target is not None):
        raise ValueError("give either text, or prompt and target, not both")
    if text is None and prompt is None and target is None:
        raise ValueError("a fact needs either text, or both prompt and target")
    if subject is not None and not subject.strip():
        raise ValueError("subject, when given, must be non-empty")
    subject = subject.strip() if subject else None
    if prompt is not None or target is not None:
        if prompt is None or target is None:
            raise ValueError("an edit needs both prompt and target (or text instead)")
        if not (prompt.strip() and target.strip()):
            raise ValueError("an edit needs a non-empty prompt and a non-empty target")
        return Fact(0, f"{prompt.strip()} {target.strip()}", prompt.strip(), target.strip(), subject)
    if not text or not text.strip():
        raise ValueError("facts must be non-empty text")
    return Fact(0, text.strip(), subject=subject)


def key_texts(facts: list[Fact]) -> list[str]:
    """What each fact's key encodes: its prompt for edits (queries look like prompts), else its text."""
    return [f.prompt or f.text for f in facts]


def target_texts(facts: list[Fact]) -> list[str]:
    """What a value's target term encodes (models with ``value_target``): the edit's target, else the text."""
    return [f.target or f.text for f in facts]


def scope_texts(facts: list[Fact]) -> tuple[list[int], list[str]]:
    """Texts the scope index embeds, and the position of the fact each belongs to."""
    owners, texts = [], []
    for i, f in enumerate(facts):
        for t in [f.prompt, f.text] if f.prompt else [f.text]:
            owners.append(i)
            texts.append(t)
    return owners, texts


READOUTS = ("raw", "value_norm")


@dataclass(frozen=True)
class MemorySpec:
    """Everything that shapes a new, empty memory. The Python editor (`LarimarEditor.create_memory`)
    and the serving store (a ``create`` log entry) both build memories from one of these, so a
    served memory can have every addressing option a Python one has, and the same spec gives
    the same memory bit for bit on both paths.

    slots: K; capacity: most facts held (default K); ridge: SequentialMemory's; seed: the fixed
    reference memory's; keys: "linear" addressing (the paper: keys span at most C dimensions) or
    "relu" random features (up to K facts kept apart); see `SequentialMemory`."""

    slots: int
    capacity: int | None = None
    ridge: float = 1e-3
    seed: int = 0
    keys: str = "linear"

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if self.keys not in ("linear", "relu"):
            raise ValueError(f"keys must be 'linear' or 'relu', got {self.keys!r}")

    def build(
        self,
        latent_dim: int,
        scope: ScopeDetector | None,
        readout: str = "raw",
        device: torch.device | str = "cpu",
        value_dim: int | None = None,
    ) -> "FactMemory":
        """latent_dim: the keys' width C; value_dim: the values' (default C; see `LarimarModel.value_dim`)."""
        ref = reference_memory(self.slots, latent_dim, self.seed).to(device)
        state = SequentialMemory(ref, ridge=self.ridge, keys=self.keys, value_dim=value_dim)
        return FactMemory(state, self.capacity or self.slots, scope, readout=readout)


@dataclass
class FactMemory:
    """`readout`: "raw" decodes the least-squares read-out as it is (the paper); "value_norm" rescales
    each read-out to the norm of the value latent of the fact the scope detector matched (the mean
    stored value norm without a match). With one fact stored a read-out is s * value, where s is
    the query's projection on the fact's key: a paraphrase only shrinks s, and the decoder then
    sees a weaker version of the same fact. The model's config says which convention it was
    trained with (`LarimarConfig.readout`)."""

    state: SequentialMemory
    capacity: int
    scope: ScopeDetector | None = None
    facts: dict[int, Fact] = field(default_factory=dict)
    latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # id -> (key, value)
    next_id: int = 1
    readout: str = "raw"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")

    def check_room(self, n: int) -> None:
        if len(self.facts) + n > self.capacity:
            raise MemoryFullError(
                f"memory holds {len(self.facts)} of {self.capacity} facts; writing {n} more "
                "would exceed it (forget some or create a larger memory)"
            )

    def write(
        self, facts: list[Fact], keys: torch.Tensor, values: torch.Tensor, scope_vectors: torch.Tensor | None = None
    ) -> list[int]:
        """Store facts with their (n, C) keys and (n, V) values; scope_vectors align with `scope_texts(facts)`."""
        self.check_room(len(facts))
        if not facts:
            return []
        if len(keys) != len(facts) or len(values) != len(facts):
            raise ValueError(f"{len(facts)} facts need as many keys and values, got {len(keys)} and {len(values)}")
        self.state.write(keys, values)
        ids = list(range(self.next_id, self.next_id + len(facts)))
        self.next_id += len(facts)
        for f, i, k, v in zip(facts, ids, keys, values):
            f.id = i
            self.facts[i] = f
            self.latents[i] = (k.detach().cpu(), v.detach().cpu())
        if self.scope is not None and scope_vectors is not None:
            owners, _ = scope_texts(facts)
            self.scope.add_vectors([ids[o] for o in owners], scope_vectors, [facts[o].subject for o in owners])
        return ids

    def forget(self, fact_id: int) -> None:
        """Remove a fact (alpha = -1 with its original key and value)."""
        if fact_id not in self.facts:
            raise UnknownFactError(f"no fact with id {fact_id} in this memory")
        k, v = self.latents.pop(fact_id)
        self.state.forget(k.unsqueeze(0), v.unsqueeze(0))
        del self.facts[fact_id]
        if self.scope is not None:
            self.scope.remove(fact_id)

    def read(self, queries: torch.Tensor, matches: list[ScopeMatch] | None = None) -> torch.Tensor:
        """(n, C) query latents -> (n, V) read-outs, zeroed where a scope match says out of scope."""
        z = self.state.read(queries)[0].float()
        if self.readout == "value_norm" and self.latents:
            matched = [
                m.fact_id if m is not None and m.fact_id in self.latents else None for m in (matches or [None] * len(z))
            ]
            mean_norm = (
                torch.stack([v for _, v in self.latents.values()]).float().norm(dim=-1).mean()
                if None in matched
                else None
            )  # only without a match: a pass over every stored value
            target = torch.stack(
                [self.latents[f][1].float().norm() if f is not None else mean_norm for f in matched]
            ).to(z.device)
            z = z * (target / z.norm(dim=-1).clamp_min(1e-12)).unsqueeze(1)
        if matches is not None:
            z = z * torch.tensor([m.in_scope for m in matches], dtype=z.dtype, device=z.device).unsqueeze(1)
        return z

    def __len__(self) -> int:
        return len(self.facts)

    # -- snapshot / restore -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "state": self.state.state_dict(),
            "capacity": self.capacity,
            "next_id": self.next_id,
            "readout": self.readout,
            "facts": [asdict(f) for f in self.facts.values()],
            "latents": {i: {"key": k, "value": v} for i, (k, v) in self.latents.items()},
            "scope": self.scope.state_dict() if self.scope is not None else None,
        }

    @classmethod
    def from_state_dict(cls, data: dict, scope: ScopeDetector | None = None) -> "FactMemory":
        mem = cls(
            SequentialMemory.from_state_dict(data["state"]),
            data["capacity"],
            scope,
            next_id=data["next_id"],
            readout=data.get("readout", "raw"),
        )
        mem.facts = {f["id"]: Fact(**f) for f in data["facts"]}
        # snapshots before value_dim stacked (key, value) into one (2, C) tensor
        mem.latents = {
            int(i): (kv["key"], kv["value"]) if isinstance(kv, dict) else (kv[0], kv[1])
            for i, kv in data["latents"].items()
        }
        if scope is not None and data["scope"] is not None:
            scope.load_state_dict(data["scope"])
        return mem
