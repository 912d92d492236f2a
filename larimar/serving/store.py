"""The durable, multi-tenant store of memories that the serving memory actor owns.

Every change is an *entry* that goes through three steps, always in this order:

1. ``prepare_*`` validates the request against the current state (ownership, capacity, fact ids,
   quotas) and builds the entry; nothing changes yet, so a refused request leaves no trace.
2. ``persist`` gives the entry the next sequence number and a SHA-256 checksum and writes it
   durably to the append-only log (``log/<seq>-<memory_id>.json``); only after this may the edit
   be acknowledged.
3. ``apply`` mutates the in-memory state. It cannot fail for a prepared entry, and it is the
   same function that replays the log on restart, so the restored state is the acknowledged one.

Snapshots (every ``snapshot_every`` entries) hold one memory file per memory
(``snapshot/<memory_id>-<version>.safetensors``, `larimar.memory_file`: tensors and JSON, nothing
that can execute code) and an index (``snapshot/index.json``: sequence number, each memory's info,
event history, file and its checksum, the idempotency table). Only memories that changed since
the last snapshot are written again; the index is replaced atomically last, then the files and
log entries it covers are deleted. A legacy ``snapshot.pt`` is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

Damage is contained per memory. Each entry names its memory (in the file name and the body),
carries the memory's version before it (`base_version`) and a checksum. On restore, an entry that
cannot be read, fails its checksum, or does not follow its memory's last version marks *that*
memory damaged: its later entries are skipped (left on disk), requests for it get 503 naming the
file and the sequence numbers, and every other memory is served. ``python -m
larimar.serving.repair`` rolls a damaged memory back to its last consistent state.

Forgetting erases: a forgotten fact's text leaves the memory's history at once (its write event
keeps the fact id, a tombstone), and leaves storage at the next snapshot, which no longer holds
the fact and deletes the log entries that did. The history is capped at ``max_events`` per memory.

Latents (keys, values, scope embeddings) are computed by the encoder deployment and stored in the
entries as float32 bytes, so replay needs no model and reproduces the state bit for bit.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from larimar import memory_file
from larimar.facts import FactMemory, MemorySpec, make_fact
from larimar.scope import ScopeDetector, ScopeMatch
from larimar.serving.storage import Storage

log = logging.getLogger(__name__)
INDEX = "snapshot/index.json"
LEGACY_SNAPSHOT = "snapshot.pt"
_LOG_NAME = re.compile(r"^log/(\d+)(?:-(mem_[0-9a-f]+))?\.json$")


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status the API answers with."""

    status = 400
    code: str | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class QuotaExceeded(StoreError):
    status = 429
    code = "quota_exceeded"


class Unavailable(StoreError):
    """A damaged memory: the store keeps serving the others."""

    status = 503
    code = "memory_unavailable"


@dataclass
class StoreConfig:
    storage: str = "runs/serve-store"  # local directory or s3://bucket/prefix
    latent_dim: int = 768  # C of the served model (keys)
    value_dim: int | None = None  # V, its values' width (`LarimarModel.value_dim`); None: C
    snapshot_every: int = 200  # log entries between snapshots
    default_slots: int = 512  # K of a new memory unless the request says otherwise
    max_slots: int = 4096
    max_memories_per_tenant: int = 1000
    max_bytes_per_tenant: int = 4 * 2**30  # memory state + latents + texts, summed over a tenant's memories
    max_events: int = 1000  # history entries kept per memory (the oldest go first)
    max_idempotency_keys: int = 100_000  # remembered Idempotency-Keys (the oldest go first)
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
    events: list[dict] = field(default_factory=list)  # {"version", "op", "fact_id", "text"}; text None once forgotten
    nbytes: int = 0  # memory_bytes(memory), kept current by apply: quota checks sum these, not the facts


@dataclass
class Damage:
    """Why a memory is unavailable: the first entry that could not be applied, and what was skipped."""

    memory_id: str
    tenant: str | None
    file: str
    seq: int
    reason: str
    last_good_version: int
    skipped: list[int] = field(default_factory=list)  # sequence numbers of its later entries, left on disk

    def message(self) -> str:
        return (
            f"memory {self.memory_id!r} is unavailable: {self.file} (seq {self.seq}) {self.reason}; "
            f"{len(self.skipped)} later entries skipped (seq {self.skipped[:10]}); it is consistent up to "
            f"version {self.last_good_version}: `python -m larimar.serving.repair --storage <dir> --memory "
            f"{self.memory_id}` rolls it back there"
        )


