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

import random
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from larimar.config import ConfigError
from larimar.sources import chunk_paragraphs, decoder_tokenizer, hub_paragraphs, read_paragraphs, resolve_source
from larimar.train.fact_corpus import edit_records, edit_rows, fact_sentences
from larimar.train.config import TrainConfig

ROWS_PER_BLOCK = 1024  # Ray Data block size: enough blocks to split evenly over workers


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
    return ds.map(
        lambda b: {"text": chunk_paragraphs(b["paragraph"], tokenizer, cfg.chunk_tokens, d.min_chunk_tokens)},
        batched=True,
        batch_size=1000,
        remove_columns=["paragraph"],
        new_fingerprint="larimar-chunks",
    )


def _local_files(key: str, names: list[str]) -> list[Path]:
    paths = [resolve_source(p) for p in names]
    for name, p in zip(names, paths):
        if not isinstance(p, Path):
            raise ConfigError(f"{key}: {name!r} is not a local file")
    return paths


def fact_texts(cfg: TrainConfig) -> list[str]:
    """data.facts as fact sentences, minus the cases of data.facts_exclude (larimar.train.fact_corpus)."""
    d = cfg.data
    return fact_sentences(
        _local_files("data.facts", d.facts), _local_files("data.facts_exclude", d.facts_exclude), d.exclude_subjects
    )


def edit_texts(cfg: TrainConfig) -> list[dict]:
    """data.edits as keyed training rows {text, key, query, target} (larimar.train.fact_corpus.edit_rows)."""
    d = cfg.data
    edits = edit_records(
        _local_files("data.edits", d.edits), _local_files("data.facts_exclude", d.facts_exclude), d.exclude_subjects
    )
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
        groups += [texts[i : i + episode_size] for i in range(0, len(texts) - episode_size + 1, episode_size)]
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
            rows = rows[: d.limit - d.limit % group]
        columns = ("text", "key", "query", "target") if d.edits else ("text",)
        ds = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
    ds = ds.flatten_indices()
    needed = cfg.chunks_per_micro_batch * cfg.scaling.num_workers
    if len(ds) < needed:
        raise ConfigError(
            f"data.limit/data.source: {len(ds)} chunks from {d.source!r} cannot fill one micro-batch of "
            f"{cfg.optim.micro_batch_episodes} episodes x {d.episode_size} chunks on each of "
            f"{cfg.scaling.num_workers} workers ({needed} chunks)"
        )
    return ds


def to_ray_dataset(ds: datasets.Dataset):
    """An in-memory Ray dataset of several blocks (no Ray Data tasks run: workers read the blocks)."""
    import ray.data

    table: pa.Table = ds.data.table
    blocks = [table.slice(i, ROWS_PER_BLOCK) for i in range(0, table.num_rows, ROWS_PER_BLOCK)]
    return ray.data.from_arrow(blocks)


def episodes(texts: list[str], episode_size: int) -> list[list[str]]:
    """Consecutive groups of `episode_size` texts; a short tail is dropped (a memory needs E)."""
    return [texts[i : i + episode_size] for i in range(0, len(texts) - episode_size + 1, episode_size)]


def episode_batches(
    shard, chunks_per_batch: int, skip: int = 0, start_epoch: int = 0
) -> Iterator[tuple[int, int, list]]:
    """Endless (epoch, batch index in epoch, rows) from a Ray Data shard, one pass per epoch.

    Rows are texts, or {text, key, query, target} dicts when the dataset has keyed edits
    (`larimar.train.loop.episode_batch` takes either).

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
            raise RuntimeError(
                f"this worker's data shard has fewer than {chunks_per_batch} chunks; "
                "lower optim.micro_batch_episodes or data.episode_size, or add data"
            )
        skip = 0
        epoch += 1
