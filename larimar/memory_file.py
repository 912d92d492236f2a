"""One file format for a whole memory: build a knowledge base offline in Python, serve it over
HTTP, export it back. It is a safetensors file (tensors plus string metadata), so loading it can
never execute code, unlike a pickle.

Tensors (float64 memory state, float32 latents):
  ``memory.reference`` (K, C), ``memory.P`` (1, K, K), ``memory.M`` (1, K, V), ``memory.count`` (1,)
      the `SequentialMemory` state, bit for bit: reads after loading equal reads before;
  ``facts.keys`` (n, C), ``facts.values`` (n, V)
      each stored fact's key and value latents, in the order of the ``facts`` metadata (forgetting
      a fact after loading subtracts exactly what was written);
  ``scope.vectors`` (m, E)
      the scope detector's sentence embeddings (absent when the memory has no scope detector).
Metadata (JSON strings):
  ``format`` = "larimar-memory", ``format_version`` = "1";
  ``config``: slots, latent_dim, value_dim (V, the values' width: C unless the model's values live
      in decoder space; absent in older files, meaning C), capacity, next_id, readout, ridge, keys ("linear"/"relu"), and
      the encoder and scope model names the latents were made with (loading checks them);
  ``facts``: [{"id", "text", "prompt", "target", "subject"}] in id order;
  ``scope``: {"ids", "subjects"} (the fact id and casefolded subject of each scope vector).

`EditableMemory.save` / `LarimarEditor.load_memory` use it in Python; the server's
`POST /v1/memories/import` and `GET /v1/memories/{id}/export` take and give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load, save

from larimar.facts import Fact, FactMemory
from larimar.memory import SequentialMemory
from larimar.scope import ScopeDetector

FORMAT, VERSION = "larimar-memory", "1"


class MemoryFileError(ValueError):
    """Not a Larimar memory file, or one made for another model."""


def to_bytes(memory: FactMemory, encoder: str | None = None, scope_model: str | None = None) -> bytes:
    state = memory.state.state_dict()
    ids = sorted(memory.facts)
    C, V = memory.state.C, memory.state.V
    tensors = {f"memory.{k}": state[k].contiguous() for k in ("reference", "P", "M", "count")}
    tensors["facts.keys"] = torch.stack([memory.latents[i][0] for i in ids]).float() if ids else torch.zeros(0, C)
    tensors["facts.values"] = torch.stack([memory.latents[i][1] for i in ids]).float() if ids else torch.zeros(0, V)
    scope_meta = None
    if memory.scope is not None:
        s = memory.scope.state_dict()
        vectors = s["vectors"]
        tensors["scope.vectors"] = (vectors if vectors is not None and len(s["ids"]) else torch.zeros(0, 0)).float()
        scope_meta = {"ids": s["ids"], "subjects": s["subjects"]}
    config = {
        "slots": memory.state.K,
        "latent_dim": C,
        "value_dim": V,
        "capacity": memory.capacity,
        "next_id": memory.next_id,
        "readout": memory.readout,
        "ridge": memory.state.ridge,
        "keys": memory.state.key_kind,
        "encoder": encoder,
        "scope_model": scope_model,
    }
    meta = {
        "format": FORMAT,
        "format_version": VERSION,
        "config": json.dumps(config),
        "facts": json.dumps([asdict(memory.facts[i]) for i in ids]),
        "scope": json.dumps(scope_meta),
    }
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)


def _metadata(raw: bytes) -> dict:
    """The header of a safetensors file: 8-byte little-endian length, then JSON."""
    if len(raw) < 8:
        raise MemoryFileError("not a Larimar memory file: too short")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise MemoryFileError("not a Larimar memory file: damaged header")
    try:
        return json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError):
        raise MemoryFileError("not a Larimar memory file: unreadable header") from None


def read_config(raw: bytes) -> dict:
    meta = _metadata(raw)
    if meta.get("format") != FORMAT:
        raise MemoryFileError(f"not a Larimar memory file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != VERSION:
        raise MemoryFileError(f"memory file format version {meta.get('format_version')!r}; this build reads {VERSION}")
    return json.loads(meta["config"])


def from_bytes(
    raw: bytes,
    scope: ScopeDetector | None,
    latent_dim: int | None = None,
    encoder: str | None = None,
    scope_model: str | None = None,
    value_dim: int | None = None,
) -> FactMemory:
    """A `FactMemory` from a file's bytes. latent_dim / value_dim / encoder / scope_model, when given,
    must match what the file was made with: latents of another encoder would read back nonsense."""
    cfg = read_config(raw)
    if latent_dim is not None and cfg["latent_dim"] != latent_dim:
        raise MemoryFileError(f"the memory has {cfg['latent_dim']}-dimensional latents; this model's are {latent_dim}")
    stored_v = cfg.get("value_dim", cfg["latent_dim"])
    if value_dim is not None and stored_v != value_dim:
        raise MemoryFileError(f"the memory has {stored_v}-dimensional values; this model's are {value_dim}")
    for name, want in (("encoder", encoder), ("scope_model", scope_model)):
        if want is not None and cfg.get(name) is not None and cfg[name] != want:
            raise MemoryFileError(f"the memory was made with {name} {cfg[name]!r}; this model uses {want!r}")
    meta = _metadata(raw)
    try:
        t = load(raw)
    except Exception as err:  # safetensors raises its own error types for damaged data
        raise MemoryFileError(f"damaged memory file: {err}") from None
    state = {k: t[f"memory.{k}"] for k in ("reference", "P", "M", "count")}
    state["ridge"] = torch.tensor(cfg["ridge"], dtype=torch.float64)
    state["relu_keys"] = torch.tensor(cfg["keys"] == "relu")
    facts = [Fact(**f) for f in json.loads(meta["facts"])]
    if len(facts) != len(t["facts.keys"]) or len(facts) != len(t["facts.values"]):
        raise MemoryFileError(f"damaged memory file: {len(facts)} facts but {len(t['facts.keys'])} keys")
    mem = FactMemory(
        SequentialMemory.from_state_dict(state), cfg["capacity"], scope, next_id=cfg["next_id"], readout=cfg["readout"]
    )
    mem.facts = {f.id: f for f in facts}
    mem.latents = {f.id: (k, v) for f, k, v in zip(facts, t["facts.keys"], t["facts.values"])}
    scope_meta = json.loads(meta["scope"])
    if scope is not None and scope_meta is not None and "scope.vectors" in t:
        scope.load_state_dict(
            {
                "ids": scope_meta["ids"],
                "subjects": scope_meta["subjects"],
                "vectors": t["scope.vectors"] if scope_meta["ids"] else None,
                "threshold": scope.threshold,
                "subject_threshold": scope.subject_threshold,
            }
        )
    return mem


def save_file(memory: FactMemory, path: str | Path, encoder: str | None = None, scope_model: str | None = None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(to_bytes(memory, encoder, scope_model))
    tmp.replace(path)
    return path


def load_file(path: str | Path, scope: ScopeDetector | None, **expect) -> FactMemory:
    return from_bytes(Path(path).read_bytes(), scope, **expect)
