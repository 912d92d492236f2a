"""Data sources (larimar/sources.py) and training data (larimar/train/data.py): paragraphs, 64-token chunks, episodes, shard iteration."""

import json
from pathlib import Path

import pytest

from larimar.config import ConfigError
from larimar.sources import chunk_paragraphs, decoder_tokenizer, is_paragraph, read_paragraphs, resolve_source
from larimar.train.data import episode_batches, episodes, prepare_chunks
from larimar.train.config import load_train_config
from tests.conftest import SHARED, require_shared

TINY = ["model.encoder=tiny-bert", "model.decoder=tiny-llama", "scaling.num_workers=2"]


@pytest.fixture(scope="module")
def tokenizer():
    return decoder_tokenizer("tiny-llama")


def test_wikitext_headings_and_blank_lines_are_not_paragraphs():
    assert not is_paragraph(" = Homarus gammarus = \n")
    assert not is_paragraph(" = = Description = = \n")
    assert not is_paragraph(" \n")
    assert is_paragraph(" The lobster ( = a crustacean ) is blue . \n")


def test_wikitext_valid_paragraphs():
    path = require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    paragraphs = read_paragraphs(path)
    assert paragraphs[0].startswith("Homarus gammarus , known as the European lobster")
    assert 1000 < len(paragraphs) < 3760  # blank and heading lines are dropped
    assert all(p and p == p.strip() and not p.startswith("=") for p in paragraphs)


def test_chunks_are_text_spans_of_at_most_chunk_tokens(tokenizer):
    path = require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    paragraphs = read_paragraphs(path)[:50]
    chunks = chunk_paragraphs(paragraphs, tokenizer, chunk_tokens=62, min_chunk_tokens=8)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert len(chunks) > len(paragraphs)  # long paragraphs give several chunks
    assert max(lengths) <= 62 + 2  # re-tokenizing a span may merge differently at its edges
    assert sum(n >= 60 for n in lengths) > len(chunks) / 2  # most chunks are full
    assert min(lengths) >= 7
    joined = " ".join(paragraphs)
    assert all(c in joined for c in chunks)  # original text, not a detokenized approximation


def test_short_tails_are_dropped_and_chunks_stay_in_their_paragraph(tokenizer):
    text = " ".join(f"word{i}" for i in range(30))
    chunks = chunk_paragraphs([text, "tiny"], tokenizer, chunk_tokens=10, min_chunk_tokens=3)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(chunks) == n // 10 + (n % 10 >= 3)
    assert "tiny" not in " ".join(chunks)  # 1 token < min_chunk_tokens


def test_txt_jsonl_and_directory_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first line of text\n\n = Heading = \nsecond line\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "a record\nwith two lines"}) + "\n\n" + json.dumps({"text": "another"}) + "\n"
    )
    assert read_paragraphs(tmp_path / "a.txt") == ["first line of text", "second line"]
    assert read_paragraphs(tmp_path / "b.jsonl") == ["a record", "with two lines", "another"]
    assert len(read_paragraphs(tmp_path)) == 5
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ConfigError, match="data.text_field"):
        read_paragraphs(tmp_path / "c.jsonl")


def test_source_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_source("Salesforce/wikitext") == "Salesforce/wikitext"  # a hub name passes through
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.valid.raw").write_text("text\n")
    monkeypatch.setenv("LARIMAR_DATA_DIR", str(tmp_path))
    assert (
        resolve_source("../shared/data/wikitext-2-raw/wiki.valid.raw") == tmp_path / "wikitext-2-raw" / "wiki.valid.raw"
    )
    with pytest.raises(ConfigError, match="data.source.*nowhere.txt"):
        resolve_source("./nowhere.txt")


