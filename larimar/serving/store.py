"""The durable, multi-tenant store of memories that the serving memory actor owns.

Every change is an *entry* that goes through three steps, always in this order:

1. ``prepare_*`` validates the request against the current state (ownership, capacity, fact ids)
   and builds the entry; nothing changes yet, so a refused request leaves no trace.
2. ``persist`` gives the entry the next sequence number and writes it durably to the append-only
   log (``log/<seq>.json``); only after this may the edit be acknowledged.
3. ``apply`` mutates the in-memory state. It cannot fail for a prepared entry, and it is the
   same function that replays the log on restart, so the restored state is the acknowledged one.

Every ``snapshot_every`` entries the whole store is written to ``snapshot.pt`` by atomic replace
and the log entries it covers are deleted. Restoring loads the snapshot and replays the log
entries with a higher sequence number: nothing acknowledged is lost, nothing is applied twice.

Latents (keys, values, scope embeddings) are computed by the encoder deployment and stored in the
entries as float32 bytes, so replay needs no model and reproduces the state bit for bit.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from larimar import memory_file
from larimar.editor import reference_memory
from larimar.facts import FactMemory, make_fact
from larimar.memory import SequentialMemory
from larimar.scope import ScopeDetector, ScopeMatch
from larimar.serving.storage import Storage


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


@dataclass
class StoreConfig:
    storage: str = "runs/serve-store"  # local directory or s3://bucket/prefix
    latent_dim: int = 768  # C of the served model
    snapshot_every: int = 200  # log entries between snapshots
    default_slots: int = 512  # K of a new memory unless the request says otherwise
    max_slots: int = 4096
    max_memories_per_tenant: int = 1000
    ridge: float = 1e-3
    scope_threshold: float = 0.7  # cosine similarity for "in scope" (facts without a subject)
    subject_threshold: float = 0.3  # cosine a query naming a fact's subject needs (larimar.scope)
    readout: str = "raw"  # the served model's read-out convention (LarimarConfig.readout)
    encoder: str | None = None  # the served model's encoder and scope model: an imported memory file
    scope_model: str | None = None  # must have been made with the same ones (larimar.memory_file)


@dataclass
class MemoryInfo:
    id: str
    tenant: str
    name: str
    slots: int
    version: int = 0
    created: float = 0.0


@dataclass
class Record:
    info: MemoryInfo
    memory: FactMemory
    events: list[dict] = field(default_factory=list)  # {"version", "op": write|forget, "fact_id", "text"}


def _pack(t: torch.Tensor) -> dict:
    a = np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4")
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _unpack(d: dict) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"]).copy())


class MemoryStore:
    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        self.records: dict[str, Record] = {}
        self.seq = 0  # last persisted and applied entry
        self.snapshot_seq = 0
        self.restored_entries = 0
        self.last_snapshot_time = time.time()
        self.restore()

    # -- lookups --------------------------------------------------------------------------------

    def get(self, tenant: str, memory_id: str) -> Record:
        rec = self.records.get(memory_id)
        if rec is None or rec.info.tenant != tenant:  # another tenant's memory does not exist for you
            raise NotFound(f"memory {memory_id!r} not found")
        return rec

    def list(self, tenant: str) -> list[MemoryInfo]:
        return [r.info for r in self.records.values() if r.info.tenant == tenant]

    # -- step 1: prepare ------------------------------------------------------------------------

    def prepare_create(self, tenant: str, name: str = "", slots: int | None = None, keys: str = "linear") -> dict:
        slots = slots or self.cfg.default_slots
        if not 1 <= slots <= self.cfg.max_slots:
            raise StoreError(f"slots must be between 1 and {self.cfg.max_slots}, got {slots}")
        if keys not in ("linear", "relu"):
            raise StoreError(f"keys must be 'linear' or 'relu', got {keys!r}")
        self._check_quota(tenant)
        return {"op": "create", "tenant": tenant, "memory_id": f"mem_{uuid.uuid4().hex[:16]}", "name": name,
                "slots": slots, "keys": keys, "created": time.time()}

    def _check_quota(self, tenant: str) -> None:
        if len(self.list(tenant)) >= self.cfg.max_memories_per_tenant:
            raise Conflict(f"tenant already has {self.cfg.max_memories_per_tenant} memories, the maximum")

    def _load_file(self, raw: bytes) -> FactMemory:
        """An uploaded memory file, checked against the served model (MemoryFileError -> 400)."""
        try:
            return memory_file.from_bytes(raw, ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold),
                                          latent_dim=self.cfg.latent_dim, encoder=self.cfg.encoder,
                                          scope_model=self.cfg.scope_model)
        except memory_file.MemoryFileError as err:
            raise StoreError(str(err)) from None

    def prepare_import(self, tenant: str, name: str, raw: bytes) -> dict:
        """A memory file (`larimar.memory_file`) becomes a new memory, logged whole like any edit."""
        mem = self._load_file(raw)
        if not 1 <= mem.state.K <= self.cfg.max_slots:
            raise StoreError(f"the memory has {mem.state.K} slots; this server allows 1 to {self.cfg.max_slots}")
        self._check_quota(tenant)
        return {"op": "import", "tenant": tenant, "memory_id": f"mem_{uuid.uuid4().hex[:16]}", "name": name,
                "created": time.time(), "file": base64.b64encode(raw).decode()}

    def export(self, tenant: str, memory_id: str) -> bytes:
        """The memory as a memory file: what `prepare_import` and `LarimarEditor.load_memory` read."""
        return memory_file.to_bytes(self.get(tenant, memory_id).memory, self.cfg.encoder, self.cfg.scope_model)

    def prepare_write(self, tenant: str, memory_id: str, facts: list[dict], keys: torch.Tensor, values: torch.Tensor,
                      scope_vectors: torch.Tensor, pending: int = 0) -> dict:
        """facts: [{"text"} or {"prompt", "target"}]; `pending` facts are already queued ahead in this batch."""
        rec = self.get(tenant, memory_id)
        checked = [make_fact(f.get("text"), f.get("prompt"), f.get("target"), f.get("subject"))
                   for f in facts]  # ValueError -> 400
        if not checked:
            raise StoreError("write at least one fact")
        try:
            rec.memory.check_room(pending + len(checked))
        except RuntimeError as err:
            raise Conflict(str(err)) from None
        return {"op": "write", "tenant": tenant, "memory_id": memory_id,
                "requests": [{"facts": [asdict(f) for f in checked], "keys": _pack(keys), "values": _pack(values),
                              "scope": _pack(scope_vectors)}]}

    def prepare_forget(self, tenant: str, memory_id: str, fact_id: int) -> dict:
        rec = self.get(tenant, memory_id)
        if fact_id not in rec.memory.facts:
            raise NotFound(f"fact {fact_id} not found in memory {memory_id!r}")
        return {"op": "forget", "tenant": tenant, "memory_id": memory_id, "fact_id": fact_id}

    def prepare_delete(self, tenant: str, memory_id: str) -> dict:
        self.get(tenant, memory_id)
        return {"op": "delete", "tenant": tenant, "memory_id": memory_id}

    @staticmethod
    def merge_writes(entries: list[dict]) -> list[dict]:
        """Concurrent writes to one memory become one entry (one low-rank update), in arrival order."""
        merged: dict[str, dict] = {}
        for e in entries:
            if e["memory_id"] in merged:
                merged[e["memory_id"]]["requests"].extend(e["requests"])
            else:
                merged[e["memory_id"]] = {**e, "requests": list(e["requests"])}
        return list(merged.values())

    # -- step 2: persist ------------------------------------------------------------------------

    def persist(self, entry: dict) -> dict:
        entry = {**entry, "seq": self.seq + 1}
        self.storage.put(f"log/{entry['seq']:012d}.json", json.dumps(entry).encode())
        return entry

    # -- step 3: apply --------------------------------------------------------------------------

    def apply(self, entry: dict):
        if entry["seq"] != self.seq + 1:
            raise RuntimeError(f"log entry {entry['seq']} applied out of order after {self.seq}")
        op = entry["op"]
        if op == "create":
            info = MemoryInfo(entry["memory_id"], entry["tenant"], entry["name"], entry["slots"], 0, entry["created"])
            ref = reference_memory(info.slots, self.cfg.latent_dim)
            memory = FactMemory(SequentialMemory(ref, ridge=self.cfg.ridge, keys=entry.get("keys", "linear")), info.slots,
                                ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold),
                                readout=self.cfg.readout)
            self.records[info.id] = Record(info, memory)
            result = info
        elif op == "write":
            rec = self.records[entry["memory_id"]]
            facts, keys, values, scope = [], [], [], []
            for req in entry["requests"]:
                facts.extend(make_fact(f["text"] if f["prompt"] is None else None, f["prompt"], f["target"],
                                       f.get("subject")) for f in req["facts"])
                keys.append(_unpack(req["keys"]))
                values.append(_unpack(req["values"]))
                scope.append(_unpack(req["scope"]))
            ids = rec.memory.write(facts, torch.cat(keys), torch.cat(values), torch.cat(scope))
            result, start = [], 0
            for req in entry["requests"]:  # one version per acknowledged request
                rec.info.version += 1
                mine = ids[start : start + len(req["facts"])]
                start += len(req["facts"])
                for i in mine:
                    rec.events.append({"version": rec.info.version, "op": "write", "fact_id": i,
                                       "text": rec.memory.facts[i].text})
                result.append({"ids": mine, "version": rec.info.version})
        elif op == "forget":
            rec = self.records[entry["memory_id"]]
            text = rec.memory.facts[entry["fact_id"]].text
            rec.memory.forget(entry["fact_id"])
            rec.info.version += 1
            rec.events.append({"version": rec.info.version, "op": "forget", "fact_id": entry["fact_id"], "text": text})
            result = rec.info.version
        elif op == "import":
            memory = self._load_file(base64.b64decode(entry["file"]))
            memory.readout = self.cfg.readout  # the served model's convention, as for created memories
            info = MemoryInfo(entry["memory_id"], entry["tenant"], entry["name"], memory.state.K, 1, entry["created"])
            events = [{"version": 1, "op": "import", "fact_id": i, "text": f.text} for i, f in memory.facts.items()]
            self.records[info.id] = Record(info, memory, events)
            result = info
        elif op == "delete":
            result = self.records.pop(entry["memory_id"]).info
        else:
            raise RuntimeError(f"unknown log entry op {op!r}")
        self.seq = entry["seq"]
        return result

    def commit(self, entry: dict):
        """persist + apply, then snapshot when due (the synchronous path; the actor splits them)."""
        result = self.apply(self.persist(entry))
        self.maybe_snapshot()
        return result

    # -- reads ----------------------------------------------------------------------------------

    def read(self, tenant: str, memory_id: str, queries: torch.Tensor, sentence_vectors: torch.Tensor | None,
             owners: list[int] | None, texts: list[str]) -> tuple[torch.Tensor, list[ScopeMatch] | None, int]:
        """(n, C) query latents of `texts` -> read-outs (0 where out of scope), scope matches, the version read."""
        rec = self.get(tenant, memory_id)
        matches = None
        if sentence_vectors is not None and rec.memory.scope is not None:
            matches = rec.memory.scope.match_vectors(sentence_vectors, owners, texts)
        return rec.memory.read(queries, matches), matches, rec.info.version

    # -- snapshots ------------------------------------------------------------------------------

    def maybe_snapshot(self) -> bool:
        if self.seq - self.snapshot_seq >= self.cfg.snapshot_every:
            self.snapshot()
            return True
        return False

    def snapshot(self) -> None:
        state = {"seq": self.seq, "records": {
            mid: {"info": asdict(r.info), "events": r.events, "memory": r.memory.state_dict()}
            for mid, r in self.records.items()}}
        buf = io.BytesIO()
        torch.save(state, buf)
        self.storage.put("snapshot.pt", buf.getvalue())
        covered = self.seq
        self.snapshot_seq, self.last_snapshot_time = covered, time.time()
        for name in self.storage.list("log"):
            if int(name.rsplit("/", 1)[-1].split(".")[0]) <= covered:
                self.storage.delete(name)

    def restore(self) -> None:
        raw = self.storage.get("snapshot.pt")
        if raw is not None:
            state = torch.load(io.BytesIO(raw), weights_only=False)
            for mid, r in state["records"].items():
                scope = ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold)
                self.records[mid] = Record(MemoryInfo(**r["info"]), FactMemory.from_state_dict(r["memory"], scope),
                                           r["events"])
            self.seq = self.snapshot_seq = state["seq"]
        for name in self.storage.list("log"):
            entry = json.loads(self.storage.get(name))
            if entry["seq"] <= self.seq:
                continue  # already in the snapshot (a crash came between snapshot and log cleanup)
            self.apply(entry)
            self.restored_entries += 1
