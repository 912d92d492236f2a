"""Where data comes from: data paths (``../shared/data/...`` or ``$LARIMAR_DATA_DIR``) and plain text.

Training (`larimar.train.data`), evaluation (perplexity) and the baselines (ROME's layer
statistics, IKE's demonstrations) all read files through these functions, so a path resolves the
same way everywhere, and WikiText's heading lines are dropped everywhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from larimar import backbones
from larimar.config import ConfigError

TEXT_SUFFIXES = (".raw", ".txt", ".jsonl")
SHARED_DATA_PREFIX = "../shared/data/"
_HEADING = re.compile(r"^\s*=.*=\s*$")  # WikiText's " = Title = " and " = = Section = = " lines


def resolve_source(source: str) -> Path | str:
    """A local path (made absolute) or, if `source` does not look like a path, a hub dataset name.

    A relative path is taken against the working directory: the library never guesses where a
    checkout is. A path starting with ``../shared/data/`` names the project's shared data
    directory: ``$LARIMAR_DATA_DIR`` when set (inside a ``ray job submit`` working directory, or
    an installed wheel run elsewhere), else ``../shared/data`` beside the working directory.
    """
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(TEXT_SUFFIXES) or os.path.exists(source)
    if not looks_like_path:
        return source
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if source.startswith(SHARED_DATA_PREFIX):
        rest = source[len(SHARED_DATA_PREFIX) :]
        if os.environ.get("LARIMAR_DATA_DIR"):
            candidates.insert(0, Path(os.environ["LARIMAR_DATA_DIR"]) / rest)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"data.source: {source!r} not found (tried {tried}); pass data.source=/absolute/path "
        f"or set LARIMAR_DATA_DIR to the directory that ../shared/data stands for"
    )


def is_paragraph(line: str) -> bool:
    return bool(line.strip()) and not _HEADING.match(line)


def read_paragraphs(path: Path, text_field: str = "text") -> list[str]:
    """Paragraphs of a text file, a .jsonl file or every such file in a directory (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ConfigError(f"data.source: directory {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return [p for f in files for p in read_paragraphs(f, text_field)]
    if path.suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise ConfigError(
                        f"data.text_field: {path}:{i} has no {text_field!r} field (keys: {sorted(record)})"
                    )
                out.extend(p for p in str(record[text_field]).splitlines() if is_paragraph(p))
        return out
    with path.open(encoding="utf-8") as fh:
        return [line.strip() for line in fh if is_paragraph(line)]


def hub_paragraphs(name: str, config: str | None, split: str, text_field: str) -> list[str]:
    """Paragraphs of a Hugging Face hub dataset (needs network or a populated HF cache)."""
    import datasets  # heavy, and only this path needs it

    ds = datasets.load_dataset(name, config, split=split)
    if text_field not in ds.column_names:
        raise ConfigError(f"data.text_field: {name} has no column {text_field!r} (columns: {ds.column_names})")
    return [t.strip() for t in ds[text_field] if is_paragraph(t)]


def decoder_tokenizer(name: str):
    """The decoder's tokenizer without loading its weights (the driver only needs to cut chunks)."""
    return backbones.load_tokenizer(name)


def chunk_paragraphs(paragraphs: list[str], tokenizer, chunk_tokens: int, min_chunk_tokens: int = 1) -> list[str]:
    """Cut each paragraph into pieces of `chunk_tokens` decoder tokens; returns their text spans."""
    if not paragraphs:
        return []
    chunks = []
    if tokenizer.is_fast:
        enc = tokenizer(paragraphs, add_special_tokens=False, return_offsets_mapping=True)
        for text, offsets in zip(paragraphs, enc["offset_mapping"]):
            for i in range(0, len(offsets), chunk_tokens):
                piece = offsets[i : i + chunk_tokens]
                if len(piece) >= min_chunk_tokens:
                    chunks.append(text[piece[0][0] : piece[-1][1]].strip())
    else:  # slow tokenizers have no offsets: decode the token pieces instead
        for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]:
            for i in range(0, len(ids), chunk_tokens):
                piece = ids[i : i + chunk_tokens]
                if len(piece) >= min_chunk_tokens:
                    chunks.append(tokenizer.decode(piece).strip())
    return [c for c in chunks if c]