def _pack(t: torch.Tensor) -> dict:
    a = np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4")
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _unpack(d: dict) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"]).copy())


def checksum(entry: dict) -> str:
    """SHA-256 of the entry's canonical JSON without its own checksum field."""
    body = {k: v for k, v in entry.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def log_name(entry: dict) -> str:
    return f"log/{entry['seq']:012d}-{entry['memory_id']}.json"


def memory_bytes(memory: FactMemory) -> int:
    """What a memory costs the server: its RLS state (P is K x K, the reference K x C and M K x V,
    float64), the stored keys and values and scope vectors (float32) and the texts."""
    K, C, V = memory.state.K, memory.state.C, memory.state.V
    texts = sum(
        len(f.text.encode()) + len((f.prompt or "").encode()) + len((f.subject or "").encode())
        for f in memory.facts.values()
    )
    vectors = memory.scope._vectors if memory.scope is not None else None
    scope = 4 * int(vectors.numel()) if vectors is not None else 0  # the stored scope vectors, whatever their width
    return 8 * (K * K + K * (C + V)) + 4 * (C + V) * len(memory.facts) + scope + texts


def new_memory_bytes(slots: int, latent_dim: int, value_dim: int | None = None) -> int:
    return 8 * (slots * slots + slots * (latent_dim + (value_dim or latent_dim)))


class MemoryStore:
    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self._value_dim = cfg.value_dim or cfg.latent_dim
        self.storage = Storage(cfg.storage)
        self.records: dict[str, Record] = {}
        self.damaged: dict[str, Damage] = {}
        self.problems: list[str] = []  # store-level findings of restore (an unreadable snapshot, a log gap)
        self.idempotency: OrderedDict[str, dict] = OrderedDict()  # "tenant\0key" -> {"hash", "result"}
        self.seq = 0  # last persisted and applied entry
        self.snapshot_seq = 0
        self.restored_entries = 0
        self.last_snapshot_time = time.time()
        self._snapshot_files: dict[str, tuple[int, str, str]] = {}  # mid -> (version, file, sha256) in the index
        self.restore()

    # -- lookups --------------------------------------------------------------------------------

    def get(self, tenant: str, memory_id: str) -> Record:
        rec = self.records.get(memory_id)
        if rec is None or rec.info.tenant != tenant:  # another tenant's memory does not exist for you
            damage = self.damaged.get(memory_id)
            if damage is not None and damage.tenant in (tenant, None):
                raise Unavailable(damage.message())
            raise NotFound(f"memory {memory_id!r} not found")
        return rec

    def list(self, tenant: str) -> list[MemoryInfo]:
        return [r.info for r in self.records.values() if r.info.tenant == tenant]

    def tenant_bytes(self, tenant: str) -> int:
        return sum(r.nbytes for r in self.records.values() if r.info.tenant == tenant)

    # -- idempotency ----------------------------------------------------------------------------

    @staticmethod
    def request_hash(payload) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def replay(self, tenant: str, key: str | None, payload_hash: str):
        """The first answer to a retried request with this Idempotency-Key, or None if it is new."""
        if key is None:
            return None
        seen = self.idempotency.get(f"{tenant}\0{key}")
        if seen is None:
            return None
        if seen["hash"] != payload_hash:
            raise Conflict(f"Idempotency-Key {key!r} was already used for a different request")
        return seen["result"]

    def _remember(self, tenant: str, key: str | None, payload_hash: str | None, result) -> None:
        if key is None:
            return
        self.idempotency[f"{tenant}\0{key}"] = {"hash": payload_hash, "result": result}
        while len(self.idempotency) > self.cfg.max_idempotency_keys:
            self.idempotency.popitem(last=False)

    # -- step 1: prepare ------------------------------------------------------------------------

    def _check_quota(self, tenant: str, more_bytes: int) -> None:
        if len(self.list(tenant)) >= self.cfg.max_memories_per_tenant:
            raise Conflict(f"tenant already has {self.cfg.max_memories_per_tenant} memories, the maximum")
        used = self.tenant_bytes(tenant)
        if used + more_bytes > self.cfg.max_bytes_per_tenant:
            raise QuotaExceeded(
                f"this tenant's memories take {used} bytes; {more_bytes} more would exceed its "
                f"budget of {self.cfg.max_bytes_per_tenant} bytes (delete memories or use fewer slots)"
            )

    def create_hash(self, name: str, slots: int, keys: str, seed: int = 0) -> str:
        """What an Idempotency-Key's retry must repeat (seed 0 hashes as before seeds existed)."""
        return self.request_hash([name, slots, keys] + ([seed] if seed else []))

    def prepare_create(
        self,
        tenant: str,
        name: str = "",
        slots: int | None = None,
        keys: str = "linear",
        idempotency_key: str | None = None,
        seed: int = 0,
    ) -> dict:
        slots = slots or self.cfg.default_slots
        if not 1 <= slots <= self.cfg.max_slots:
            raise StoreError(f"slots must be between 1 and {self.cfg.max_slots}, got {slots}")
        try:  # the spec `apply` will build: a bad one is refused here, never logged
            MemorySpec(slots, ridge=self.cfg.ridge, seed=seed, keys=keys)
        except ValueError as err:
            raise StoreError(str(err)) from None
        self._check_quota(tenant, new_memory_bytes(slots, self.cfg.latent_dim, self._value_dim))
        if not 0 <= seed < 2**31:
            raise StoreError(f"seed must be in [0, 2**31), got {seed}")
        return {
            "op": "create",
            "tenant": tenant,
            "memory_id": f"mem_{uuid.uuid4().hex[:16]}",
            "name": name,
            "slots": slots,
            "keys": keys,
            "seed": seed,
            "created": time.time(),
            "base_version": 0,
            "idempotency_key": idempotency_key,
            "request_hash": self.create_hash(name, slots, keys, seed) if idempotency_key else None,
        }

    def _load_file(self, raw: bytes) -> FactMemory:
        """An uploaded memory file, checked against the served model (MemoryFileError -> 400)."""
        try:
            return memory_file.from_bytes(
                raw,
                ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold),
                latent_dim=self.cfg.latent_dim,
                value_dim=self._value_dim,
                encoder=self.cfg.encoder,
                scope_model=self.cfg.scope_model,
            )
        except memory_file.MemoryFileError as err:
            raise StoreError(str(err)) from None

    def prepare_import(self, tenant: str, name: str, raw: bytes) -> dict:
        """A memory file (`larimar.memory_file`) becomes a new memory, logged whole like any edit."""
        mem = self._load_file(raw)
        if not 1 <= mem.state.K <= self.cfg.max_slots:
            raise StoreError(f"the memory has {mem.state.K} slots; this server allows 1 to {self.cfg.max_slots}")
        self._check_quota(tenant, memory_bytes(mem))
        return {
            "op": "import",
            "tenant": tenant,
            "memory_id": f"mem_{uuid.uuid4().hex[:16]}",
            "name": name,
            "created": time.time(),
            "base_version": 0,
            "file": base64.b64encode(raw).decode(),
        }

    def export(self, tenant: str, memory_id: str) -> bytes:
        """The memory as a memory file: what `prepare_import` and `LarimarEditor.load_memory` read."""
        return memory_file.to_bytes(self.get(tenant, memory_id).memory, self.cfg.encoder, self.cfg.scope_model)

    def prepare_write(
        self,
        tenant: str,
        memory_id: str,
        facts: list[dict],
        keys: torch.Tensor,
        values: torch.Tensor,
        scope_vectors: torch.Tensor,
        pending: int = 0,
        idempotency_key: str | None = None,
    ) -> dict:
        """facts: [{"text"} or {"prompt", "target"}]; `pending` facts are already queued ahead in this batch."""
        rec = self.get(tenant, memory_id)
        checked = [
            make_fact(f.get("text"), f.get("prompt"), f.get("target"), f.get("subject")) for f in facts
        ]  # ValueError -> 400
        if not checked:
            raise StoreError("write at least one fact")
        try:
            rec.memory.check_room(pending + len(checked))
        except RuntimeError as err:
            raise Conflict(str(err)) from None
        # texts (twice: fact log and events), float32 key and value latents, the scope vectors as sent
        text_bytes = (
            sum(len(f.text.encode()) * 2 for f in checked)
            + 4 * (self.cfg.latent_dim + self._value_dim) * len(checked)
            + 4 * int(scope_vectors.numel())
        )
        self._check_quota_bytes(tenant, text_bytes)
        return {
            "op": "write",
            "tenant": tenant,
            "memory_id": memory_id,
            "base_version": rec.info.version,
            "requests": [
                {
                    "facts": [asdict(f) for f in checked],
                    "keys": _pack(keys),
                    "values": _pack(values),
                    "scope": _pack(scope_vectors),
                    "idempotency_key": idempotency_key,
                    "request_hash": self.request_hash(facts) if idempotency_key else None,
                }
            ],
        }

    def _check_quota_bytes(self, tenant: str, more: int) -> None:
        used = self.tenant_bytes(tenant)
        if used + more > self.cfg.max_bytes_per_tenant:
            raise QuotaExceeded(
                f"this tenant's memories take {used} bytes; writing {more} more would exceed its "
                f"budget of {self.cfg.max_bytes_per_tenant} bytes"
            )

    def prepare_forget(self, tenant: str, memory_id: str, fact_id: int) -> dict:
        rec = self.get(tenant, memory_id)
        if fact_id not in rec.memory.facts:
            raise NotFound(f"fact {fact_id} not found in memory {memory_id!r}")
        return {
            "op": "forget",
            "tenant": tenant,
            "memory_id": memory_id,
            "fact_id": fact_id,
            "base_version": rec.info.version,
        }

    def prepare_delete(self, tenant: str, memory_id: str) -> dict:
        rec = self.get(tenant, memory_id)
        return {"op": "delete", "tenant": tenant, "memory_id": memory_id, "base_version": rec.info.version}

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
        entry["checksum"] = checksum(entry)
        self.storage.put(log_name(entry), json.dumps(entry).encode())
        return entry

    # -- step 3: apply --------------------------------------------------------------------------

    def _event(self, rec: Record, event: dict) -> None:
        rec.events.append(event)
        if len(rec.events) > self.cfg.max_events:
            del rec.events[: len(rec.events) - self.cfg.max_events]

    def apply(self, entry: dict):
        if entry["seq"] <= self.seq:
            raise RuntimeError(f"log entry {entry['seq']} applied out of order after {self.seq}")
        op = entry["op"]
        if op == "create":
            info = MemoryInfo(entry["memory_id"], entry["tenant"], entry["name"], entry["slots"], 0, entry["created"])
            spec = MemorySpec(
                info.slots, ridge=self.cfg.ridge, seed=entry.get("seed", 0), keys=entry.get("keys", "linear")
            )
            memory = spec.build(
                self.cfg.latent_dim,
                ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold),
                self.cfg.readout,
                value_dim=self._value_dim,
            )
            self.records[info.id] = Record(info, memory)
            result = info
            self._remember(entry["tenant"], entry.get("idempotency_key"), entry.get("request_hash"), info.id)
        elif op == "write":
            rec = self.records[entry["memory_id"]]
            facts, keys, values, scope = [], [], [], []
            for req in entry["requests"]:
                facts.extend(
                    make_fact(f["text"] if f["prompt"] is None else None, f["prompt"], f["target"], f.get("subject"))
                    for f in req["facts"]
                )
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
                    self._event(
                        rec,
                        {"version": rec.info.version, "op": "write", "fact_id": i, "text": rec.memory.facts[i].text},
                    )
                answer = {"ids": mine, "version": rec.info.version}
                result.append(answer)
                self._remember(entry["tenant"], req.get("idempotency_key"), req.get("request_hash"), answer)
        elif op == "forget":
            rec = self.records[entry["memory_id"]]
            fact_id = entry["fact_id"]
            rec.memory.forget(fact_id)
            rec.info.version += 1
            for e in rec.events:  # tombstones: the fact's text leaves the history at once
                if e.get("fact_id") == fact_id:
                    e["text"], e["forgotten"] = None, True
            self._event(rec, {"version": rec.info.version, "op": "forget", "fact_id": fact_id, "text": None})
            result = rec.info.version
        elif op == "import":
            memory = self._load_file(base64.b64decode(entry["file"]))
            memory.readout = self.cfg.readout  # the served model's convention, as for created memories
            info = MemoryInfo(entry["memory_id"], entry["tenant"], entry["name"], memory.state.K, 1, entry["created"])
            rec = Record(info, memory)
            for i, f in memory.facts.items():
                self._event(rec, {"version": 1, "op": "import", "fact_id": i, "text": f.text})
            self.records[info.id] = rec
            result = info
        elif op == "delete":
            result = self.records.pop(entry["memory_id"]).info
        else:
            raise RuntimeError(f"unknown log entry op {op!r}")
        rec = self.records.get(entry["memory_id"])
        if rec is not None:
            rec.nbytes = memory_bytes(rec.memory)
        self.seq = entry["seq"]
        return result

    def commit(self, entry: dict):
        """persist + apply, then snapshot when due (the synchronous path; the actor splits them)."""
        result = self.apply(self.persist(entry))
        self.maybe_snapshot()
        return result

    # -- reads ----------------------------------------------------------------------------------

    def read(
        self,
        tenant: str,
        memory_id: str,
        queries: torch.Tensor,
        sentence_vectors: torch.Tensor | None,
        owners: list[int] | None,
        texts: list[str],
    ) -> tuple[torch.Tensor, list[ScopeMatch] | None, int]:
        """(n, C) query latents of `texts` -> read-outs (0 where out of scope), scope matches, the version read."""
        rec = self.get(tenant, memory_id)
        matches = None
        if sentence_vectors is not None and rec.memory.scope is not None:
            matches = rec.memory.scope.match_vectors(sentence_vectors, owners, texts)
        return rec.memory.read(queries, matches), matches, rec.info.version

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        return self.seq - self.snapshot_seq >= self.cfg.snapshot_every

    def maybe_snapshot(self) -> bool:
        if self.snapshot_due():
            self.snapshot()
            return True
        return False

    def snapshot(self) -> None:
        self.write_snapshot(self.prepare_snapshot())

    def prepare_snapshot(self) -> dict:
        """The consistent part (call it between two applied entries): serialise the memories that
        changed since the last snapshot and build the index. No I/O: the memory actor runs this under
        its lock and `write_snapshot` outside it, so writes wait only for the serialisation."""
        blobs, files = {}, {}
        for mid, r in self.records.items():
            known = self._snapshot_files.get(mid)
            if known is not None and known[0] == r.info.version:
                files[mid] = known  # unchanged since the last snapshot: its file stays
                continue
            raw = memory_file.to_bytes(r.memory, self.cfg.encoder, self.cfg.scope_model)
            name = f"snapshot/{mid}-{r.info.version}.safetensors"
            blobs[name] = raw
            files[mid] = (r.info.version, name, hashlib.sha256(raw).hexdigest())
        index = {
            "format": 2,
            "seq": self.seq,
            "time": time.time(),
            "records": {
                mid: {
                    "info": asdict(r.info),
                    "events": [dict(e) for e in r.events],
                    "file": files[mid][1],
                    "sha256": files[mid][2],
                }
                for mid, r in self.records.items()
            },
            "damaged": [asdict(d) for d in self.damaged.values()],
            "idempotency": list(self.idempotency.items()),
        }
        return {
            "blobs": blobs,
            "files": files,
            "index": json.dumps(index).encode(),
            "seq": self.seq,
            "damaged": set(self.damaged),
        }

    def write_snapshot(self, prepared: dict) -> None:
        """Write the changed memory files, then the index (atomically), then drop what it covers."""
        for name, raw in prepared["blobs"].items():
            self.storage.put(name, raw)
        self.storage.put(INDEX, prepared["index"])
        covered, files = prepared["seq"], prepared["files"]
        self._snapshot_files = files
        self.snapshot_seq, self.last_snapshot_time = covered, time.time()
        keep = {f for _, f, _ in files.values()}
        for name in self.storage.list("snapshot"):
            m = re.match(r"^snapshot/(mem_[0-9a-f]+)-(\d+)\.safetensors$", name)
            if name == INDEX or name in keep:
                continue
            if m is not None and m[1] in self.records and int(m[2]) > files.get(m[1], (0,))[0]:
                continue  # written by a later snapshot than this one
            self.storage.delete(name)
        if self.storage.get(LEGACY_SNAPSHOT) is not None:
            self.storage.delete(LEGACY_SNAPSHOT)
        for name in self.storage.list("log"):
            m = _LOG_NAME.match(name)
            if m is None or int(m[1]) > covered:
                continue
            if m[2] is None or m[2] in prepared["damaged"]:
                continue  # a damaged memory's entries stay for inspection and repair
            self.storage.delete(name)

    # -- restore --------------------------------------------------------------------------------

    def _mark(self, memory_id: str, tenant: str | None, name: str, seq: int, reason: str) -> None:
        rec = self.records.pop(memory_id, None)
        last = rec.info.version if rec is not None else 0
        tenant = rec.info.tenant if rec is not None else tenant
        self.damaged[memory_id] = Damage(memory_id, tenant, name, seq, reason, last)
        log.error(f"[larimar] {self.damaged[memory_id].message()}")

    def _restore_snapshot(self) -> None:
        raw = self.storage.get(INDEX)
        if raw is None:
            self._restore_legacy()
            return
        try:
            index = json.loads(raw)
        except ValueError:
            self.problems.append(f"{INDEX} is not readable JSON: memories are restored from the log alone")
            log.error(f"[larimar] {self.problems[-1]}")
            return
        for mid, r in index["records"].items():
            info = MemoryInfo(**r["info"])
            blob = self.storage.get(r["file"])
            if blob is None or hashlib.sha256(blob).hexdigest() != r["sha256"]:
                self.damaged[mid] = Damage(
                    mid, info.tenant, r["file"], index["seq"], "is missing or fails its checksum", info.version
                )
                log.error(f"[larimar] {self.damaged[mid].message()}")
                continue
            try:
                memory = memory_file.from_bytes(
                    blob,
                    ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold),
                    latent_dim=self.cfg.latent_dim,
                    value_dim=self._value_dim,
                )
            except memory_file.MemoryFileError as err:
                self.damaged[mid] = Damage(mid, info.tenant, r["file"], index["seq"], str(err), info.version)
                continue
            memory.readout = self.cfg.readout
            self.records[mid] = Record(info, memory, r["events"], memory_bytes(memory))
            self._snapshot_files[mid] = (info.version, r["file"], r["sha256"])
        for d in index.get("damaged", []):
            self.damaged.setdefault(d["memory_id"], Damage(**d))
        self.idempotency = OrderedDict((k, v) for k, v in index.get("idempotency", []))
        self.seq = self.snapshot_seq = index["seq"]

    def _restore_legacy(self) -> None:
        """A snapshot.pt of earlier versions, loaded without unpickling code (weights_only)."""
        raw = self.storage.get(LEGACY_SNAPSHOT)
        if raw is None:
            return
        try:
            state = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as err:  # an UnpicklingError for anything but tensors and plain data
            self.problems.append(
                f"{LEGACY_SNAPSHOT} was refused ({type(err).__name__}: it holds more than tensors "
                "and plain data, so it is never unpickled); memories are restored from the log alone"
            )
            log.error(f"[larimar] {self.problems[-1]}")
            return
        for mid, r in state["records"].items():
            scope = ScopeDetector(None, self.cfg.scope_threshold, self.cfg.subject_threshold)
            memory = FactMemory.from_state_dict(r["memory"], scope)
            self.records[mid] = Record(MemoryInfo(**r["info"]), memory, r["events"], memory_bytes(memory))
        self.seq = self.snapshot_seq = state["seq"]

    def restore(self) -> None:
        self._restore_snapshot()
        highest = self.seq
        for name in self.storage.list("log"):
            m = _LOG_NAME.match(name)
            if m is None:
                continue
            seq, named = int(m[1]), m[2]
            if seq > highest + 1:  # a whole entry is gone; the memory it touched shows by its versions
                self.problems.append(f"log entries {highest + 1}..{seq - 1} are missing")
                log.error(f"[larimar] {self.problems[-1]}")
            highest = max(highest, seq)
            if seq <= self.seq:
                continue  # already in the snapshot (a crash came between snapshot and log cleanup)
            if named is not None and named in self.damaged:
                self.damaged[named].skipped.append(seq)
                continue
            try:
                entry = json.loads(self.storage.get(name))
                if entry.get("checksum") is not None and entry["checksum"] != checksum(entry):
                    raise ValueError("fails its checksum (edited or damaged)")
            except (ValueError, TypeError) as err:
                reason = str(err) if "checksum" in str(err) else "is not a readable log entry"
                if named is None:  # a legacy name: the memory is unknown, so is every later state
                    self.problems.append(f"{name} {reason}; its memory is unknown")
                    log.error(f"[larimar] {self.problems[-1]}")
                    continue
                self._mark(named, None, name, seq, reason)
                continue
            mid = entry["memory_id"]
            if mid in self.damaged:
                self.damaged[mid].skipped.append(seq)
                continue
            rec = self.records.get(mid)
            version = rec.info.version if rec is not None else 0
            exists_ok = (rec is None) == (entry["op"] in ("create", "import"))
            if not exists_ok or ("base_version" in entry and entry["base_version"] != version):
                self._mark(
                    mid,
                    entry.get("tenant"),
                    name,
                    seq,
                    f"does not follow version {version} of its memory (an earlier entry is missing)",
                )
                continue
            try:
                self.apply(entry)
            except ValueError as err:  # e.g. latents of another model: the memory, not the server, is lost
                self._mark(mid, entry.get("tenant"), name, seq, f"does not fit this server's model: {err}")
                continue
            self.restored_entries += 1
        self.seq = highest  # new entries never reuse the number of a skipped (damaged) one
