"""Training text for Larimar: raw text -> fixed-length chunks -> episodes, streamed with Ray Data.

The paper trains on WikiText-103 "chunked into 64 token segments" (Das et al. 2024, §4): a
training example is an *episode* of E such chunks, written into one memory and decoded back.

Pipeline, run once in the driver (`prepare_chunks`) so that a bad path fails before Ray starts:
1. Paragraphs: one per non-blank line of a local ``.raw``/``.txt`` file, the ``text_field`` of each
   ``.jsonl`` record, or a hub dataset's text column. WikiText's ``" = Heading = "`` lines are
   dropped everywhere (a heading is not a sentence to remember).
2. Chunks: each paragraph is tokenized with the *decoder* tokenizer and cut into pieces of
   ``chunk_tokens`` tokens (default model.max_length - 2, so ``<bos> chunk <eos>`` is exactly
   max_length). A chunk is kept as the original text span of its tokens (fast-tokenizer offsets),
   because the encoder needs text: `LarimarModel.tokenize_for_encoder`/`_for_decoder` re-tokenize
   and pad it per batch. Chunks never cross paragraphs; a trailing piece under ``min_chunk_tokens``
   tokens is dropped.
3. A `datasets.Dataset` of chunk texts, shuffled once with a seed and cut to ``limit``, handed to
   Ray Data (`to_ray_dataset`). Ray Train splits it into one shard per worker
   (``get_dataset_shard("train")``); `episode_batches` groups each shard's rows into episodes.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from larimar import backbones
from larimar.config import ConfigError
from larimar.fact_corpus import edit_records, edit_rows, fact_sentences
from larimar.train_config import TrainConfig

TEXT_SUFFIXES = (".raw", ".txt", ".jsonl")
SHARED_DATA_PREFIX = "../shared/data/"
_HEADING = re.compile(r"^\s*=.*=\s*$")  # WikiText's " = Title = " and " = = Section = = " lines
ROWS_PER_BLOCK = 1024  # Ray Data block size: enough blocks to split evenly over workers


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve_source(source: str) -> Path | str:
    """A local path (made absolute) or, if `source` does not look like a path, a hub dataset name.

    A relative path is tried against the working directory, then the repo root. A path starting
    with ``../shared/data/`` names the project's shared data directory: ``$LARIMAR_DATA_DIR``
    when set (e.g. inside a ``ray job submit`` working directory, which has no ``../shared``),
    else ``../shared/data`` beside the repo root or the working directory.
    """
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(TEXT_SUFFIXES) or os.path.exists(source)
    if not looks_like_path:
        return source
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, repo_root() / path]
    if source.startswith(SHARED_DATA_PREFIX):
        rest = source[len(SHARED_DATA_PREFIX):]
        if os.environ.get("LARIMAR_DATA_DIR"):
            candidates.insert(0, Path(os.environ["LARIMAR_DATA_DIR"]) / rest)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"data.source: {source!r} not found (tried {tried}); pass data.source=/absolute/path "
                      f"or set LARIMAR_DATA_DIR to the directory that ../shared/data stands for")


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
                    raise ConfigError(f"data.text_field: {path}:{i} has no {text_field!r} field (keys: {sorted(record)})")
                out.extend(p for p in str(record[text_field]).splitlines() if is_paragraph(p))
        return out
    with path.open(encoding="utf-8") as fh:
        return [line.strip() for line in fh if is_paragraph(line)]


def hub_paragraphs(name: str, config: str | None, split: str, text_field: str) -> list[str]:
    """Paragraphs of a Hugging Face hub dataset (needs network or a populated HF cache)."""
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
                piece = offsets[i:i + chunk_tokens]
                if len(piece) >= min_chunk_tokens:
                    chunks.append(text[piece[0][0]:piece[-1][1]].strip())
    else:  # slow tokenizers have no offsets: decode the token pieces instead
        for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]:
            for i in range(0, len(ids), chunk_tokens):
                piece = ids[i:i + chunk_tokens]
                if len(piece) >= min_chunk_tokens:
                    chunks.append(tokenizer.decode(piece).strip())
    return [c for c in chunks if c]


def text_chunks(cfg: TrainConfig) -> datasets.Dataset:
    """data.source cut into chunks (column ``text``), in corpus order."""
    d = cfg.data
    source = resolve_source(d.source)
    if isinstance(source, Path):
        paragraphs = read_paragraphs(source, d.text_field)
    else:
        paragraphs = hub_paragraphs(source, d.hub_config, d.split, d.text_field)
    tokenizer = decoder_tokenizer(cfg.model.decoder)
    datasets.disable_progress_bars()  # seconds of work; the bars would only clutter job logs
    ds = datasets.Dataset.from_dict({"paragraph": paragraphs})
    return ds.map(lambda b: {"text": chunk_paragraphs(b["paragraph"], tokenizer, cfg.chunk_tokens, d.min_chunk_tokens)},
                  batched=True, batch_size=1000, remove_columns=["paragraph"], new_fingerprint="larimar-chunks")


def _local_files(key: str, names: list[str]) -> list[Path]:
    paths = [resolve_source(p) for p in names]
    for name, p in zip(names, paths):
        if not isinstance(p, Path):
            raise ConfigError(f"{key}: {name!r} is not a local file")
    return paths


def fact_texts(cfg: TrainConfig) -> list[str]:
    """data.facts as fact sentences, minus the cases of data.facts_exclude (larimar.fact_corpus)."""
    d = cfg.data
    return fact_sentences(_local_files("data.facts", d.facts), _local_files("data.facts_exclude", d.facts_exclude),
                          d.exclude_subjects)


def edit_texts(cfg: TrainConfig) -> list[dict]:
    """data.edits as keyed training rows {text, key, query, target} (larimar.fact_corpus.edit_rows)."""
    d = cfg.data
    edits = edit_records(_local_files("data.edits", d.edits), _local_files("data.facts_exclude", d.facts_exclude),
                         d.exclude_subjects)
    if not edits:
        raise ConfigError(f"data.edits: no edits left in {d.edits} after the exclusions")
    return edit_rows(edits, d.edit_queries, d.shuffle_seed)


def mixed_episodes(kinds: list[list], episode_size: int, seed: int | None) -> list:
    """Rows such that every run of `episode_size` consecutive rows comes from one kind of text.

    Long text chunks and short fact sentences in one episode would pad every fact to the chunk
    length; grouping them apart keeps each decoder batch's padding small. Episodes of the kinds
    are interleaved in a seeded random order.
    """
    rng = random.Random(seed)
    groups = []
    for texts in kinds:
        texts = list(texts)
        if seed is not None:
            rng.shuffle(texts)
        groups += [texts[i:i + episode_size] for i in range(0, len(texts) - episode_size + 1, episode_size)]
    if seed is not None:
        rng.shuffle(groups)
    return [t for g in groups for t in g]


def prepare_chunks(cfg: TrainConfig) -> datasets.Dataset:
    """The run's chunk dataset (column ``text``), shuffled and limited as configured."""
    d = cfg.data
    if not d.facts and not d.edits:
        ds = text_chunks(cfg)
        if d.shuffle_seed is not None:
            ds = ds.shuffle(seed=d.shuffle_seed)
        if d.limit is not None:
            ds = ds.select(range(min(d.limit, len(ds))))
    else:
        chunks = list(text_chunks(cfg)["text"]) if d.source is not None else []
        if d.source_limit is not None:
            chunks = random.Random(d.shuffle_seed).sample(chunks, min(d.source_limit, len(chunks)))
        plain = [t for t in ([chunks] if chunks else []) + ([fact_texts(cfg)] if d.facts else [])]
        kinds = [[{"text": t, "key": "", "query": "", "target": ""} for t in texts] for texts in plain]
        kinds += [edit_texts(cfg)] if d.edits else []
        # A micro-batch never mixes plain and keyed episodes (they are different objectives).
        group = cfg.chunks_per_micro_batch
        if ROWS_PER_BLOCK % group:
            raise ConfigError(f"optim.micro_batch_episodes x data.episode_size = {group} must divide {ROWS_PER_BLOCK}")
        rows = mixed_episodes(kinds, group, d.shuffle_seed)
        if d.limit is not None:
            rows = rows[:d.limit - d.limit % group]
        columns = ("text", "key", "query", "target") if d.edits else ("text",)
        ds = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
    ds = ds.flatten_indices()
    needed = cfg.chunks_per_micro_batch * cfg.scaling.num_workers
    if len(ds) < needed:
        raise ConfigError(f"data.limit/data.source: {len(ds)} chunks from {d.source!r} cannot fill one micro-batch of "
                          f"{cfg.optim.micro_batch_episodes} episodes x {d.episode_size} chunks on each of "
                          f"{cfg.scaling.num_workers} workers ({needed} chunks)")
    return ds


