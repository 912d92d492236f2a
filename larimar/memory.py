"""Larimar's episodic memory: the Generative Pseudo-inverse Memory and its sequential form.

References: Das et al., "Larimar: Large Language Models with Episodic Memory Control",
ICML 2024 (arXiv 2403.11901), Algorithm 1 and Eqs. 2-4; Pham et al., "Generative Pseudo-Inverse
Memory", ICLR 2022; reference code IBM/larimar ``modules/memory.py::GPM``.

Dimensions used throughout: B independent memories (batch), N latents per episode, K memory
slots, C latent size.

`EpisodicMemory` is the trainable module (Algorithm 1): one-shot least-squares write
M = W0^+ Z with W0 = Z M0^+, read W = Z M^+ (+ noise), generate W ~ N(0, I).

`SequentialMemory` is the inference-time editor (Eqs. 2-4): recursive least squares over
(key, value) pairs, C_i = C_{i-1} + alpha W^T W and M_i = M_{i-1} + alpha C_i^{-1} W^T (Z - W M_{i-1}),
with alpha = +1 to write and -1 to forget. It keeps P = C^{-1} up to date with the Woodbury
identity, so one single-fact edit costs O(K^2 + KC), never an O(K^3) inverse. Keys are
W = Z_key (M_ref)^+ for a fixed reference memory M_ref, so a forgotten fact's key is recomputed
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from larimar.pinv import PinvConfig, pinv


@dataclass
class MemoryConfig:
    slots: int = 512  # K; the paper's models use 512
    latent_dim: int = 768  # C; must equal the encoder head's output size
    observation_noise_std: float = 1e-6  # sigma_xi, added to Z before a write (training only)
    read_noise_std: float = 0.0  # sigma_w when fixed; initial value when learned (training only)
    learn_read_noise: bool = False  # learn a per-slot log sigma_w instead of a fixed sigma_w
    identity_init: bool = True  # M0 = eye(K, C), as the reference; else N(0, 1/C)
    pinv: PinvConfig = field(default_factory=PinvConfig)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"memory.slots must be >= 1, got {self.slots}")
        if self.latent_dim < 1:
            raise ValueError(f"memory.latent_dim must be >= 1, got {self.latent_dim}")
        for name in ("observation_noise_std", "read_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"memory.{name} must be >= 0, got {getattr(self, name)}")
        if self.learn_read_noise and self.read_noise_std <= 0:
            raise ValueError("memory.learn_read_noise needs memory.read_noise_std > 0 as its initial value")


@dataclass
class MemoryRead:
    z: torch.Tensor  # (B, N, C) read-out latents
    w_mean: torch.Tensor  # (B, N, K) addressing weights before noise
    kl: torch.Tensor  # () KL(q(W) || N(0, I)), summed over K, mean over B and N


class EpisodicMemory(nn.Module):
    """Algorithm 1 of the paper, batched over B independent memories."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        K, C = cfg.slots, cfg.latent_dim
        prior = torch.eye(K, C) if cfg.identity_init else torch.randn(K, C) / math.sqrt(C)
        self.prior_mean = nn.Parameter(prior)  # M0 (K, C), learned
        if cfg.learn_read_noise:
            self.read_log_std = nn.Parameter(torch.full((K,), math.log(cfg.read_noise_std)))
        else:
            self.register_buffer("read_log_std", None)

    def _read_std(self, dtype: torch.dtype) -> torch.Tensor | float:
        if self.read_log_std is not None:
            return self.read_log_std.exp().to(dtype)  # (K,)
        return self.cfg.read_noise_std

    def _noisy(self, Z: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg.observation_noise_std > 0:
            return Z + self.cfg.observation_noise_std * torch.randn_like(Z)
        return Z

    def write(self, Z: torch.Tensor) -> torch.Tensor:
        """Z (B, N, C) -> M (B, K, C), the min-norm least-squares memory for the episode."""
        Z_xi = self._noisy(Z)
        W0 = Z_xi @ pinv(self.prior_mean.to(Z.dtype), self.cfg.pinv)  # (B, N, C) @ (C, K) -> (B, N, K)
        return pinv(W0, self.cfg.pinv) @ Z_xi  # (B, K, N) @ (B, N, C) -> (B, K, C)

    def read(self, Z: torch.Tensor, M: torch.Tensor) -> MemoryRead:
        """Z (B, N, C), M (B, K, C) -> read-out latents and the KL of the addressing weights."""
        w_mean = Z @ pinv(M, self.cfg.pinv)  # (B, N, C) @ (B, C, K) -> (B, N, K)
        std = self._read_std(Z.dtype)
        noisy = self.training and (self.read_log_std is not None or self.cfg.read_noise_std > 0)
        w = w_mean + std * torch.randn_like(w_mean) if noisy else w_mean
        # KL(N(w_mean, std^2) || N(0, 1)) per slot. With a fixed std of 0 (a point mass) only the
        # mean-dependent part 0.5 * w_mean^2 is kept: the rest is an infinite constant.
        if self.read_log_std is not None or self.cfg.read_noise_std > 0:
            var = torch.as_tensor(std, dtype=Z.dtype, device=Z.device) ** 2
            kl = 0.5 * (var + w_mean**2 - 1 - torch.log(var))
        else:
            kl = 0.5 * w_mean**2
        return MemoryRead(z=w @ M, w_mean=w_mean, kl=kl.sum(-1).mean())  # (B, N, K) @ (B, K, C)

    def generate(self, M: torch.Tensor, n: int) -> torch.Tensor:
        """Sample n latents per memory: W ~ N(0, I), Z = W M -> (B, n, C)."""
        W = torch.randn(M.shape[0], n, M.shape[1], dtype=M.dtype, device=M.device)
        return W @ M


def keyed_read(Z_key: torch.Tensor, Z_value: torch.Tensor, Z_query: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """What an inference memory reads for each query after its episode's facts were written: (B, N, C)
    keys, values and queries -> (B, N, C) read-outs, differentiably (the training objective).

    `SequentialMemory` with "linear" keys, an orthonormal reference memory (K >= C) and zero
    initial state holds M = W^T (W W^T + ridge I)^{-1} Z_value with W = Z_key M_ref^T, and reads
    w_q M. Because M_ref^T preserves inner products, that is
        read(q) = (q Z_key^T) (Z_key Z_key^T + ridge I)^{-1} Z_value,
    an N x N solve instead of K x K, and it no longer depends on M_ref."""
    N = Z_key.shape[-2]
    gram = Z_key @ Z_key.transpose(-1, -2) + ridge * torch.eye(N, dtype=Z_key.dtype, device=Z_key.device)  # (B, N, N)
    return (Z_query @ Z_key.transpose(-1, -2)) @ torch.linalg.solve(gram, Z_value)


class SequentialMemory:
    """Recursive least-squares memory for write / forget at inference time (paper Eqs. 2-4).

    The state minimises  sum_j ||z_j - w_j M||^2 + ridge * ||M - M_init||^2  over the facts
    currently stored, where w_j = key_j @ pinv(M_ref). The ridge term keeps C = ridge*I + W^T W
    invertible before K independent keys exist; forgetting subtracts a fact's rank-one term
    exactly, so write-then-forget returns to the state without that fact.

    Addressing (``keys``): "linear" is the paper's w = z pinv(M_ref); its keys span at most C
    dimensions, so beyond C facts (384 for MiniLM latents) the least-squares solution must blend
    them. "relu" uses w = relu(z pinv(M_ref) * sqrt(K) / |z|), fixed random features of the key's
    direction: K independent keys fit exactly, and nearby keys (paraphrases) still get nearby
    weights (the arc-cosine kernel), so N up to K facts are recalled apart.

    Runs in float64 by default: thousands of rank-one updates of P = C^{-1} accumulate
    round-off in float32.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        *,
        batch: int = 1,
        ridge: float = 1e-3,
        initial: torch.Tensor | None = None,
        pinv_cfg: PinvConfig | None = None,
        dtype: torch.dtype = torch.float64,
        keys: str = "linear",
        value_dim: int | None = None,
    ):
        """value_dim: width of the stored values (default C, the key latents' width). A model whose
        values live in the decoder's embedding space (`LarimarConfig.value_space`) stores wider
        values than its keys: addressing is unchanged, only M gets more columns."""
        if reference.ndim != 2:
            raise ValueError(f"reference memory must be (K, C), got shape {tuple(reference.shape)}")
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0 to keep C invertible, got {ridge}")
        if keys not in ("linear", "relu"):
            raise ValueError(f"memory keys must be 'linear' or 'relu', got {keys!r}")
        K, C = reference.shape
        V = C if value_dim is None else value_dim
        if V < 1:
            raise ValueError(f"value_dim must be >= 1, got {V}")
        self.K, self.C, self.V, self.ridge, self.dtype, self.key_kind = K, C, V, ridge, dtype, keys
        self.reference = reference.detach().to(dtype)
        self.key_map = pinv(self.reference, pinv_cfg or PinvConfig()).to(dtype)  # (C, K)
        dev = reference.device
        self.P = torch.eye(K, dtype=dtype, device=dev).expand(batch, K, K).clone() / ridge  # (B, K, K) = C^{-1}
        if initial is None:
            self.M = torch.zeros(batch, K, V, dtype=dtype, device=dev)
        else:
            self.M = initial.detach().to(dtype).expand(batch, K, V).clone()
        self.count = torch.zeros(batch, dtype=torch.long, device=dev)  # facts currently stored
        self._updates = 0

    @property
    def batch(self) -> int:
        return self.M.shape[0]

    def keys(self, Z_key: torch.Tensor) -> torch.Tensor:
        """(B, n, C) or (n, C) key latents -> (.., n, K) addressing weights."""
        W = Z_key.to(self.dtype) @ self.key_map
        if self.key_kind == "relu":
            norm = Z_key.to(self.dtype).norm(dim=-1, keepdim=True).clamp_min(1e-12)
            W = torch.relu(W * (self.K**0.5) / norm)
        return W

    def _batched(self, X: torch.Tensor, width: int | None = None, what: str = "keys") -> torch.Tensor:
        width = self.C if width is None else width
        if X.ndim == 2:
            X = X.unsqueeze(0).expand(self.batch, *X.shape)
        if X.ndim != 3 or X.shape[0] != self.batch or X.shape[-1] != width:
            raise ValueError(
                f"expected {what} of shape (n, {width}) or ({self.batch}, n, {width}), got {tuple(X.shape)}"
            )
        return X.to(self.dtype)

    def update(self, Z_key: torch.Tensor, Z_value: torch.Tensor, alpha: float) -> None:
        """Add (alpha=+1) or remove (alpha=-1) n facts in every memory of the batch at once."""
        if alpha not in (1, -1, 1.0, -1.0):
            raise ValueError(f"alpha must be +1 (write) or -1 (forget), got {alpha}")
        Zk, Zv = self._batched(Z_key), self._batched(Z_value, self.V, "values")
        if Zk.shape[:-1] != Zv.shape[:-1]:
            raise ValueError(f"keys {tuple(Zk.shape)} and values {tuple(Zv.shape)} must be as many")
        n = Zk.shape[1]
        if n == 0:
            return
        W = self.keys(Zk)  # (B, n, C) -> (B, n, K)
        PWt = self.P @ W.transpose(-1, -2)  # (B, K, n)
        # Woodbury: (C + a W^T W)^{-1} = P - P W^T S^{-1} W P with S = a^{-1} I + W P W^T, a = +-1.
        S = alpha * torch.eye(n, dtype=self.dtype, device=W.device) + W @ PWt  # (B, n, n)
        S_inv_WP = torch.linalg.solve(S, PWt.transpose(-1, -2))  # (B, n, K)
        # The new P times W^T simplifies to a * P W^T S^{-1}: no second (K, K) product needed.
        gain = alpha * S_inv_WP.transpose(-1, -2)  # (B, K, n) = C_i^{-1} W^T
        residual = Zv - W @ self.M  # (B, n, V)
        # In place: at K = 2048, P is 32 MB per memory and fresh allocations dominate the cost.
        self.P.baddbmm_(PWt, S_inv_WP, alpha=-1.0)
        self.M.baddbmm_(gain, residual, alpha=float(alpha))  # M_i = M + a C_i^{-1} W^T (Z - W M)
        self.count += int(alpha) * n
        self._updates += 1
        if self._updates % 256 == 0:  # re-symmetrise P against round-off drift, rarely (a full pass)
            self.P.copy_(0.5 * (self.P + self.P.transpose(-1, -2)))

    def write(self, Z_key: torch.Tensor, Z_value: torch.Tensor | None = None) -> None:
        """Z_value defaults to Z_key (an autoassociative memory; needs V == C)."""
        self.update(Z_key, Z_key if Z_value is None else Z_value, +1)

    def forget(self, Z_key: torch.Tensor, Z_value: torch.Tensor | None = None) -> None:
        self.update(Z_key, Z_key if Z_value is None else Z_value, -1)

    def read(self, Z_query: torch.Tensor) -> torch.Tensor:
        """(B, n, C) or (n, C) queries -> (B, n, V) read-outs, addressed through the reference keys."""
        return self.keys(self._batched(Z_query, what="queries")) @ self.M  # (B, n, K) @ (B, K, V)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "reference": self.reference,
            "P": self.P,
            "M": self.M,
            "count": self.count,
            "ridge": torch.tensor(self.ridge, dtype=torch.float64),
            "relu_keys": torch.tensor(self.key_kind == "relu"),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], pinv_cfg: PinvConfig | None = None) -> "SequentialMemory":
        mem = cls(
            state["reference"],
            batch=state["M"].shape[0],
            ridge=float(state["ridge"]),
            pinv_cfg=pinv_cfg,
            dtype=state["M"].dtype,
            keys="relu" if bool(state.get("relu_keys", False)) else "linear",
            value_dim=state["M"].shape[-1],
        )
        mem.P, mem.M, mem.count = state["P"].clone(), state["M"].clone(), state["count"].clone()
        return mem


def reference_memory(slots: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    """A fixed random (K, C) matrix with orthonormal columns (or rows when K < C).

    Orthonormality makes pinv(M_ref) = M_ref^T, so key addressing preserves the latents' inner
    products instead of distorting them as an ill-conditioned Gaussian matrix would.
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(max(slots, latent_dim), min(slots, latent_dim), generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(A)  # orthonormal columns
    return Q if slots >= latent_dim else Q.T
