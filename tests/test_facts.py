"""The model-free fact memory: validation, snapshot round trip (larimar/facts.py)."""

import pytest
import torch

from larimar.memory import reference_memory
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
    matches = mem.scope.match_vectors(vecs[2:3], [0], ["q"])
    assert matches[0].fact_id == 2 and matches[0].in_scope
    mem.forget(1)
    again = FactMemory.from_state_dict(mem.state_dict(), ScopeDetector(None))
    q = torch.randn(3, 6)
    torch.testing.assert_close(again.read(q), mem.read(q))
    assert again.facts == mem.facts and again.next_id == 3
    assert again.scope.match_vectors(vecs[2:3], [0], ["q"])[0].fact_id == 2
    with pytest.raises(UnknownFactError, match="no fact with id 1"):
        again.forget(1)


def test_capacity_is_checked_before_any_change():
    mem = fresh(capacity=1)
    mem.write([make_fact(text="a")], torch.randn(1, 6), torch.randn(1, 6))
    M = mem.state.M.clone()
    with pytest.raises(MemoryFullError):
        mem.write([make_fact(text="b")], torch.randn(1, 6), torch.randn(1, 6))
    torch.testing.assert_close(mem.state.M, M)


def test_value_norm_readout_restores_the_written_values_norm():
    """One fact: the raw read-out of a paraphrase-like query is s * value with s < 1; "value_norm"
    rescales it to the value's norm (in direction it is the same read-out)."""
    torch.manual_seed(0)
    key, value = torch.randn(1, 6), torch.randn(1, 6)
    query = key * 0.4 + 0.1 * torch.randn(1, 6)
    raw, normed = fresh(), fresh()
    normed.readout = "value_norm"
    for mem in (raw, normed):
        mem.write(
            [make_fact(prompt="p", target="t")], key, value, torch.nn.functional.normalize(torch.randn(2, 5), dim=1)
        )
    r, n = raw.read(query), normed.read(query)
    assert r.norm() < 0.9 * value.norm()
    torch.testing.assert_close(n.norm(), value.norm())
    torch.testing.assert_close(n / n.norm(), r / r.norm())
    with pytest.raises(ValueError, match="readout"):
        FactMemory(raw.state, 4, readout="loud")


def test_subject_rule_lets_through_only_queries_that_name_the_subject():
    """A fact with a subject is in scope for a query that names it at the lower subject threshold,
    never for one that does not, however similar; facts without a subject keep the plain threshold."""
    from larimar.scope import ScopeDetector

    scope = ScopeDetector(None, threshold=0.7, subject_threshold=0.3)
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    scope.add_vectors([1, 2], v, ["Airbus A350", None])
    near = torch.nn.functional.normalize(torch.tensor([[0.95, 0.31, 0.0]]), dim=1)  # cosine 0.95 with fact 1
    weak = torch.nn.functional.normalize(torch.tensor([[0.4, 0.0, 0.92]]), dim=1)  # cosine 0.4 with fact 1
    para, neighbour, low, lower = scope.match_vectors(
        torch.cat([weak, near, weak, weak]),
        [0, 1, 2, 3],
        [
            "Nebamun was the son of Tetires. AIRBUS  a350 was created by",
            "Airbus A380 was developed by",
            "Airbus A3501 is made by",
            "nothing of the sort",
        ],
    )
    assert para.in_scope and para.fact_id == 1
    assert not neighbour.in_scope and neighbour.fact_id == 1  # nearest, reported, but out of scope
    assert not low.in_scope and not lower.in_scope  # a longer word is not the subject
    free = scope.match_vectors(
        torch.nn.functional.normalize(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.5, 0.86]]), dim=1), [0, 1], ["a", "b"]
    )
    assert [m.in_scope for m in free] == [True, False] and free[0].fact_id == 2
    restored = ScopeDetector(None)
    restored.load_state_dict(scope.state_dict())
    assert restored.match_vectors(weak, [0], ["airbus a350 ?"])[0].in_scope
    scope.remove(1)
    assert scope.match_vectors(weak, [0], ["airbus a350 ?"])[0].fact_id == 2