def to_ray_dataset(ds: datasets.Dataset):
    """An in-memory Ray dataset of several blocks (no Ray Data tasks run: workers read the blocks)."""
    import ray.data

    table: pa.Table = ds.data.table
    blocks = [table.slice(i, ROWS_PER_BLOCK) for i in range(0, table.num_rows, ROWS_PER_BLOCK)]
    return ray.data.from_arrow(blocks)


def episodes(texts: list[str], episode_size: int) -> list[list[str]]:
    """Consecutive groups of `episode_size` texts; a short tail is dropped (a memory needs E)."""
    return [texts[i:i + episode_size] for i in range(0, len(texts) - episode_size + 1, episode_size)]


def episode_batches(shard, chunks_per_batch: int, skip: int = 0, start_epoch: int = 0) -> Iterator[tuple[int, int, list]]:
    """Endless (epoch, batch index in epoch, rows) from a Ray Data shard, one pass per epoch.

    Rows are texts, or {text, key, query, target} dicts when the dataset has keyed edits
    (`larimar.training.episode_batch` takes either).

    `skip` batches of `start_epoch` are read and dropped, so a resumed run continues at the same
    place in the epoch. Ray Data's streaming split assigns blocks to workers dynamically, so the
    rows behind a position may differ between attempts; the amount of data seen per epoch does not.
    """
    epoch = start_epoch
    while True:
        n = 0
        for batch in shard.iter_batches(batch_size=chunks_per_batch, batch_format="numpy", drop_last=True):
            if n >= skip:
                if "key" in batch:
                    cols = ("text", "key", "query", "target")
                    yield epoch, n, [dict(zip(cols, (str(v) for v in vals))) for vals in zip(*(batch[c] for c in cols))]
                else:
                    yield epoch, n, [str(t) for t in batch["text"]]
            n += 1
        if n == 0:
            raise RuntimeError(f"this worker's data shard has fewer than {chunks_per_batch} chunks; "
                               "lower optim.micro_batch_episodes or data.episode_size, or add data")
        skip = 0
        epoch += 1
