"""Evaluation library pieces (larimar/evaluation): metrics on hand-built numbers, loaders, teacher forcing."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import require_shared
from larimar import LarimarEditor, LarimarModel
from larimar.config import ConfigError, from_dict
from larimar.evaluation import counterfact, metrics
from larimar.benchmarks import SYNTHETIC_MAX, detect_format, load_counterfact, load_facts, load_zsre
from larimar.evaluation.forcing import teacher_force
from larimar.evaluation.runner import chunks
from larimar.evaluation.sequential import checkpoints
from larimar.model import LarimarConfig

# -- metrics --------------------------------------------------------------------------------------


def test_rome_success_follows_which_target_is_more_likely():
    new_wins = metrics.rome_success([0.5, 1.0], [2.0, 3.0])  # edit made target_new more likely
    assert new_wins == [True, True]
    assert metrics.rome_success([2.0, 3.0], [0.5, 1.0]) == [False, False]  # the reverse
    # neighbourhood: success means the true target still wins
    assert metrics.rome_success([2.0, 3.0], [0.5, 1.0], neighborhood=True) == [True, True]
    assert metrics.rome_success([1.0], [1.0]) == [False]  # a tie is no success either way
    with pytest.raises(ValueError):
        metrics.rome_success([1.0], [1.0, 2.0])


def test_counterfact_summary_on_known_cases():
    """A scorer that prefers target_new on rewrites and paraphrases and leaves neighbours alone: ES = PS = NS = 1."""
    good = {
        "rewrite": {"nll_new": [0.1], "nll_true": [3.0], "in_scope": [True]},
        "paraphrase": {"nll_new": [0.2, 0.3], "nll_true": [2.0, 2.5], "in_scope": [True, True]},
        "neighborhood": {"nll_new": [4.0, 5.0], "nll_true": [1.0, 0.5], "in_scope": [False, False]},
    }
    bad = {g: {"nll_new": v["nll_true"], "nll_true": v["nll_new"], "in_scope": v["in_scope"]} for g, v in good.items()}
    s = counterfact.condition_summary([{"c": good}], "c")
    assert (s["ES"], s["PS"], s["NS"], s["Score"]) == (1.0, 1.0, 1.0, 1.0)
    assert s["EM"] == pytest.approx(math.exp(-0.1) - math.exp(-3.0))
    assert s["NM"] > 0 and s["PS_in_scope"] == 1.0 and s["NS_in_scope"] == 0.0
    s = counterfact.condition_summary([{"c": bad}], "c")
    assert (s["ES"], s["PS"], s["NS"], s["Score"]) == (0.0, 0.0, 0.0, 0.0)
    s = counterfact.condition_summary([{"c": good}, {"c": bad}], "c")
    assert s["ES"] == 0.5 and s["Score"] == pytest.approx(0.5)


def test_counterfact_flat_records_have_no_paraphrase_score():
    rec = {
        "c": {
            "rewrite": {"nll_new": [0.1], "nll_true": [1.0], "in_scope": [True]},
            "neighborhood": {"nll_new": [2.0], "nll_true": [1.0], "in_scope": [False]},
        }
    }
    s = counterfact.condition_summary([rec], "c")
    assert s["ES"] == 1.0 and s["NS"] == 1.0 and s["PS"] is None and s["Score"] is None


def test_case_mean_averages_cases_first():
    assert metrics.case_mean([[1, 1, 1, 0], [0]]) == pytest.approx((0.75 + 0.0) / 2)
    assert metrics.case_mean([[], [1.0]]) == 1.0 and metrics.case_mean([[]]) is None


def test_harmonic_mean():
    assert metrics.harmonic_mean([1.0, 1.0, 1.0]) == 1.0
    assert metrics.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([1.0, 0.0]) == 0.0
    assert metrics.harmonic_mean([1.0, None]) is None


def test_probability_gap_sign():
    assert metrics.probability_gap([0.0], [math.inf]) == [1.0]
    assert metrics.probability_gap([0.0], [math.inf], neighborhood=True) == [-1.0]


def test_token_metrics():
    assert metrics.token_accuracy([1, 2, 3], [1, 2, 4]) == pytest.approx(2 / 3)
    assert metrics.exact_match([1, 2], [1, 2]) and not metrics.exact_match([1, 2], [1, 3])
    assert metrics.unchanged_fraction([5, 6], [5, 6]) == 1.0  # locality unchanged -> 1
    with pytest.raises(ValueError):
        metrics.token_accuracy([], [])


def test_percentile_matches_numpy():
    xs = [5.0, 1.0, 3.0, 10.0, 7.0, 2.0]
    for q in (0, 50, 90, 100):
        assert metrics.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert metrics.percentile([], 50) is None


def test_chunks_and_checkpoints():
    parts = chunks(list(range(10)), 3)
    assert [len(p) for p in parts] == [4, 3, 3] and sum(parts, []) == list(range(10))
    assert chunks([1, 2], 5) == [[1], [2]]
    assert checkpoints(100, 10) == list(range(10, 101, 10))
    assert checkpoints(7, 10) == list(range(1, 8))
    assert checkpoints(25, 10)[-1] == 25


# -- loaders --------------------------------------------------------------------------------------


def test_load_counterfact_canonical():
    path = require_shared("data", "counterfact", "dev_canonical_100.json")
    cases = load_counterfact(path)
    assert len(cases) == 100 and load_counterfact(path, limit=3)[2] == cases[2]
    c = cases[0]
    raw = json.loads(path.read_text())[0]
    rw = raw["requested_rewrite"]
    assert c.prompt == rw["prompt"].format(rw["subject"]) and "{}" not in c.prompt
    assert (c.target_new, c.target_true) == (rw["target_new"]["str"], rw["target_true"]["str"])
    assert len(c.paraphrases) == 2 and len(c.neighborhood) == 10 and c.neighborhood_true == c.target_true
    assert c.format == "canonical"


def test_load_counterfact_flat():
    path = require_shared("data", "counterfact", "dev_flat.json")
    cases = load_counterfact(path, limit=5)
    raw = json.loads(path.read_text())[:5]
    assert len(cases) == 5
    for c, r in zip(cases, raw):
        assert (c.prompt, c.target_new, c.target_true) == (r["prompt"], r["target_new"], r["ground_truth"])
        assert c.paraphrases == () and c.neighborhood == (r["locality_prompt"],)
        assert c.neighborhood_true == r["locality_ground_truth"] and c.format == "flat"


@pytest.mark.parametrize("name,n", [("train_1k.json", 1000), ("dev_eval_300.json", 300)])
def test_load_zsre(name, n):
    path = require_shared("data", "zsre", name)
    cases = load_zsre(path)
    raw = json.loads(path.read_text())
    assert len(cases) == n
    assert (cases[0].prompt, cases[0].target, cases[0].rephrase) == (
        raw[0]["src"],
        raw[0]["answers"][0],
        raw[0]["rephrase"],
    )
    assert cases[0].loc.startswith("nq question: ") and cases[0].loc_ans == raw[0]["loc_ans"]
    facts = load_facts(str(path), limit=4)
    assert [f.prompt for f in facts] == [c.prompt for c in cases[:4]] and facts[0].rephrases == (cases[0].rephrase,)


def test_load_facts_from_counterfact_and_synthetic():
    path = require_shared("data", "counterfact", "dev_canonical_100.json")
    f = load_facts(str(path), limit=2)[0]
    assert f.text == f"{f.prompt} {f.target}" and len(f.rephrases) == 2
    syn = load_facts("synthetic", seed=1)
    assert len(syn) == SYNTHETIC_MAX and len({f.prompt for f in syn}) == SYNTHETIC_MAX
    assert (
        load_facts("synthetic:10", seed=1) == load_facts("synthetic:10", seed=1)
        and len(load_facts("synthetic", 7)) == 7
    )


def test_wrong_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unrecognised"):
        detect_format({"foo": 1})
    p = tmp_path / "z.json"
    p.write_text(
        json.dumps([{"src": "q?", "answers": ["a"], "rephrase": "r?", "loc": "nq question: x", "loc_ans": "y"}])
    )
    with pytest.raises(ConfigError, match="CounterFact"):
        load_counterfact(p)
    with pytest.raises(ConfigError, match="not a file"):
        load_zsre(tmp_path / "missing.json")


# -- teacher forcing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_editor():
    torch.manual_seed(0)
    cfg = from_dict(
        LarimarConfig,
        {"encoder": "tiny-bert", "decoder": "tiny-llama", "max_length": 32, "memory": {"slots": 16, "latent_dim": 32}},
    )
    return LarimarEditor(LarimarModel(cfg), scope_model=None)


def test_teacher_force_agrees_with_editor_score(tiny_editor):
    mem = tiny_editor.create_memory()
    mem.edit(["alice lives in"], ["paris"])
    prompts, answers = ["alice lives in", "bob plays the"], ["paris", "grand piano"]
    z, _ = mem.read(prompts, use_scope=False)
    forced = teacher_force(tiny_editor.model, prompts, answers, z)
    scores = mem.score(prompts, answers, use_scope=False)
    for f, s in zip(forced, scores):
        assert len(f.target_ids) == s.tokens and f.mean_nll == pytest.approx(s.mean_nll, rel=1e-5)
    # the argmax is the decoder's own argmax at the answer positions
    m = tiny_editor.model
    ids = [m.bos_id, *m.decoder_tokenizer("alice lives in", add_special_tokens=False)["input_ids"]]
    logits = m.decoder(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), z[:1])
    assert forced[0].pred_ids[0] == int(logits[0, -1].argmax())
    assert forced[0].in_scope and not teacher_force(m, prompts[:1], answers[:1], torch.zeros(1, 32))[0].in_scope
