"""Property tests of the memory math (larimar/memory.py, larimar/pinv.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar.memory import reference_memory
from larimar.memory import EpisodicMemory, MemoryConfig, SequentialMemory
from larimar.pinv import PinvConfig, PinvDivergenceError, pinv

SETTINGS = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """The identities are checked to 1e-8: run this module in float64, then restore the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_memory(K: int, C: int) -> EpisodicMemory:
    mem = EpisodicMemory(MemoryConfig(slots=K, latent_dim=C, observation_noise_std=0.0))
    return mem.double().eval()


def projector(Z: torch.Tensor) -> torch.Tensor:
    """Orthogonal projector onto the row space of Z (N, C): Q Q^T from a rank-revealing QR."""
    U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    r = int((S > S.max() * 1e-10).sum())
    V = Vh[:r].T
    return V @ V.T


@SETTINGS
@given(B=st.integers(1, 3), N=st.integers(1, 6), K=st.integers(6, 16), C=st.integers(6, 12), seed=st.integers(0, 10**6))
def test_exact_write_then_read_projects_onto_written_span(B, N, K, C, seed):
    g = gen(seed)
    mem = exact_memory(K, C)
    Z = torch.randn(B, N, C, generator=g)
    Q = torch.randn(B, 3, C, generator=g)
    M = mem.write(Z)
    out = mem.read(Q, M).z
    for b in range(B):
        expected = Q[b] @ projector(Z[b])
        torch.testing.assert_close(out[b], expected, atol=1e-7, rtol=1e-6)
    # the written latents themselves come back unchanged
    torch.testing.assert_close(mem.read(Z, M).z, Z, atol=1e-7, rtol=1e-6)


