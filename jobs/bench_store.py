"""Durable store costs (larimar/serving/store.py): bytes per memory, snapshot time (all memories
changed, then one), restore time. No model: latents are random, the state sizes are the served ones.

    python jobs/bench_store.py [--memories 50] [--slots 512] [--facts 10] [--out runs/bench_store.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from larimar.serving.store import MemoryStore, StoreConfig, memory_bytes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memories", type=int, default=50)
    p.add_argument("--slots", type=int, default=512)
    p.add_argument("--facts", type=int, default=10, help="facts written into each memory")
    p.add_argument("--latent-dim", type=int, default=384)
    p.add_argument("--out", default="runs/bench_store.json")
    a = p.parse_args(argv)
    C = a.latent_dim
    with tempfile.TemporaryDirectory() as d:
        cfg = StoreConfig(
            storage=d, latent_dim=C, default_slots=a.slots, snapshot_every=10**9, max_bytes_per_tenant=2**62
        )
        store = MemoryStore(cfg)
        mids = [store.commit(store.prepare_create("t", f"m{i}")).id for i in range(a.memories)]
        facts = [{"text": f"fact {j} ."} for j in range(a.facts)]
        for m in mids:
            store.commit(
                store.prepare_write(
                    "t", m, facts, torch.randn(a.facts, C), torch.randn(a.facts, C), torch.randn(a.facts, 384)
                )
            )
        t = time.perf_counter()
        store.snapshot()
        full = time.perf_counter() - t
        store.commit(
            store.prepare_write("t", mids[0], facts[:1], torch.randn(1, C), torch.randn(1, C), torch.randn(1, 384))
        )
        t = time.perf_counter()
        store.snapshot()
        one = time.perf_counter() - t
        on_disk = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
        t = time.perf_counter()
        MemoryStore(cfg)
        restore = time.perf_counter() - t
    out = {
        "memories": a.memories,
        "slots": a.slots,
        "latent_dim": C,
        "facts_per_memory": a.facts,
        "bytes_per_memory": memory_bytes(store.records[mids[1]].memory),
        "bytes_on_disk": on_disk,
        "snapshot_all_changed_s": round(full, 3),
        "snapshot_one_changed_s": round(one, 3),
        "restore_s": round(restore, 3),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
