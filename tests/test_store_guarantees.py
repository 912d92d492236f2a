"""The store's guarantees under damage, attack and erasure (larimar/serving/store.py, repair.py):
one damaged log entry or snapshot file takes down only its memory, which the repair command rolls
back; a crafted pickle is never unpickled; forgotten text leaves responses at once and storage at
the next snapshot; a retried write applies once, across restarts; quotas count bytes."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from larimar.serving import repair
from larimar.serving.store import (
    Conflict,
    MemoryStore,
    NotFound,
    QuotaExceeded,
    StoreConfig,
    Unavailable,
    memory_bytes,
)

C, D = 8, 5


def latents(n):
    return torch.randn(n, C), torch.randn(n, C), torch.nn.functional.normalize(torch.randn(n, D), dim=1)


def cfg(tmp_path, **kw):
    return StoreConfig(storage=str(tmp_path), latent_dim=C, default_slots=16, **kw)


def write(store, mid, texts, tenant="t", key=None):
    facts = [{"text": t} for t in texts]
    return store.commit(store.prepare_write(tenant, mid, facts, *latents(len(texts)), idempotency_key=key))


def logs_of(tmp_path, mid):
    return sorted(p for p in (tmp_path / "log").iterdir() if mid in p.name)


@pytest.fixture
def two(tmp_path):
    store = MemoryStore(cfg(tmp_path))
    a = store.commit(store.prepare_create("t", "a")).id
    b = store.commit(store.prepare_create("t", "b")).id
    write(store, a, ["a one ."])
    write(store, b, ["b one ."])
    write(store, a, ["a two ."])
    write(store, a, ["a three ."])
    return store, a, b


@pytest.mark.parametrize("damage", ["truncate", "empty", "edit", "missing"])
def test_a_damaged_entry_takes_down_only_its_memory_and_repair_rolls_it_back(tmp_path, two, damage, capsys):
    store, a, b = two
    second, third = logs_of(tmp_path, a)[2:4]  # create, write one, [write two], [write three]
    if damage == "truncate":
        third.write_bytes(third.read_bytes()[:40])
    elif damage == "empty":
        third.write_bytes(b"")
    elif damage == "edit":  # a hand-edited fact text must not replay silently
        entry = json.loads(third.read_text())
        entry["requests"][0]["facts"][0]["text"] = "a forged ."
        third.write_text(json.dumps(entry))
    else:
        second.unlink()
    again = MemoryStore(cfg(tmp_path))
    assert again.records[b].info.version == 1 and [f.text for f in again.records[b].memory.facts.values()] == [
        "b one ."
    ]
    with pytest.raises(Unavailable) as err:
        again.get("t", a)
    msg = err.value.message
    assert err.value.status == 503 and a in msg and "repair" in msg
    assert (third.name if damage != "missing" else third.name) in msg or second.name in msg
    with pytest.raises(NotFound):
        again.get("intruder", a)  # another tenant still learns nothing
    write(again, b, ["b two ."])  # the healthy memory keeps taking writes

    assert repair.main(["--storage", str(tmp_path), "--latent-dim", str(C)]) == 0
    assert "keeps version" in capsys.readouterr().out
    assert repair.main(["--storage", str(tmp_path), "--latent-dim", str(C), "--memory", a, "--apply"]) == 0
    fixed = MemoryStore(cfg(tmp_path))
    good = 2 if damage != "missing" else 1
    assert fixed.records[a].info.version == good and not fixed.damaged
    assert len(fixed.records[a].memory) == good
    assert (tmp_path / "quarantine").exists() and fixed.records[b].info.version == 2
    write(fixed, a, ["a again ."])  # writable again


def test_a_damaged_snapshot_file_takes_down_only_its_memory(tmp_path, two):
    store, a, b = two
    store.snapshot()
    [file_a] = (tmp_path / "snapshot").glob(f"{a}-*.safetensors")
    file_a.write_bytes(file_a.read_bytes()[:100])
    again = MemoryStore(cfg(tmp_path))
    assert b in again.records and a in again.damaged
    with pytest.raises(Unavailable, match="checksum"):
        again.get("t", a)


def test_snapshots_are_not_pickles_and_a_crafted_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "snapshot.pt").write_bytes(pickle.dumps({"seq": 1, "records": Evil()}))
    store = MemoryStore(cfg(tmp_path))
    assert not marker.exists() and "refused" in store.problems[0]
    mid = store.commit(store.prepare_create("t", "m")).id
    write(store, mid, ["x ."])
    store.snapshot()
    assert not (tmp_path / "snapshot.pt").exists()
    assert sorted(p.suffix for p in (tmp_path / "snapshot").iterdir()) == [".json", ".safetensors"]
    assert MemoryStore(cfg(tmp_path)).records[mid].info.version == 1


def test_forgetting_erases_the_text_from_responses_at_once_and_from_storage_at_the_snapshot(tmp_path):
    store = MemoryStore(cfg(tmp_path))
    mid = store.commit(store.prepare_create("t", "m")).id
    [r] = write(store, mid, ["Patient John Roe has HIV ."])
    write(store, mid, ["the sky is green ."])
    store.commit(store.prepare_forget("t", mid, r["ids"][0]))
    events = store.records[mid].events
    assert "John Roe" not in json.dumps(events) and events[0]["forgotten"] and events[0]["fact_id"] == 1
    store.snapshot()
    stored = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file())
    assert b"John Roe" not in stored and b"the sky is green" in stored
    again = MemoryStore(cfg(tmp_path))
    assert "John Roe" not in json.dumps(again.records[mid].events) and len(again.records[mid].memory) == 1


def test_the_history_is_capped_and_storage_does_not_grow_with_write_forget_cycles(tmp_path):
    store = MemoryStore(cfg(tmp_path, max_events=10, snapshot_every=10))
    mid = store.commit(store.prepare_create("t", "m")).id
    sizes = []
    for cycle in range(60):
        [r] = write(store, mid, [f"fact {cycle} ."])
        store.commit(store.prepare_forget("t", mid, r["ids"][0]))
        if cycle % 20 == 19:
            store.snapshot()
            sizes.append(sum(p.stat().st_size for p in Path(tmp_path).rglob("*") if p.is_file()))
    assert len(store.records[mid].events) == 10
    assert max(sizes) - min(sizes) < 2000, sizes  # an empty memory stays the same size on disk


def test_a_retried_write_applies_once_even_after_a_restart(tmp_path):
    store = MemoryStore(cfg(tmp_path))
    mid = store.commit(store.prepare_create("t", "m")).id
    [first] = write(store, mid, ["one ."], key="req-1")
    facts = [{"text": "one ."}]
    assert store.replay("t", "req-1", store.request_hash(facts)) == first
    assert store.replay("other-tenant", "req-1", store.request_hash(facts)) is None  # keys are per tenant
    with pytest.raises(Conflict, match="different request"):
        store.replay("t", "req-1", store.request_hash([{"text": "two ."}]))
    again = MemoryStore(cfg(tmp_path))  # durable with the log
    assert again.replay("t", "req-1", again.request_hash(facts)) == first
    again.snapshot()
    assert MemoryStore(cfg(tmp_path)).replay("t", "req-1", again.request_hash(facts)) == first  # and the snapshot


def test_quotas_count_bytes(tmp_path):
    store = MemoryStore(cfg(tmp_path, max_bytes_per_tenant=40_000))
    mid = store.commit(store.prepare_create("t", "m", slots=16)).id
    assert memory_bytes(store.records[mid].memory) == 8 * (16 * 16 + 2 * 16 * C)
    with pytest.raises(QuotaExceeded) as err:
        store.prepare_create("t", "big", slots=64)
    assert err.value.status == 429 and "budget" in err.value.message
    store.commit(store.prepare_create("u", "other", slots=16))  # another tenant has its own budget


def test_only_changed_memories_are_written_again_at_a_snapshot(tmp_path, two):
    store, a, b = two
    store.snapshot()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "snapshot").glob("*.safetensors")}
    write(store, a, ["a four ."])
    store.snapshot()
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "snapshot").glob("*.safetensors")}
    [b_file] = [n for n in after if n.startswith(b)]
    assert before[b_file] == after[b_file]  # untouched
    assert [n for n in after if n.startswith(a)] != [n for n in before if n.startswith(a)]
