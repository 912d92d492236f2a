"""Where an acknowledged edit's time goes, stage by stage, in one process (issue 18).

    python jobs/bench_edit_path.py [--model larimar-smol-v3] [--sizes 1,8,32] [--threads 1] \
        [--encoder-precision fp32|bf16] [--encoder-compile] [--encoder-workers 1] \
        [--out runs/bench_edit_path.json]

The serving path of POST /v1/memories/{id}/facts is: HTTP proxy -> ingress -> encoder deployment
(`larimar.fact_encoder.encode_facts`) -> its answer pickled back through Ray -> memory actor:
`MemoryStore.prepare_write` (checks, quota, the log entry), `persist` (canonical JSON, SHA-256,
write + fsync of file and directory: durable before the answer), `apply` (the rank-n
least-squares update of the K x V memory, the fact table, the scope index). This times each of
those on the served model, for a batch of n facts as the actor's batching merges them, with the
replica's thread count (Serve replicas here run one torch thread each). What it leaves out is
the Serve hops and HTTP, which `jobs/bench_serve.py` measures end to end: the difference between
the two is their cost.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import tempfile
from concurrent.futures import Executor, ThreadPoolExecutor
import time
from pathlib import Path

import torch

from larimar.fact_encoder import encode_facts
from larimar.facts import make_fact
from larimar.model import DEFAULT_MODEL, LarimarModel
from larimar.precision import compile_encoder, default_encoder_precision, set_encoder_precision
from larimar.serving.store import MemoryStore, StoreConfig, checksum, log_name


def timed(fn, repeats: int) -> float:
    """Median wall time of fn() in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def stages(model: LarimarModel, store: MemoryStore, n: int, repeats: int, pool: Executor | None = None) -> dict:
    facts = [{"text": None, "prompt": f"person {i} of group {n} lives in", "target": f"city {i}"} for i in range(n)]
    checked = [make_fact(None, f["prompt"], f["target"]) for f in facts]
    row: dict = {"facts": n}
    # the encoder deployment: MiniLM over prompts, texts and targets (+ decoder rows for v3 values)
    row["encode_ms"] = timed(lambda: encode_facts(model, checked, True, shared=True, pool=pool), repeats)
    enc = encode_facts(model, checked, True, shared=True, pool=pool)
    payload = {"keys": enc.keys, "values": enc.values, "scope": enc.scope}
    row["encoder_answer_kib"] = len(pickle.dumps(payload)) / 1024
    row["pickle_ms"] = timed(lambda: pickle.loads(pickle.dumps(payload)), repeats)
    # the memory actor
    mid = store.commit(store.prepare_create("bench", f"m{n}", slots=512)).id

    def prepare():
        return store.prepare_write("bench", mid, facts, enc.keys, enc.values, enc.scope)

    row["prepare_ms"] = timed(prepare, repeats)
    entry = {**prepare(), "seq": store.seq + 1}
    body = json.dumps(entry).encode()
    row["log_entry_kib"] = len(body) / 1024
    row["checksum_ms"] = timed(lambda: checksum(entry), repeats)
    row["json_ms"] = timed(lambda: json.dumps(entry).encode(), repeats)
    scratch = {"seq": 10**9, "memory_id": "scratch"}
    row["write_fsync_ms"] = timed(lambda: store.storage.put(log_name(scratch), body), repeats)
    store.storage.delete(log_name(scratch))
    rec = store.records[mid]
    row["memory_update_ms"] = timed(lambda: rec.memory.state.write(enc.keys, enc.values), repeats)
    before = store.seq

    def persist_apply():
        store.apply(store.persist(prepare()))

    row["persist_apply_ms"] = timed(persist_apply, min(repeats, 3))
    row["apply_ms"] = row["persist_apply_ms"] - row["json_ms"] - row["checksum_ms"] - row["write_fsync_ms"]
    assert store.seq > before
    row["actor_total_ms"] = row["prepare_ms"] + row["persist_apply_ms"]
    row["total_ms"] = row["encode_ms"] + row["pickle_ms"] + row["actor_total_ms"]
    row["edits_per_s_ceiling"] = 1e3 * n / row["total_ms"]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--sizes", default="1,8,32", help="facts per merged write")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a Serve replica's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--encoder-precision", default=None, help="fp32 or bf16 (default: the encoder replica's choice for this CPU)"
    )
    p.add_argument("--encoder-compile", action="store_true", help="compile the encoder (ServeSettings.encoder_compile)")
    p.add_argument(
        "--encoder-workers",
        type=int,
        default=1,
        help="threads over the encoder pass's chunks of 16 texts (ServeSettings.encoder_workers)",
    )
    p.add_argument("--storage", default=None, help="where the log goes (default: a temporary directory)")
    p.add_argument("--out", default="runs/bench_edit_path.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = LarimarModel.from_pretrained(a.model).eval()
    precision = a.encoder_precision or default_encoder_precision()
    set_encoder_precision(model.encoder, precision)
    if a.encoder_compile:  # compiled on the first calls, which `timed`'s warm-up call makes
        compile_encoder(model.encoder)
    report = {
        "model": a.model,
        "threads": a.threads,
        "encoder_precision": precision,
        "encoder_compile": a.encoder_compile,
        "encoder_workers": a.encoder_workers,
        "value_dim": model.value_dim,
        "rows": [],
    }
    pool = ThreadPoolExecutor(a.encoder_workers) if a.encoder_workers > 1 else None
    with tempfile.TemporaryDirectory(dir=a.storage) as d:
        cfg = StoreConfig(
            storage=d,
            latent_dim=model.cfg.memory.latent_dim,
            value_dim=model.value_dim,
            readout=model.cfg.readout,
            snapshot_every=10**9,
            max_bytes_per_tenant=2**62,
        )
        store = MemoryStore(cfg)
        for n in (int(s) for s in a.sizes.split(",")):
            row = stages(model, store, n, a.repeats, pool)
            report["rows"].append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    report["cpus"] = os.cpu_count()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
