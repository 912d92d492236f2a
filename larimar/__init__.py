"""Larimar: a language model with an episodic memory that is edited at inference time.

Das et al., "Larimar: Large Language Models with Episodic Memory Control", ICML 2024.
"""

from larimar.config import ConfigError
from larimar.editor import EditableMemory, LarimarEditor
from larimar.facts import Fact, FactMemory, MemoryFullError, UnknownFactError
from larimar.memory import EpisodicMemory, MemoryConfig, SequentialMemory
from larimar.model import LarimarConfig, LarimarModel
from larimar.pinv import PinvConfig, PinvDivergenceError
from larimar.scope import ScopeDetector

__all__ = [
    "ConfigError", "EditableMemory", "EpisodicMemory", "Fact", "FactMemory", "LarimarConfig", "LarimarEditor", "LarimarModel",
    "MemoryConfig", "MemoryFullError", "PinvConfig", "PinvDivergenceError", "ScopeDetector", "SequentialMemory",
    "UnknownFactError",
]