@SETTINGS
@given(
    K=st.integers(4, 12),
    C=st.integers(4, 10),
    n=st.integers(1, 20),
    ridge=st.sampled_from([1e-3, 1e-1, 1.0]),
    seed=st.integers(0, 10**6),
)
def test_sequential_writes_equal_batch_ridge_solution(K, C, n, ridge, seed):
    g = gen(seed)
    ref = torch.randn(K, C, generator=g)
    keys, values = torch.randn(n, C, generator=g), torch.randn(n, C, generator=g)
    seq = SequentialMemory(ref, ridge=ridge)
    for i in range(n):  # one fact at a time (Sherman-Morrison path)
        seq.write(keys[i : i + 1], values[i : i + 1])
    W = seq.keys(keys)
    batch_M = torch.linalg.solve(ridge * torch.eye(K) + W.T @ W, W.T @ values)
    torch.testing.assert_close(seq.M[0], batch_M, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(seq.P[0], torch.linalg.inv(ridge * torch.eye(K) + W.T @ W), atol=1e-6, rtol=1e-5)
    # a batched write of the same facts (Woodbury path) lands on the same state
    batched = SequentialMemory(ref, ridge=ridge)
    batched.write(keys, values)
    torch.testing.assert_close(batched.M, seq.M, atol=1e-8, rtol=1e-6)


@SETTINGS
@given(K=st.integers(4, 12), C=st.integers(4, 10), n=st.integers(2, 12), seed=st.integers(0, 10**6), data=st.data())
def test_write_then_forget_equals_never_written(K, C, n, seed, data):
    # The product's reference memory (orthonormal). A Gaussian one can be so ill-conditioned
    # (sigma ratios ~300 at K = C = 5) that a downdate loses ~6 digits: still exact math, looser numbers.
    g = gen(seed)
    ref = reference_memory(K, C, seed)
    keys, values = torch.randn(n, C, generator=g), torch.randn(n, C, generator=g)
    drop = data.draw(st.integers(0, n - 1))
    full = SequentialMemory(ref)
    for i in range(n):
        full.write(keys[i : i + 1], values[i : i + 1])
    full.forget(keys[drop : drop + 1], values[drop : drop + 1])
    never = SequentialMemory(ref)
    for i in range(n):
        if i != drop:
            never.write(keys[i : i + 1], values[i : i + 1])
    torch.testing.assert_close(full.M, never.M, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(full.P, never.P, atol=1e-6, rtol=1e-5)
    assert int(full.count) == n - 1


def test_forget_removes_recall_of_that_fact_only():
    g = gen(0)
    K, C, n = 256, 128, 20  # random keys in 128 dims are nearly orthogonal, as distinct facts' keys are
    seq = SequentialMemory(torch.randn(K, C, generator=g), ridge=1e-6)
    keys, values = torch.randn(n, C, generator=g), torch.randn(n, C, generator=g)
    seq.write(keys, values)
    torch.testing.assert_close(seq.read(keys)[0], values, atol=1e-2, rtol=1e-2)
    seq.forget(keys[3:4], values[3:4])
    after = seq.read(keys)[0]
    assert torch.nn.functional.cosine_similarity(after[3], values[3], dim=0) < 0.2
    keep = [i for i in range(n) if i != 3]
    torch.testing.assert_close(after[keep], values[keep], atol=1e-2, rtol=1e-2)


@SETTINGS
@given(m=st.integers(2, 10), n=st.integers(2, 10), cond=st.floats(1.0, 50.0), seed=st.integers(0, 10**6))
def test_ben_cohen_with_enough_steps_matches_exact(m, n, cond, seed):
    g = gen(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
    S = torch.linspace(1.0, 1.0 / cond, r)
    A = (U * S) @ V.T
    approx = pinv(A, PinvConfig(method="ben_cohen", steps=40, alpha=None))
    torch.testing.assert_close(approx, torch.linalg.pinv(A), atol=1e-8, rtol=1e-6)
    # the reference's fixed step size converges too when alpha * sigma_max^2 < 2
    ref_alpha = pinv(A, PinvConfig(method="ben_cohen", steps=60, alpha=1.0))
    torch.testing.assert_close(ref_alpha, torch.linalg.pinv(A), atol=1e-8, rtol=1e-6)


def test_ben_cohen_divergence_is_detected():
    A = torch.randn(4, 6, generator=gen(1)) * 100  # sigma_max ~ 300: 5e-4 * 9e4 >> 2
    with pytest.raises(PinvDivergenceError, match="diverges"):
        pinv(A, PinvConfig(method="ben_cohen", alpha=5e-4))
    fallback = pinv(A, PinvConfig(method="ben_cohen", alpha=5e-4, on_divergence="exact"))
    torch.testing.assert_close(fallback, torch.linalg.pinv(A))
    # just inside the region: converges, no error
    B = A / torch.linalg.matrix_norm(A, ord=2) * 60  # 5e-4 * 3600 = 1.8 < 2
    out = pinv(B, PinvConfig(method="ben_cohen", alpha=5e-4, steps=80))
    torch.testing.assert_close(out, torch.linalg.pinv(B), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["exact", "ben_cohen"])
@pytest.mark.parametrize("case", ["rank_deficient", "duplicates", "zeros"])
def test_degenerate_inputs_give_finite_results(method, case):
    g = gen(2)
    K, C = 8, 6
    mem = (
        EpisodicMemory(MemoryConfig(slots=K, latent_dim=C, observation_noise_std=0.0, pinv=PinvConfig(method=method)))
        .double()
        .eval()
    )
    if case == "rank_deficient":
        Z = torch.randn(2, 5, 2, generator=g) @ torch.randn(2, C, generator=g)  # rank 2
    elif case == "duplicates":
        Z = torch.randn(2, 1, C, generator=g).expand(2, 5, C).clone()
    else:
        Z = torch.zeros(2, 5, C)
    M = mem.write(Z)
    read = mem.read(Z, M)
    assert torch.isfinite(M).all() and torch.isfinite(read.z).all() and torch.isfinite(read.kl)
    if case != "zeros":
        torch.testing.assert_close(read.z, Z, atol=1e-4, rtol=1e-3)
    seq = SequentialMemory(torch.randn(K, C, generator=g), pinv_cfg=PinvConfig(method=method))
    seq.write(Z[0], Z[0])
    assert torch.isfinite(seq.M).all() and torch.isfinite(seq.read(Z[0])).all()


@SETTINGS
@given(N=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_memories_in_a_batch_are_independent(N, seed):
    g = gen(seed)
    mem = exact_memory(10, 8)
    Z = torch.randn(3, N, 8, generator=g)
    M = mem.write(Z)
    Z2 = Z.clone()
    Z2[1] = torch.randn(N, 8, generator=g)
    M2 = mem.write(Z2)
    torch.testing.assert_close(M[[0, 2]], M2[[0, 2]])
    Q = torch.randn(3, 2, 8, generator=g)
    torch.testing.assert_close(mem.read(Q, M).z[[0, 2]], mem.read(Q, M2).z[[0, 2]])
    seq = SequentialMemory(torch.randn(10, 8, generator=g), batch=3)
    seq.write(Z, Z)
    seq2 = SequentialMemory(seq.reference, batch=3)
    seq2.write(Z2, Z2)
    torch.testing.assert_close(seq.M[[0, 2]], seq2.M[[0, 2]])


def test_training_read_noise_and_kl():
    torch.manual_seed(0)
    mem = EpisodicMemory(MemoryConfig(slots=8, latent_dim=6, read_noise_std=0.1, learn_read_noise=True)).double()
    Z = torch.randn(2, 4, 6)
    M = mem.write(Z)
    r1, r2 = mem.read(Z, M), mem.read(Z, M)
    assert not torch.allclose(r1.z, r2.z)  # stochastic in training
    r1.kl.backward()
    assert mem.read_log_std.grad is not None and torch.isfinite(mem.read_log_std.grad).all()
    mem.eval()
    torch.testing.assert_close(mem.read(Z, M).z, mem.read(Z, M).z)  # deterministic at evaluation
    sample = mem.generate(M, 5)
    assert sample.shape == (2, 5, 6)


def test_sequential_state_round_trip():
    g = gen(3)
    seq = SequentialMemory(torch.randn(8, 6, generator=g), batch=2)
    seq.write(torch.randn(2, 3, 6, generator=g))
    again = SequentialMemory.from_state_dict(seq.state_dict())
    q = torch.randn(2, 4, 6, generator=g)
    torch.testing.assert_close(again.read(q), seq.read(q))


def test_bad_inputs_raise_clear_errors():
    seq = SequentialMemory(torch.randn(8, 6))
    with pytest.raises(ValueError, match="alpha"):
        seq.update(torch.randn(1, 6), torch.randn(1, 6), 0.5)
    with pytest.raises(ValueError, match="shape"):
        seq.write(torch.randn(1, 5))
    with pytest.raises(ValueError, match="ridge"):
        SequentialMemory(torch.randn(8, 6), ridge=0)
    with pytest.raises(ValueError, match="pinv.method"):
        PinvConfig(method="svd")


def test_relu_keys_keep_more_facts_than_latent_dims_apart():
    """Linear keys span at most C dimensions: N = K > C facts blend. Random-feature (relu) keys
    fit all K, and forgetting one still returns the memory to the state without it."""
    g = torch.Generator().manual_seed(0)
    C, K = 16, 64
    ref = torch.linalg.qr(torch.randn(K, C, generator=g, dtype=torch.float64))[0]
    Z_key = torch.randn(K, C, generator=g, dtype=torch.float64)
    Z_val = torch.randn(K, C, generator=g, dtype=torch.float64)
    errors = {}
    for kind in ("linear", "relu"):
        mem = SequentialMemory(ref, ridge=1e-8, keys=kind)
        for i in range(K):
            mem.write(Z_key[i : i + 1], Z_val[i : i + 1])
        errors[kind] = float(((mem.read(Z_key)[0] - Z_val).norm(dim=-1) / Z_val.norm(dim=-1)).max())
    assert errors["relu"] < 1e-3 < 0.5 < errors["linear"]
    fewer = SequentialMemory(ref, ridge=1e-8, keys="relu")
    fewer.write(Z_key[1:], Z_val[1:])
    mem.forget(Z_key[:1], Z_val[:1])
    assert torch.allclose(mem.read(Z_key[1:]), fewer.read(Z_key[1:]), atol=1e-4)
    restored = SequentialMemory.from_state_dict(mem.state_dict())
    assert restored.key_kind == "relu" and torch.allclose(restored.read(Z_key[1:2]), mem.read(Z_key[1:2]))
    with pytest.raises(ValueError, match="linear' or 'relu"):
        SequentialMemory(ref, keys="gauss")


def test_keyed_read_is_what_the_inference_memory_reads():
    """The training objective's differentiable read (an N x N solve) equals SequentialMemory's
    K x K recursive least squares with linear keys through an orthonormal reference (K >= C)."""
    from larimar.memory import keyed_read

    K, C, N = 24, 8, 5
    keys, values, queries = (torch.randn(N, C, generator=gen(s)) for s in (1, 2, 3))
    mem = SequentialMemory(reference_memory(K, C, seed=4), ridge=1e-3)
    mem.write(keys, values)
    expected = mem.read(queries)[0]
    got = keyed_read(keys.unsqueeze(0), values.unsqueeze(0), queries.unsqueeze(0), ridge=1e-3)[0]
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=1e-6)
    # a query equal to a key reads (almost exactly) its value
    torch.testing.assert_close(keyed_read(keys[None], values[None], keys[None])[0], values, atol=1e-3, rtol=1e-3)
