"""Durable memory store: log + snapshot restore, tenant isolation, validation (larimar/serving/store.py)."""

import pytest
import torch

from larimar.serving.store import Conflict, MemoryStore, NotFound, StoreConfig, StoreError

C, D = 8, 5


def latents(n):
    return torch.randn(n, C), torch.randn(n, C), torch.nn.functional.normalize(torch.randn(2 * n, D), dim=1)


def write(store, tenant, mid, prompts):
    keys, values, scope = latents(len(prompts))
    facts = [{"prompt": p, "target": "x"} for p in prompts]
    return store.commit(store.prepare_write(tenant, mid, facts, keys, values, scope))


def state_of(store):
    return {
        mid: (r.info.version, r.memory.state.M.clone(), sorted(r.memory.facts), list(r.events))
        for mid, r in store.records.items()
    }


@pytest.mark.parametrize("snapshot_every", [1000, 3])
def test_restart_restores_exactly_the_committed_state(tmp_path, snapshot_every):
    cfg = StoreConfig(storage=str(tmp_path), latent_dim=C, snapshot_every=snapshot_every, default_slots=16)
    store = MemoryStore(cfg)
    a = store.commit(store.prepare_create("t1", "a")).id
    b = store.commit(store.prepare_create("t1", "b", slots=8)).id
    [r1] = write(store, "t1", a, ["p1", "p2"])
    write(store, "t1", b, ["q1"])
    assert store.commit(store.prepare_forget("t1", a, r1["ids"][0])) == 2  # versions count per memory
    write(store, "t1", a, ["p3"])
    c = store.commit(store.prepare_create("t1", "c")).id
    store.commit(store.prepare_delete("t1", c))
    before = state_of(store)
    again = MemoryStore(cfg)
    after = state_of(again)
    assert before.keys() == after.keys() == {a, b}
    for mid in before:
        assert before[mid][0] == after[mid][0] and before[mid][2] == after[mid][2] and before[mid][3] == after[mid][3]
        torch.testing.assert_close(before[mid][1], after[mid][1], atol=0, rtol=0)
    assert again.seq == store.seq
    if snapshot_every == 3:
        assert again.snapshot_seq > 0 and len(again.storage.list("log")) < store.seq


def test_batched_writes_are_one_entry_with_a_version_each(tmp_path):
    store = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C))
    mid = store.commit(store.prepare_create("t", "m")).id
    entries = []
    for i in range(3):
        k, v, s = latents(2)
        entries.append(
            store.prepare_write("t", mid, [{"text": f"fact {i}a"}, {"text": f"fact {i}b"}], k, v, s[:2], pending=2 * i)
        )
    [merged] = store.merge_writes(entries)
    results = store.commit(merged)
    assert [r["version"] for r in results] == [1, 2, 3]
    assert [r["ids"] for r in results] == [[1, 2], [3, 4], [5, 6]]
    assert MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C)).records[mid].info.version == 3


def test_tenants_are_isolated_and_errors_have_statuses(tmp_path):
    store = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C, default_slots=2))
    mid = store.commit(store.prepare_create("alice")).id
    with pytest.raises(NotFound):
        store.get("mallory", mid)
    with pytest.raises(NotFound):
        write(store, "mallory", mid, ["p"])
    assert store.list("mallory") == [] and [m.id for m in store.list("alice")] == [mid]
    write(store, "alice", mid, ["p1", "p2"])
    with pytest.raises(Conflict, match="2 of 2"):
        write(store, "alice", mid, ["p3"])
    with pytest.raises(NotFound, match="fact 99"):
        store.prepare_forget("alice", mid, 99)
    with pytest.raises(StoreError, match="slots"):
        store.prepare_create("alice", slots=10**9)
    with pytest.raises(ValueError, match="non-empty"):
        store.prepare_write("alice", mid, [{"text": " "}], *latents(1))
