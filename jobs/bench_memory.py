"""Memory-operation timings: one sequential write, one forget and one read, per K and pinv solver.

    python jobs/bench_memory.py [--out runs/bench_memory.json] [--repeats 200]

C = 768 as in the paper. "write"/"forget" are single-fact sequential updates (paper Eqs. 2-4,
Woodbury / Sherman-Morrison: O(K^2 + KC)); "read" is one query through the reference keys.
The pinv solver matters for computing the reference key map (once per memory) and for the
batch write of Algorithm 1, which are timed too. Target: single-fact write < 1 ms at K = 512.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from larimar.memory import reference_memory
from larimar.memory import EpisodicMemory, MemoryConfig, SequentialMemory
from larimar.pinv import PinvConfig


def timed(fn, repeats: int, setup=None) -> dict[str, float]:
    """Median and p90 wall time of fn() in ms; setup() runs untimed before each call."""
    samples = []
    for i in range(repeats + 3):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        if i >= 3:  # warm-up calls are not counted
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))]}


def bench(K: int, C: int, method: str, repeats: int, preload: int) -> dict:
    pinv_cfg = PinvConfig(method=method, alpha=None) if method == "ben_cohen" else PinvConfig(method=method)
    ref = reference_memory(K, C)
    t0 = time.perf_counter()
    mem = SequentialMemory(ref, pinv_cfg=pinv_cfg)
    setup_ms = (time.perf_counter() - t0) * 1e3
    g = torch.Generator().manual_seed(0)
    mem.write(torch.randn(preload, C, generator=g, dtype=torch.float64))  # a partly filled memory
    key, value = (
        torch.randn(1, C, generator=g, dtype=torch.float64),
        torch.randn(1, C, generator=g, dtype=torch.float64),
    )

    write = timed(lambda: mem.write(key, value), repeats)
    forget = timed(lambda: mem.forget(key, value), repeats)  # removes the copies just written
    read = timed(lambda: mem.read(key), repeats)
    episodic = EpisodicMemory(MemoryConfig(slots=K, latent_dim=C, pinv=pinv_cfg)).eval()
    Z = torch.randn(1, 16, C, generator=g)
    with torch.no_grad():
        batch_write = timed(lambda: episodic.write(Z), max(5, repeats // 20))
    return {
        "K": K,
        "C": C,
        "pinv": method,
        "preloaded_facts": preload,
        "key_map_setup_ms": setup_ms,
        "write_ms": write,
        "forget_ms": forget,
        "read_ms": read,
        "algorithm1_write_16_ms": batch_write,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_memory.json")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--slots", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--latent-dim", type=int, default=768)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for K in args.slots:
        for method in ("exact", "ben_cohen"):
            row = bench(K, args.latent_dim, method, args.repeats, preload=min(100, K // 2))
            rows.append(row)
            print(
                f"K={K:5d} pinv={method:9s}  write {row['write_ms']['median_ms']:.3f} ms  "
                f"forget {row['forget_ms']['median_ms']:.3f} ms  read {row['read_ms']['median_ms']:.3f} ms  "
                f"(p90 write {row['write_ms']['p90_ms']:.3f})  key-map setup {row['key_map_setup_ms']:.0f} ms  "
                f"Alg.1 write of 16 {row['algorithm1_write_16_ms']['median_ms']:.1f} ms",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "dtype": "float64 (SequentialMemory), float32 (EpisodicMemory)",
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
