"""Larimar's memory behind the `Editor` interface the baselines implement.

With it every comparative experiment (`counterfact`, `zsre`, `sequential`) runs one protocol for
every method: reset, score unedited, edit, score each view. An edit is a write into the memory
(with the case's subject, unless --no-subjects), reset starts a fresh memory, and the edited state
is scored under two views: "scope" (the memory is read only for prompts the scope detector puts
in scope; the paper's Larimar) and "no_scope" (read for every prompt; the paper's Table 8).
Scores come from the same calls the editing API makes (`EditableMemory.score`, the memory's read
plus teacher forcing), so the numbers are the product's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from larimar.baselines.base import EditRequest, Editor
from larimar.editor import EditableMemory
from larimar.evaluation.forcing import Forced, force_with_memory


class MemoryEditor(Editor):
    """`new_memory` makes the empty memory every reset starts from; `use_subjects` passes each
    request's subject with its edit; `use_scope` is this view's read rule."""

    name = "larimar"

    def __init__(
        self,
        new_memory: Callable[[], EditableMemory],
        use_subjects: bool = True,
        use_scope: bool = True,
        _shared: list | None = None,
    ):
        self.new_memory = new_memory
        self.use_subjects = use_subjects
        self.use_scope = use_scope
        self._box = _shared if _shared is not None else [None]  # the memory, shared with the other views

    @property
    def memory(self) -> EditableMemory:
        if self._box[0] is None:
            self._box[0] = self.new_memory()
        return self._box[0]

    def edit(self, request: EditRequest) -> None:
        subject = [request.subject] if self.use_subjects and request.subject else None
        self.memory.edit([request.prompt], [request.target_new], subject=subject)

    def reset(self) -> None:
        self._box[0] = self.new_memory()

    def _reads_scope(self) -> bool:
        return self.use_scope and self.memory.scope is not None

    def force(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> list[Forced]:
        return force_with_memory(self.memory, list(prompts), list(answers), self._reads_scope(), batch_size)

    def score(self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 32) -> list[float]:
        return [nll for nll, _ in self.score_with_scope(prompts, continuations, batch_size)]

    def score_with_scope(
        self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 32
    ) -> list[tuple[float, bool]]:
        """`EditableMemory.score` in batches: the read that decides scope also gives the latents."""
        out = []
        for s in range(0, len(prompts), batch_size):
            out += [
                (x.mean_nll, x.in_scope)
                for x in self.memory.score(
                    list(prompts[s : s + batch_size]),
                    list(continuations[s : s + batch_size]),
                    use_scope=self._reads_scope(),
                )
            ]
        return out

    def view(self, use_scope: bool) -> "MemoryEditor":
        """Another read rule on the same memory."""
        return MemoryEditor(self.new_memory, self.use_subjects, use_scope, _shared=self._box)

    def views(self) -> dict[str, Editor]:
        both = {"scope": self.view(True), "no_scope": self.view(False)}
        return both if self.memory.scope is not None else {"no_scope": both["no_scope"]}
