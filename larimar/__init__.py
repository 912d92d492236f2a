"""Larimar: a language model with an episodic memory that is edited at inference time.

Das et al., "Larimar: Large Language Models with Episodic Memory Control", ICML 2024.

The package is layered; imports point only down (tests/test_layout.py checks it):

    core        larimar.*: model, encoder, decoder, memory, pinv, losses, scope, facts,
                fact_encoder, editor, memory_file, backbones, benchmarks, sources, config, recipes
    evaluation  larimar.evaluation, larimar.baselines (editors compared with Larimar)
    train       larimar.train (loop, Ray Train + DeepSpeed, data, validation, Ray Tune)
    serving     larimar.serving (store, schemas, the Ray Serve application)
    cli         larimar.cli (the ``larimar`` command)

The names below are loaded on first use, so ``import larimar.config`` (and ``larimar --help``)
does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(module: str, namespace: dict, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each exported name from its
    module on first use and keep it: how `larimar` and `larimar.evaluation` re-export without
    importing torch, or every experiment, when only a submodule is wanted."""

    def getattr_(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_


_EXPORTS = {
    "ConfigError": "larimar.config",
    "EditableMemory": "larimar.editor",
    "LarimarEditor": "larimar.editor",
    "Fact": "larimar.facts",
    "FactMemory": "larimar.facts",
    "MemoryFullError": "larimar.facts",
    "UnknownFactError": "larimar.facts",
    "EpisodicMemory": "larimar.memory",
    "MemoryConfig": "larimar.memory",
    "SequentialMemory": "larimar.memory",
    "LarimarConfig": "larimar.model",
    "LarimarModel": "larimar.model",
    "PinvConfig": "larimar.pinv",
    "PinvDivergenceError": "larimar.pinv",
    "ScopeDetector": "larimar.scope",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
