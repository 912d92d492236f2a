"""Roll a damaged memory back to its last consistent state (`larimar.serving.store`).

    python -m larimar.serving.repair --storage runs/serve-store [--latent-dim 384]            # report
    python -m larimar.serving.repair --storage runs/serve-store --memory mem_ab12... --apply  # repair

A memory is damaged when restore meets an entry of it that cannot be read, fails its checksum or
does not follow the memory's last version, or when its snapshot file is missing or corrupt. The
report lists each damaged memory, the entry that stopped it and the later entries that were
skipped. `--apply` moves exactly those entries to ``quarantine/`` (nothing is deleted), so the
next restore rebuilds the memory up to its last consistent version; a memory whose snapshot file
is gone cannot be rebuilt and is dropped from the index (the report says so). Run it with the
server stopped: the memory actor restores on start.
"""

from __future__ import annotations

import argparse
import json
import sys

from larimar.serving.store import INDEX, MemoryStore, StoreConfig


def plan(store: MemoryStore, memory_id: str) -> dict:
    """What repairing `memory_id` does: the log files to quarantine, or that the memory is dropped."""
    d = store.damaged[memory_id]
    names = {int(n.split("/")[1].split("-")[0].split(".")[0]): n for n in store.storage.list("log")}
    seqs = [d.seq, *d.skipped] if d.file.startswith("log/") else []
    files = [names[s] for s in seqs if s in names]
    return {
        "memory_id": memory_id,
        "entry": d.file,
        "reason": d.reason,
        "keeps_version": d.last_good_version,
        "quarantine": files,
        "drops_memory": not d.file.startswith("log/"),
    }


def apply_plan(store: MemoryStore, p: dict) -> None:
    for name in p["quarantine"]:
        raw = store.storage.get(name)
        if raw is not None:
            store.storage.put(f"quarantine/{name.split('/', 1)[1]}", raw)
            store.storage.delete(name)
    raw = store.storage.get(INDEX)
    if raw is not None:  # the snapshot index must forget the damage (and, if dropped, the memory)
        index = json.loads(raw)
        index["damaged"] = [d for d in index.get("damaged", []) if d["memory_id"] != p["memory_id"]]
        if p["drops_memory"]:
            index["records"].pop(p["memory_id"], None)
        store.storage.put(INDEX, json.dumps(index).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, help="the server's storage directory or URI")
    ap.add_argument("--latent-dim", type=int, default=384, help="C of the served model (384: Larimar-smol)")
    ap.add_argument(
        "--value-dim",
        type=int,
        default=None,
        help="V of the served model's values (default C; see LarimarModel.value_dim)",
    )
    ap.add_argument("--memory", action="append", default=[], help="a damaged memory to repair (repeatable)")
    ap.add_argument("--apply", action="store_true", help="do it (default: only report)")
    a = ap.parse_args(argv)
    store = MemoryStore(
        StoreConfig(storage=a.storage, latent_dim=a.latent_dim, value_dim=a.value_dim, snapshot_every=10**12)
    )
    for problem in store.problems:
        print(f"store: {problem}")
    if not store.damaged:
        print("no damaged memory")
        return 0
    unknown = [m for m in a.memory if m not in store.damaged]
    if unknown:
        print(f"error: not damaged: {unknown}; damaged: {sorted(store.damaged)}", file=sys.stderr)
        return 2
    for mid in a.memory or sorted(store.damaged):
        p = plan(store, mid)
        what = (
            "drops the whole memory (its snapshot file is unusable)"
            if p["drops_memory"]
            else f"keeps version {p['keeps_version']}, quarantines {len(p['quarantine'])} entries: {p['quarantine']}"
        )
        print(f"{mid}: {p['entry']} {p['reason']}; repair {what}")
        if a.apply and mid in a.memory:
            apply_plan(store, p)
            print(f"{mid}: repaired")
    if not a.apply:
        print("(report only: add --memory <id> --apply)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
