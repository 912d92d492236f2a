"""Second moment C = E[k k^T] of the keys entering one MLP output projection, computed once and cached.

ROME (Meng et al., NeurIPS 2022, "Locating and Editing Factual Associations in GPT", §3.1 and
``rome/layer_stats.py``) uses C to spread a rank-one edit along directions the layer rarely
sees: the update's left vector is C^-1 k*. ROME estimates C from 100k Wikipedia samples; we use
the local WikiText-2 raw text (no hub access), tokenised into fixed-length windows that start
with the decoder's BOS, and stop each forward pass right after the hooked layer, since nothing
later matters. The result is cached under ``$LARIMAR_CACHE_DIR/rome_stats`` (default
``~/.cache/larimar/rome_stats``), keyed by a hash of the weights that produce the keys, the
layer, the text file and the token budget, so the one-time cost is paid once per model and layer.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from larimar import backbones
from larimar.baselines.base import mlp_out
from larimar.sources import resolve_source


@dataclass
class LayerStats:
    moment: torch.Tensor  # (d, d) float64, E[k k^T] over `tokens` keys
    tokens: int
    seconds: float  # wall time of the computation (0 when loaded from the cache)
    cached: bool
    path: Path


class _Stop(Exception):
    """Raised by the hook once the layer's keys are captured: the rest of the forward is wasted work."""


def wikitext_windows(
    tok: PreTrainedTokenizerBase, source: str, max_tokens: int, seq_len: int, bos_id: int
) -> torch.Tensor:
    """(n, seq_len) windows of ``<bos>`` + running text, headings dropped, up to max_tokens tokens in all."""
    path = resolve_source(source)
    if not isinstance(path, Path) or not path.is_file():
        raise FileNotFoundError(f"ROME stats: text source {source!r} is not a file")
    ids: list[int] = []
    need = max_tokens * seq_len // (seq_len - 1) + seq_len
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("="):
                continue
            ids += tok(" " + line, add_special_tokens=False)["input_ids"]
            if len(ids) >= need:
                break
    body = seq_len - 1
    n = min(len(ids) // body, -(-max_tokens // body))
    if n == 0:
        raise ValueError(f"ROME stats: {path} holds fewer than {body} tokens")
    rows = torch.tensor(ids[: n * body]).view(n, body)
    return torch.cat([torch.full((n, 1), bos_id), rows], 1)


def _model_key(lm: PreTrainedModel, layer: int) -> str:
    """Hash of every weight that feeds the layer's keys (embeddings and layers 0..layer)."""
    h = hashlib.sha1()
    names = [n for n, _ in lm.named_parameters()]
    prefixes = tuple(f".{i}." for i in range(layer + 1))
    for name, p in zip(names, lm.parameters()):
        if "embed" in name or "wte" in name or "wpe" in name or any(x in name for x in prefixes):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def second_moment(
    lm: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    layer: int,
    source: str,
    max_tokens: int,
    bos_id: int,
    seq_len: int = 128,
    batch_size: int = 8,
    cache: bool = True,
) -> LayerStats:
    module, transposed = mlp_out(lm, layer)
    d = module.weight.shape[0] if transposed else module.weight.shape[1]
    key = f"{_model_key(lm, layer)}-L{layer}-{Path(str(resolve_source(source))).name}-{max_tokens}-{seq_len}"
    path = backbones.cache_dir() / "rome_stats" / f"{key}.pt"
    if cache and path.exists():
        saved = torch.load(path)
        return LayerStats(saved["moment"], int(saved["tokens"]), 0.0, True, path)
    t0 = time.perf_counter()
    windows = wikitext_windows(tok, source, max_tokens, seq_len, bos_id)
    acc = torch.zeros(d, d, dtype=torch.float64)
    count = 0

    def grab(_module, args):
        nonlocal acc, count
        k = args[0].reshape(-1, d).double()
        acc += k.T @ k
        count += k.shape[0]
        raise _Stop

    handle = module.register_forward_pre_hook(grab)
    device = next(lm.parameters()).device
    try:
        for s in range(0, len(windows), batch_size):
            try:
                lm(input_ids=windows[s : s + batch_size].to(device))
            except _Stop:
                pass
    finally:
        handle.remove()
    moment = acc / count
    seconds = time.perf_counter() - t0
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"moment": moment, "tokens": count}, tmp)
        tmp.replace(path)
    return LayerStats(moment, count, seconds, False, path)
