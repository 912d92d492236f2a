"""Metric functions on plain numbers (NLLs, token ids), so each is testable on hand-built cases.

CounterFact (ROME protocol, Meng et al. 2022; Larimar Table 2): a prompt is a success when the
edited model gives the new target a lower mean per-token NLL than the true target; on
neighbourhood prompts success means the *true* target still wins. The magnitude ("M") is the
probability gap exp(-NLL_new) - exp(-NLL_true), sign-flipped on neighbourhood prompts so that
larger is better there too (ROME's NM). A case's score is the mean over its prompts; a metric is
the mean over cases (ROME's order of averaging).

zsRE and recall (EasyEdit / ROME zsRE protocol; Larimar Tables 3, 4, 12): teacher-forced argmax
token accuracy of the answer, its exact match (every token right), and locality as the fraction
of tokens whose argmax prediction is unchanged from the unedited model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def rome_success(nll_new: Sequence[float], nll_true: Sequence[float], neighborhood: bool = False) -> list[bool]:
    """Per prompt: does the new target win (or, on neighbourhood prompts, does the true one)?"""
    if len(nll_new) != len(nll_true):
        raise ValueError(f"got {len(nll_new)} new-target NLLs but {len(nll_true)} true-target NLLs")
    if neighborhood:
        return [t < n for n, t in zip(nll_new, nll_true)]
    return [t > n for n, t in zip(nll_new, nll_true)]


def probability_gap(nll_new: Sequence[float], nll_true: Sequence[float], neighborhood: bool = False) -> list[float]:
    """Per prompt: exp(-NLL_new) - exp(-NLL_true), or its negation on neighbourhood prompts."""
    sign = -1.0 if neighborhood else 1.0
    return [sign * (math.exp(-n) - math.exp(-t)) for n, t in zip(nll_new, nll_true)]


def mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def case_mean(per_case: Sequence[Sequence[float]]) -> float | None:
    """Mean over cases of each case's mean; cases without prompts are skipped (None if none has any)."""
    return mean([m for m in (mean(v) for v in per_case) if m is not None])


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """Harmonic mean of rates in [0, 1]: 0 if any is 0, None if any is missing."""
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def token_accuracy(pred_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Fraction of target tokens the teacher-forced argmax predicts."""
    if len(pred_ids) != len(target_ids) or not target_ids:
        raise ValueError(f"need equal, non-empty predictions and targets, got {len(pred_ids)} and {len(target_ids)}")
    return sum(int(p == t) for p, t in zip(pred_ids, target_ids)) / len(target_ids)


def exact_match(pred_ids: Sequence[int], target_ids: Sequence[int]) -> bool:
    return token_accuracy(pred_ids, target_ids) == 1.0


def unchanged_fraction(pred_ids: Sequence[int], reference_ids: Sequence[int]) -> float:
    """Locality: fraction of positions whose argmax equals the unedited model's."""
    return token_accuracy(pred_ids, reference_ids)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
