"""Tensors across Serve calls travel as numpy arrays.

Why: Serve pickles a call's arguments and answer (cloudpickle between replicas in Ray's
high-throughput mode), and a pickled torch tensor goes through torch's own storage serialisation
(``torch.storage._load_from_bytes``: a ``torch.load`` per tensor). A single-fact write's keys,
values and scope vectors (three small float32 tensors) took 667 us to pickle and unpickle on an
AVX2 EPYC; the same data as numpy arrays 23 us. Each edit makes that trip twice (the encoder's
answer, the memory actor's request), and under load it was a third of the memory actor's CPU
(py-spy, `jobs/diagnostics/profile_serve_writes.py`: `RPCSerializer.loads_request`).

`pack` turns every CPU tensor of a nested dict / list / tuple into an array (zero-copy), `unpack`
turns arrays back into tensors (zero-copy). The ingress's calls (`availability.Dependency`) pack
what they send and unpack what they get; the methods it calls (`arrays_in_and_out`) unpack their
arguments and pack their answers. So each side works with tensors only, and which process a
tensor came from never changes its values: the conversion is exact. Tensors numpy has no dtype
for (bfloat16) and tensors on a GPU are left to torch's pickling.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import torch


def pack(obj: Any) -> Any:
    """obj with its CPU tensors as numpy arrays (sharing their memory)."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cpu" and obj.dtype != torch.bfloat16 and not obj.requires_grad:
            return obj.contiguous().numpy()
        return obj
    if isinstance(obj, dict):
        return {k: pack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [pack(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(pack(v) for v in obj)
    return obj


def unpack(obj: Any) -> Any:
    """obj with its numpy arrays as tensors (sharing their memory)."""
    if isinstance(obj, np.ndarray):
        if not obj.flags.writeable:  # an array unpickled from a read-only buffer: torch wants to own it
            obj = obj.copy()
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(unpack(v) for v in obj)
    return obj


def arrays_in_and_out(method):
    """A deployment method called through `availability.Dependency`: its arguments unpacked, its
    answer (or each item a streaming method yields) packed."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, *args, **kwargs):
            async for item in method(self, *unpack(args), **unpack(kwargs)):
                yield pack(item)

        return streaming
    if not inspect.iscoroutinefunction(method):
        raise TypeError(f"{method.__qualname__}: arrays_in_and_out wraps async methods")

    @functools.wraps(method)
    async def wrapped(self, *args, **kwargs):
        return pack(await method(self, *unpack(args), **unpack(kwargs)))

    return wrapped