def test_default_source_resolves_from_any_working_directory_through_larimar_data_dir(tmp_path, monkeypatch):
    """../shared/data/... is the working directory's, or $LARIMAR_DATA_DIR's; the library never
    looks for a checkout (an installed wheel has none), and the error says what to set."""
    path = require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    source = load_train_config(None).data.source
    assert resolve_source(source) == path.resolve()  # from the repo root, ../shared is beside it
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LARIMAR_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="LARIMAR_DATA_DIR"):
        resolve_source(source)
    monkeypatch.setenv("LARIMAR_DATA_DIR", str(path.parents[1]))
    assert resolve_source(source) == path.resolve()


def test_episodes_group_consecutive_texts_and_drop_the_tail():
    assert episodes(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e", "f"]]


def test_prepare_chunks_is_deterministic_and_limited():
    require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    cfg = load_train_config(None, TINY + ["data.limit=100", "model.max_length=32"])
    ds = prepare_chunks(cfg)
    assert ds.column_names == ["text"] and len(ds) == 100
    assert ds["text"] == prepare_chunks(cfg)["text"]
    other = prepare_chunks(
        load_train_config(None, TINY + ["data.limit=100", "model.max_length=32", "data.shuffle_seed=1"])
    )
    assert other["text"] != ds["text"]
    with pytest.raises(ConfigError, match="cannot fill one micro-batch"):
        prepare_chunks(load_train_config(None, TINY + ["data.limit=10", "data.episode_size=8"]))


class FakeShard:
    """Ray Data's DataIterator, reduced to what `episode_batches` uses."""

    def __init__(self, rows):
        self.rows = rows
        self.epochs = 0

    def iter_batches(self, batch_size, batch_format, drop_last):
        self.epochs += 1
        for i in range(0, len(self.rows) - batch_size + 1, batch_size):
            yield {"text": self.rows[i : i + batch_size]}


def test_episode_batches_cycle_epochs_and_skip_on_resume():
    stream = episode_batches(FakeShard([str(i) for i in range(7)]), 3)
    assert [next(stream) for _ in range(3)] == [
        (0, 0, ["0", "1", "2"]),
        (0, 1, ["3", "4", "5"]),
        (1, 0, ["0", "1", "2"]),
    ]
    resumed = episode_batches(FakeShard([str(i) for i in range(7)]), 3, skip=1, start_epoch=4)
    assert next(resumed) == (4, 1, ["3", "4", "5"])
    assert next(resumed) == (5, 0, ["0", "1", "2"])
    with pytest.raises(RuntimeError, match="fewer than 3 chunks"):
        next(episode_batches(FakeShard(["a"]), 3))


def test_fact_sentences_keep_evaluation_cases_out():
    require_shared("data", "counterfact", "dev_flat.json")
    from larimar.train.fact_corpus import fact_sentences

    d = SHARED / "data"
    canonical = json.loads((d / "counterfact" / "dev_canonical_100.json").read_text())
    held_out = {c["requested_rewrite"]["subject"] for c in canonical}
    everything = fact_sentences([d / "counterfact" / "dev_flat.json"])
    kept = fact_sentences(
        [d / "counterfact" / "dev_flat.json", d / "zsre" / "train_1k.json"],
        [d / "counterfact" / "dev_canonical_100.json", d / "zsre" / "dev_eval_300.json"],
    )
    rw = canonical[0]["requested_rewrite"]
    fact = f"{rw['prompt'].format(rw['subject'])} {rw['target_new']['str']}"
    assert fact in everything and fact not in kept
    assert not any(f" {s} " in f" {t} " for t in kept for s in held_out)
    assert "What is the product made by UniFirst? uniform" in kept  # zsRE train question + answer
    assert len(kept) > 50_000 and len(set(kept)) == len(kept)


def test_mixed_episodes_never_mix_kinds():
    from larimar.train.data import mixed_episodes

    rows = mixed_episodes([[f"long {i}" for i in range(40)], [f"fact {i}" for i in range(50)]], 8, seed=0)
    assert len(rows) == 8 * (40 // 8 + 50 // 8)
    kinds = [{r.split()[0] for r in rows[i : i + 8]} for i in range(0, len(rows), 8)]
    assert all(len(k) == 1 for k in kinds) and {"long"} in kinds and {"fact"} in kinds
    assert rows == mixed_episodes([[f"long {i}" for i in range(40)], [f"fact {i}" for i in range(50)]], 8, seed=0)


def test_prepare_chunks_with_facts_only(tmp_path):
    require_shared("data", "zsre", "train_1k.json")
    cfg = load_train_config(
        None,
        TINY
        + [
            "data.source=null",
            "data.facts=[../shared/data/zsre/train_1k.json]",
            "data.episode_size=4",
            "data.limit=42",
        ],
    )
    ds = prepare_chunks(cfg)
    assert len(ds) == 40 and all("?" in t for t in ds["text"])
    with pytest.raises(ConfigError, match="data.source"):
        load_train_config(None, TINY + ["data.source=null"])


def test_resolve_paths_makes_fact_files_absolute_for_workers(monkeypatch, tmp_path):
    require_shared("data", "zsre", "train_1k.json")
    from larimar.train.distributed import resolve_paths

    cfg = load_train_config(
        None,
        TINY
        + [
            "data.source=null",
            "data.facts=[../shared/data/zsre/train_1k.json]",
            "data.facts_exclude=[../shared/data/zsre/dev_eval_300.json]",
        ],
    )
    cfg = resolve_paths(cfg)  # on the driver, in the checkout
    monkeypatch.chdir(tmp_path)  # a worker's working directory has no ../shared beside it
    assert cfg.data.source is None
    assert all(Path(p).is_absolute() and Path(p).exists() for p in cfg.data.facts + cfg.data.facts_exclude)


def test_edit_rows_keep_evaluation_and_demo_subjects_out_and_batches_stay_keyed():
    """Keyed training rows (the v2 objective): every held-out case and subject, and the demo's
    subjects, stay out of prompts, targets and queries; each row asks its fact with its own prompt
    or another wording; a dataset with edits keeps plain and keyed rows in separate micro-batches."""
    require_shared("data", "paraphrase", "counterfact_canonical_train.json")
    from larimar.train.fact_corpus import edit_records, edit_rows

    d = SHARED / "data"
    files = [
        d / "paraphrase" / "counterfact_canonical_train.json",
        d / "paraphrase" / "zsre_knowedit_train.json",
        d / "zsre" / "train_1k.json",
        d / "counterfact" / "dev_flat.json",
    ]
    held = [d / "counterfact" / "dev_canonical_100.json", d / "zsre" / "dev_eval_300.json"]
    edits = edit_records(files, held, ["Eiffel Tower", "Japan"])
    subjects = {c["requested_rewrite"]["subject"] for c in json.loads(held[0].read_text())}
    subjects |= {r["subject"] for r in json.loads(held[1].read_text())} | {"Eiffel Tower", "Japan"}
    texts = [t for e in edits for t in (e["prompt"], e["target"], *e["queries"])]
    assert not any(f" {s} " in f" {t} " for t in texts for s in subjects)
    knowedit = next(e for e in edits if e["prompt"] == "What species is ZIC3 specific to?")
    assert knowedit["target"] == "male" and len(knowedit["queries"]) >= 10
    assert not any(q[0].isdigit() for q in knowedit["queries"])  # "1. " numbering stripped
    rows = edit_rows(edits[:50], 2, seed=0)
    assert all(r["text"] == f"{r['key']} {r['target']}" for r in rows)
    assert sum(r["query"] == r["key"] for r in rows) == 50 and len(rows) <= 150
    cfg = load_train_config(
        None,
        TINY
        + [
            "data.source=../shared/data/wikitext-2-raw/wiki.valid.raw",
            "data.source_limit=64",
            f"data.edits=[{files[1]}]",
            "data.episode_size=4",
            "optim.micro_batch_episodes=2",
        ],
    )
    ds = prepare_chunks(cfg)
    assert ds.column_names == ["text", "key", "query", "target"]
    keyed = [bool(k) for k in ds["key"]]
    assert any(keyed) and not all(keyed)
    assert all(len(set(keyed[i : i + 8])) == 1 for i in range(0, len(keyed), 8))
