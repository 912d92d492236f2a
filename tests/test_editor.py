"""The editing API on an untrained tiny model: bookkeeping, memory effects, errors (larimar/editor.py).

Whether a *trained* model recalls written facts is tested in tests/test_demo.py.
"""

import pytest
import torch

from tests.conftest import tiny_editor

from larimar import LarimarEditor, LarimarModel, MemoryFullError, UnknownFactError
from larimar.config import from_dict
from larimar.memory import reference_memory
from larimar.model import LarimarConfig


@pytest.fixture(scope="module")
def editor():
    return tiny_editor()


def test_reference_memory_is_orthonormal():
    for K, C in [(16, 8), (8, 16), (12, 12)]:
        R = reference_memory(K, C)
        assert R.shape == (K, C)
        gram = R.T @ R if K >= C else R @ R.T
        torch.testing.assert_close(gram, torch.eye(min(K, C), dtype=R.dtype))


def test_write_read_forget_round_trip(editor):
    mem = editor.create_memory()
    ids = mem.edit(["alice lives in", "bob plays the"], ["paris", "piano"])
    ids += mem.write("carol works as a chef .")
    assert ids == [1, 2, 3] and len(mem) == 3
    assert mem.facts[1].text == "alice lives in paris" and mem.facts[3].prompt is None
    value = editor.model.encode_texts(["alice lives in paris"])
    z, _ = mem.read(["alice lives in"], use_scope=False)
    torch.testing.assert_close(z, value, atol=1e-3, rtol=1e-3)  # the key reads back its value
    mem.forget(1)
    assert 1 not in mem.facts and len(mem) == 2
    z_after, _ = mem.read(["alice lives in"], use_scope=False)
    assert (
        torch.nn.functional.cosine_similarity(z_after, value).item()
        < torch.nn.functional.cosine_similarity(z, value).item()
    )
    mem.forget(2)
    mem.forget(3)
    torch.testing.assert_close(mem.state.M, torch.zeros_like(mem.state.M), atol=1e-6, rtol=0)  # empty again
    with pytest.raises(UnknownFactError):
        mem.forget(3)


def test_scope_detector_gates_the_memory(editor):
    mem = editor.create_memory()
    mem.edit(["The Eiffel Tower is located in"], ["Rome"])
    z, matches = mem.read(
        [
            "Where is the Eiffel Tower located? The Eiffel Tower is located in",
            "What is the boiling point of water at sea level?",
        ]
    )
    assert matches[0].in_scope and matches[0].fact_id == 1
    assert not matches[1].in_scope and z[1].abs().sum() == 0 and z[0].abs().sum() > 0
    gens = mem.generate(["The Eiffel Tower is located in", "Water boils at"], max_new_tokens=3)
    assert gens[0].in_scope and not gens[1].in_scope
    scores = mem.score(["The Eiffel Tower is located in"] * 2, ["Rome", "Paris"])
    assert all(s.tokens >= 1 and s.mean_nll > 0 and s.in_scope for s in scores)


def test_memories_are_independent(editor):
    a, b = editor.create_memory(), editor.create_memory()
    a.edit(["alice lives in"], ["paris"])
    assert len(b) == 0 and b.state.M.abs().sum() == 0
    za, _ = a.read(["alice lives in"], use_scope=False)
    zb, _ = b.read(["alice lives in"], use_scope=False)
    assert za.abs().sum() > 0 and zb.abs().sum() == 0


def test_bad_edits_raise(editor):
    mem = editor.create_memory(capacity=2)
    with pytest.raises(ValueError, match="non-empty"):
        mem.write("   ")
    with pytest.raises(ValueError, match="targets"):
        mem.edit(["a", "b"], ["c"])
    mem.write(["one fact .", "two facts ."])
    with pytest.raises(MemoryFullError, match="2 of 2"):
        mem.write("three facts .")
    assert len(mem) == 2  # the refused write changed nothing


def test_one_encoder_pass_gives_the_scope_embedders_vectors():
    """With the frozen MiniLM encoder, scope vectors come from the encoder's own pass; they must
    match the sentence-transformers embedder's (measured: max |diff| 1.5e-8)."""
    torch.manual_seed(0)
    model = LarimarModel(
        from_dict(
            LarimarConfig,
            {
                "encoder": "minilm-l6",
                "decoder": "tiny-llama",
                "max_length": 24,
                "memory": {"slots": 8, "latent_dim": 16},
            },
        )
    ).eval()
    shared = LarimarEditor(model)
    assert shared.shared_scope and not LarimarEditor(model, scope_model=None).shared_scope
    mem = shared.create_memory()
    mem.edit(["The Eiffel Tower is located in the city of"], ["Rome"])
    mem.write(["Mira Tal teaches chemistry in Oslo."])
    queries = [
        "Where is the Eiffel Tower? The Eiffel Tower is located in the city of",
        "Who teaches chemistry in Oslo?",
        "The capital of Japan is",
    ]
    _, via_encoder = mem.read(queries)
    via_embedder = mem.scope.match(queries)
    for a, b in zip(via_encoder, via_embedder):
        assert (
            a.in_scope == b.in_scope
            and a.fact_id == b.fact_id
            and a.similarity == pytest.approx(b.similarity, abs=1e-5)
        )
    assert [m.in_scope for m in via_encoder] == [True, True, False]
    stored = mem.scope.embed(
        ["The Eiffel Tower is located in the city of", "The Eiffel Tower is located in the city of Rome"]
    )
    assert torch.allclose(mem.scope._vectors[:2], stored, atol=1e-5)
