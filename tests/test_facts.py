"""The model-free fact memory: validation, snapshot round trip (larimar/facts.py)."""

import pytest
import torch

from larimar.editor import reference_memory
from larimar.facts import FactMemory, MemoryFullError, UnknownFactError, make_fact, scope_texts
from larimar.memory import SequentialMemory
from larimar.scope import ScopeDetector


def fresh(capacity=4) -> FactMemory:
    return FactMemory(SequentialMemory(reference_memory(8, 6)), capacity, ScopeDetector(None, threshold=0.5))


def test_make_fact_validates():
    assert make_fact(prompt=" a ", target="b ").text == "a b"
    for bad in [dict(text=""), dict(text="  "), dict(prompt="a", target=""), dict(prompt="", target="b")]:
        with pytest.raises(ValueError, match="non-empty"):
            make_fact(**bad)


def test_write_forget_snapshot_round_trip():
    mem = fresh()
    facts = [make_fact(prompt="p1", target="t1"), make_fact(text="free text")]
    owners, texts = scope_texts(facts)
    assert owners == [0, 0, 1] and texts == ["p1", "p1 t1", "free text"]
    vecs = torch.nn.functional.normalize(torch.randn(3, 5), dim=1)
    ids = mem.write(facts, torch.randn(2, 6), torch.randn(2, 6), vecs)
    assert ids == [1, 2]
    matches = mem.scope.match_vectors(vecs[2:3], [0], 1)
    assert matches[0].fact_id == 2 and matches[0].in_scope
    mem.forget(1)
    again = FactMemory.from_state_dict(mem.state_dict(), ScopeDetector(None))
    q = torch.randn(3, 6)
    torch.testing.assert_close(again.read(q), mem.read(q))
    assert again.facts == mem.facts and again.next_id == 3
    assert again.scope.match_vectors(vecs[2:3], [0], 1)[0].fact_id == 2
    with pytest.raises(UnknownFactError, match="no fact with id 1"):
        again.forget(1)


def test_capacity_is_checked_before_any_change():
    mem = fresh(capacity=1)
    mem.write([make_fact(text="a")], torch.randn(1, 6), torch.randn(1, 6))
    M = mem.state.M.clone()
    with pytest.raises(MemoryFullError):
        mem.write([make_fact(text="b")], torch.randn(1, 6), torch.randn(1, 6))
    torch.testing.assert_close(mem.state.M, M)
