"""The editor interface every method the evaluation compares implements, Larimar's memory included.

`Editor` is what an experiment needs of a method: `edit` applies one edit on top of the ones
before it (sequential editing), `reset` restores the unedited state, `force` / `score` read
answers teacher-forced, `score_with_scope` also says which prompts the edits reach (all of them for
a weight edit), and `views` names the conditions an edited state is scored under ("edited" for a
baseline; Larimar scores its memory with and without the scope detector). Larimar's memory is
`larimar.evaluation.memory_editor.MemoryEditor`.

`LMEditor` is the base of the peer baselines, which edit a plain causal LM (the decoder Larimar is
built on; with z = 0 Larimar's decoder is exactly this LM). It tokenises with
`larimar.continuations`, as Larimar's model does, so every method is scored on the same token
sequences and the CounterFact / zsRE metric code applies unchanged. Subclasses override `prepare`
(one-time costs, reported apart from per-edit time), `edit`, `reset`, and, when they change how
the model is run rather than its weights, `prompt_text` (in-context editing) or `_logits`
(GRACE's codebook needs the query position).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from larimar.continuations import prompt_and_continuation, special_ids
from larimar.evaluation.forcing import Forced


@dataclass(frozen=True)
class EditRequest:
    prompt: str  # the prompt with the subject filled in
    target_new: str
    subject: str = ""  # "" or absent from the prompt: the last prompt token stands for it
    target_true: str = ""


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    spans: list[tuple[int, list[int]]]  # per row: index of the first continuation token, its ids
    prompt_last: torch.Tensor  # (B,) index of the last prompt token (the query position)


def layer_count(lm: PreTrainedModel) -> int:
    return lm.config.get_text_config().num_hidden_layers


def mlp_out(lm: PreTrainedModel, layer: int) -> tuple[nn.Module, bool]:
    """The MLP's output projection of one layer, and whether its weight is stored (in, out).

    Llama family: ``model.layers[l].mlp.down_proj`` (nn.Linear, weight (out, in)); its input is
    ROME's key k (the gated activation), its output the value v. GPT-2: ``transformer.h[l].mlp.c_proj``
    (Conv1D, weight (in, out)).
    """
    n = layer_count(lm)
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
    base = lm.base_model
    if hasattr(base, "layers"):
        return base.layers[layer].mlp.down_proj, False
    if hasattr(base, "h"):
        return base.h[layer].mlp.c_proj, True
    raise ValueError(f"{type(lm).__name__}: unsupported architecture (expected Llama-style layers or GPT-2 h)")


def subject_last_index(tok: PreTrainedTokenizerBase, prompt: str, subject: str) -> int:
    """Index (within the prompt's own tokens) of the subject's last token (ROME's ``subject_last``).

    As ROME's ``get_words_idxs_in_templates``: tokenise the text up to the end of the subject's
    last occurrence; the last of those tokens is the subject's. Without a subject in the prompt,
    the prompt's last token (ROME's ``last`` strategy).
    """
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    at = prompt.rfind(subject) if subject else -1
    if at < 0:
        return n - 1
    upto = len(tok(prompt[: at + len(subject)].rstrip(), add_special_tokens=False)["input_ids"])
    return min(max(upto - 1, 0), n - 1)


class Editor(ABC):
    """A knowledge editing method, as the evaluation drives it. Subclasses cite their paper."""

    name = "base"

    def prepare(self) -> dict[str, float]:
        """One-time work before the first edit (statistics, caches): {what: seconds}."""
        return {}

    @abstractmethod
    def edit(self, request: EditRequest) -> None:
        """Apply one edit on top of the previous ones."""

    @abstractmethod
    def reset(self) -> None:
        """Undo every edit: back to the unedited model."""

    @abstractmethod
    def force(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16) -> list[Forced]:
        """Teacher-forced log-probabilities and argmax of each answer after its prompt."""

    def score(self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16) -> list[float]:
        """Mean per-token NLL of each continuation (the CounterFact criterion)."""
        return [f.mean_nll for f in self.force(prompts, continuations, batch_size)]

    def score_with_scope(
        self, prompts: Sequence[str], continuations: Sequence[str], batch_size: int = 16
    ) -> list[tuple[float, bool]]:
        """(mean NLL, whether the edits reach the prompt) per pair. A weight edit reaches every
        prompt; an editor whose reach depends on the prompt (Larimar's scope detector) overrides
        this to decide both from one read."""
        return [(nll, True) for nll in self.score(prompts, continuations, batch_size)]

    def views(self) -> dict[str, "Editor"]:
        """The conditions an edited state is scored under, by name (one: "edited")."""
        return {"edited": self}


class LMEditor(Editor):
    """An editor of a plain causal LM's weights or prompts (the peer baselines)."""

    def __init__(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, bos_id: int | None = None):
        self.lm = lm.eval()
        self.tok = tokenizer
        self.bos_id = special_ids(tokenizer)[0] if bos_id is None else bos_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lm.requires_grad_(False)
        self.edits = 0

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def prompt_text(self, prompt: str) -> str:
        """The text the model is conditioned on for a query (in-context editing prepends facts)."""
        return prompt

    # -- scoring --------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], continuations: Sequence[str]) -> Encoded:
        """``<bos> prompt`` + ``" continuation"``, tokenised apart, right-padded."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        seqs, spans, last = [], [], []
        for p, c in zip(prompts, continuations):
            seq, start, c_ids = prompt_and_continuation(self.tok, self.bos_id, p, c)
            seqs.append(seq)
            spans.append((start, c_ids))
            last.append(start - 1)
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return Encoded(ids.to(self.device), mask.to(self.device), spans, torch.tensor(last, device=self.device))

    def _logits(self, enc: Encoded) -> torch.Tensor:
        return self.lm(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits

    @torch.no_grad()
    def force(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16) -> list[Forced]:
        """Teacher-forced log-probabilities and argmax of each answer after its prompt."""
        out = []
        for s in range(0, len(prompts), batch_size):
            p = [self.prompt_text(x) for x in prompts[s : s + batch_size]]
            a = list(answers[s : s + batch_size])
            enc = self.encode(p, a)
            logits = self._logits(enc).float()
            for i, (start, c_ids) in enumerate(enc.spans):
                if not c_ids:
                    raise ValueError(f"answer {a[i]!r} is empty")
                pos = torch.arange(start - 1, start - 1 + len(c_ids), device=logits.device)
                row = F.log_softmax(logits[i, pos], -1)
                tgt = torch.tensor(c_ids, device=logits.device)
                out.append(
                    Forced(list(c_ids), row.argmax(-1).tolist(), row[torch.arange(len(c_ids)), tgt].tolist(), True)
                )
        return out

    # -- helpers for weight editors -------------------------------------------------------------

    def target_loss(self, enc: Encoded, logits: torch.Tensor) -> torch.Tensor:
        """Mean over rows of the mean NLL of each row's continuation tokens."""
        losses = []
        for i, (start, c_ids) in enumerate(enc.spans):
            pos = torch.arange(start - 1, start - 1 + len(c_ids), device=logits.device)
            lp = F.log_softmax(logits[i, pos].float(), -1)
            losses.append(-lp[torch.arange(len(c_ids)), torch.tensor(c_ids, device=logits.device)].mean())
        return torch.stack(losses).mean()


class WeightSnapshot:
    """Copies of the parameters an editor changes, to restore the unedited model."""

    def __init__(self, params: dict[str, nn.Parameter]):
        self.params = params
        self.saved = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for k, p in self.params.items():
            p.copy_(self.saved[k])

    def items(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.params.items())


def timed_edit(editor: Editor, request: EditRequest) -> float:
    """Wall-clock seconds of one edit, the edit only (scoring is timed apart)."""
    t0 = time.perf_counter()
    editor.edit(request)
    return time.perf_counter() - t0
