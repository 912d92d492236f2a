"""Batched Moore-Penrose pseudo-inverses for the episodic memory.

Two solvers, chosen by `PinvConfig.method`:

- ``"exact"``: SVD-based `torch.linalg.pinv` with a relative cut-off `rtol`. A sane cut-off
  matters for rank-deficient memories (numpy's 1e-15 default gave 0.7% read error in the
  reference notes).
- ``"ben_cohen"``: the Ben-Israel-Cohen (Newton-Schulz) iteration that the reference code
  uses (IBM/larimar ``modules/memory.py::GPM._approx_pseudo_inverse``):
  X0 = a * A^T, X <- 2X - X A X. It is differentiable through matrix products only, and with
  few steps it leaves directions with small singular values under-inverted (an implicit
  regulariser the reference relies on). It converges only when a * sigma_max(A)^2 < 2; outside
  that range it diverges, so we check the condition up front and either raise
  `PinvDivergenceError` or fall back to the exact solver (`on_divergence`).

Shapes: A is (..., m, n) and the result (..., n, m); leading dims are independent batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


class PinvDivergenceError(ArithmeticError):
    """The Ben-Israel-Cohen iteration would diverge for this matrix and step size."""


@dataclass
class PinvConfig:
    method: Literal["exact", "ben_cohen"] = "exact"
    steps: int = 15  # Ben-Cohen iterations; the reference config uses 15
    alpha: float | None = 5e-4  # Ben-Cohen X0 scale; None = 1/||A||_F^2 (always convergent)
    rtol: float | None = None  # exact solver cut-off relative to sigma_max; None = torch default
    on_divergence: Literal["raise", "exact"] = "raise"

    def __post_init__(self) -> None:
        if self.method not in ("exact", "ben_cohen"):
            raise ValueError(f"pinv.method must be 'exact' or 'ben_cohen', got {self.method!r}")
        if self.on_divergence not in ("raise", "exact"):
            raise ValueError(f"pinv.on_divergence must be 'raise' or 'exact', got {self.on_divergence!r}")
        if self.steps < 1:
            raise ValueError(f"pinv.steps must be >= 1, got {self.steps}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"pinv.alpha must be positive or null, got {self.alpha}")


def exact_pinv(A: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    if rtol is None:
        return torch.linalg.pinv(A)
    return torch.linalg.pinv(A, rtol=rtol)


def spectral_norm_sq(A: torch.Tensor) -> torch.Tensor:
    """sigma_max(A)^2 per batch element, shape (...)."""
    return torch.linalg.matrix_norm(A.detach(), ord=2) ** 2


def ben_cohen_pinv(A: torch.Tensor, steps: int, alpha: float | None) -> torch.Tensor:
    """Newton-Schulz iteration; caller guarantees convergence (see `pinv`)."""
    At = A.transpose(-1, -2)
    if alpha is None:
        fro_sq = (A.detach() ** 2).sum(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
        X = At / fro_sq  # a = 1/||A||_F^2 <= 1/sigma_max^2: inside the convergence region
    else:
        X = alpha * At
    for _ in range(steps):
        X = 2 * X - X @ A @ X
    return X


def pinv(A: torch.Tensor, cfg: PinvConfig) -> torch.Tensor:
    if cfg.method == "exact":
        return exact_pinv(A, cfg.rtol)
    if cfg.alpha is not None:
        # Cheap sufficient test first (sigma_max <= ||A||_F); an SVD only when it is inconclusive.
        fro_sq = (A.detach() ** 2).sum(dim=(-2, -1))
        if bool((cfg.alpha * fro_sq >= 2).any()):
            diverging = cfg.alpha * spectral_norm_sq(A) >= 2
            if bool(diverging.any()):
                if cfg.on_divergence == "exact":
                    return exact_pinv(A, cfg.rtol)
                worst = float(spectral_norm_sq(A).max().sqrt())
                raise PinvDivergenceError(
                    f"Ben-Cohen pseudo-inverse diverges: alpha * sigma_max^2 = {cfg.alpha * worst**2:.3g} >= 2 "
                    f"(alpha={cfg.alpha}, sigma_max={worst:.3g}); lower pinv.alpha, set it to null for automatic "
                    "scaling, or set pinv.on_divergence='exact'"
                )
    X = ben_cohen_pinv(A, cfg.steps, cfg.alpha)
    if not bool(torch.isfinite(X).all()):
        if cfg.on_divergence == "exact":
            return exact_pinv(A, cfg.rtol)
        raise PinvDivergenceError("Ben-Cohen pseudo-inverse produced non-finite values")
    return X
