"""Teacher-forced scoring of (prompt, answer) pairs under given latents.

The decoder sees ``<bos> prompt " answer"`` with latent z (the memory read-out, or 0 for the
unedited decoder); for every answer token we keep its log-probability and the argmax
prediction at that position. This is the quantity behind every metric here: mean NLL
(CounterFact), argmax token accuracy (zsRE, EasyEdit's ``test_prediction_acc``) and locality.
Tokenisation matches `EditableMemory.score`: prompt and ``" " + answer`` are tokenised apart,
so the answer's tokens are the same whatever the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from larimar.editor import EditableMemory
from larimar.evaluation import metrics
from larimar.model import LarimarModel


@dataclass
class Forced:
    target_ids: list[int]
    pred_ids: list[int]  # argmax prediction at each answer position
    logprobs: list[float]  # log p(answer token | prefix, z)
    in_scope: bool  # whether z was nonzero (the memory was consulted)

    @property
    def mean_nll(self) -> float:
        return -sum(self.logprobs) / len(self.logprobs)

    @property
    def token_acc(self) -> float:
        return metrics.token_accuracy(self.pred_ids, self.target_ids)

    @property
    def exact(self) -> bool:
        return metrics.exact_match(self.pred_ids, self.target_ids)


def teacher_force(model: LarimarModel, prompts: list[str], answers: list[str], z: torch.Tensor) -> list[Forced]:
    """prompts, answers: n strings; z (n, C) -> one `Forced` per pair (a single decoder pass)."""
    if not (len(prompts) == len(answers) == z.shape[0]):
        raise ValueError(f"got {len(prompts)} prompts, {len(answers)} answers and {z.shape[0]} latents")
    batch, spans = model.tokenize_continuations(prompts, answers)
    with torch.no_grad():
        logits = model.decoder(batch["input_ids"], batch["attention_mask"], z.to(model.device))[
            :, :-1
        ].float()  # (n, T-1, V)
        logp = F.log_softmax(logits, -1)
        pred = logits.argmax(-1)  # (n, T-1)
    out = []
    for i, (start, a_ids) in enumerate(spans):
        pos = torch.arange(start - 1, start - 1 + len(a_ids))  # position t predicts token t+1
        lp = logp[i, pos, torch.tensor(a_ids)]
        out.append(Forced(list(a_ids), pred[i, pos].tolist(), lp.tolist(), bool(z[i].abs().sum() > 0)))
    return out


def force_with_memory(
    memory: EditableMemory | None,
    prompts: list[str],
    answers: list[str],
    use_scope: bool = False,
    batch_size: int = 32,
    model: LarimarModel | None = None,
) -> list[Forced]:
    """Read each prompt from `memory` (honouring scope when asked) and teacher-force its answer.

    memory=None scores the unedited decoder (z = 0); pass `model` then.
    """
    model = memory.model if memory is not None else model
    out = []
    for s in range(0, len(prompts), batch_size):
        p, a = prompts[s : s + batch_size], answers[s : s + batch_size]
        if memory is None:
            z = torch.zeros(len(p), model.value_dim, device=model.device)
        else:
            z, _ = memory.read(p, use_scope)
        out.extend(teacher_force(model, p, a, z))
    return out


def recall(
    memory: EditableMemory, facts, use_scope: bool = False, batch_size: int = 32, rephrase: bool = False
) -> list[Forced]:
    """Teacher-forced recall of each fact's target from its prompt (or its first rephrase)."""
    prompts = [f.rephrases[0] if rephrase else f.prompt for f in facts]
    return force_with_memory(memory, prompts, [f.target for f in facts], use_scope, batch_size)


def recall_rates(forced: list[Forced]) -> dict[str, float | None]:
    """Mean token accuracy and exact-match rate over facts (None when there are none)."""
    return {
        "token_acc": metrics.mean([f.token_acc for f in forced]),
        "exact": metrics.mean([float(f.exact) for f in forced]),
    }
