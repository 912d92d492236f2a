"""Every experiment of jobs/eval.py end to end on a tiny untrained model, in seconds.

Numbers from an untrained model mean nothing; these tests check that each command runs, writes
its JSON / Markdown / PNG, and gives the same numbers for the same seed. Whether a trained model
recalls facts is covered by tests/test_demo.py.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from larimar.config import from_dict
from larimar.model import LarimarConfig, LarimarModel

ROOT = Path(__file__).resolve().parents[1]


def load_eval_job():
    spec = importlib.util.spec_from_file_location("larimar_eval_job", ROOT / "jobs" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def job():
    return load_eval_job()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = from_dict(
        LarimarConfig,
        {"encoder": "tiny-bert", "decoder": "tiny-llama", "max_length": 32, "memory": {"slots": 16, "latent_dim": 32}},
    )
    return str(LarimarModel(cfg).save_pretrained(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Hand-built files in the three formats (two records each), so these tests need no ../shared."""
    d = tmp_path_factory.mktemp("data")
    canonical = [
        {
            "case_id": i,
            "requested_rewrite": {
                "prompt": "{} is located in",
                "subject": s,
                "target_new": {"str": new},
                "target_true": {"str": true},
            },
            "paraphrase_prompts": [f"Some text. {s} can be found in", f"{s}, which is in"],
            "neighborhood_prompts": [f"The city next to {s} is in", "Big Ben is located in"],
        }
        for i, (s, new, true) in enumerate([("The Eiffel Tower", "Rome", "Paris"), ("Big Ben", "Tokyo", "London")])
    ]
    flat = [
        {
            "case_id": 7,
            "prompt": "Ferrari F355 is produced by",
            "target_new": "BMW",
            "subject": "Ferrari F355",
            "ground_truth": "Ferrari",
            "rephrase_prompt": "Ferrari F355 is made by",
            "locality_prompt": "Ferrari 458 is a product of",
            "locality_ground_truth": "Ferrari",
        }
    ]
    zsre = [
        {"subject": s, "src": q, "rephrase": r, "answers": [a], "alt": "x", "loc": f"nq question: {lq}", "loc_ans": la}
        for s, q, r, a, lq, la in [
            (
                "UniFirst",
                "What is the product made by UniFirst?",
                "What will be the product of UniFirst?",
                "uniform",
                "who wrote hamlet",
                "Shakespeare",
            ),
            (
                "Serpens",
                "Which constellation is Delta Serpentis in?",
                "Delta Serpentis belongs to which constellation?",
                "Serpens",
                "capital of france",
                "Paris",
            ),
        ]
    ]
    for name, records in [("cf.json", canonical), ("flat.json", flat), ("zsre.json", zsre)]:
        (d / name).write_text(json.dumps(records))
    return d


def run(job, tmp_path, *args):
    out = tmp_path / "out"
    result = job.main([*args, "--out", str(out), "--no-progress"])
    payload = json.loads(Path(result["paths"]["json"]).read_text())
    assert Path(result["paths"]["md"]).read_text().startswith("# ")
    return result, payload


def test_counterfact_with_scope(job, tiny_model, data, tmp_path):
    result, payload = run(
        job, tmp_path, "counterfact", "--model", tiny_model, "--data", str(data / "cf.json"), "--scope-threshold", "0.6"
    )
    s = result["summary"]
    assert s["cases"] == 2 and set(s) >= {"scope", "no_scope", "unedited"}
    for cond in ("scope", "no_scope", "unedited"):
        assert all(0.0 <= s[cond][k] <= 1.0 for k in ("ES", "PS", "NS", "Score"))
    assert s["no_scope"]["PS_in_scope"] == 1.0 and s["unedited"]["NS_in_scope"] == 0.0
    assert s["scope"]["ES_in_scope"] == 1.0  # the rewrite prompt is the stored edit itself
    rec = payload["records"][0]
    assert len(rec["no_scope"]["paraphrase"]["nll_new"]) == 2 and len(rec["no_scope"]["neighborhood"]["nll_true"]) == 2
    assert payload["config"]["scope_threshold"] == 0.6


def test_counterfact_flat_without_scope(job, tiny_model, data, tmp_path):
    result, _ = run(
        job, tmp_path, "counterfact", "--model", tiny_model, "--data", str(data / "flat.json"), "--scope-model", "none"
    )
    s = result["summary"]
    assert "scope" not in s and s["no_scope"]["PS"] is None and s["no_scope"]["Score"] is None
    assert s["no_scope"]["ES"] in (0.0, 1.0) and s["unedited"]["NS"] in (0.0, 1.0)


def untimed(records: list[dict]) -> list[dict]:
    """Records without their wall-clock edit times: what a seed reproduces."""
    return [{k: v for k, v in r.items() if k != "edit_s"} for r in records]


def test_zsre_is_reproducible(job, tiny_model, data, tmp_path):
    args = ["zsre", "--model", tiny_model, "--data", str(data / "zsre.json"), "--scope-model", "none", "--seed", "3"]
    a, pa = run(job, tmp_path, *args)
    b, pb = run(job, tmp_path, *args)
    assert a["summary"] == b["summary"] and untimed(pa["records"]) == untimed(pb["records"])
    assert all(r["edit_s"] > 0 for r in pa["records"])  # every method's edit is timed, Larimar's too
    assert a["summary"]["unedited"]["locality"] == 1.0  # the unedited decoder is its own reference
    assert all(0.0 <= v <= 1.0 for v in a["summary"]["no_scope"].values())


def test_sequential(job, tiny_model, data, tmp_path):
    result, payload = run(
        job,
        tmp_path,
        "sequential",
        "--model",
        tiny_model,
        "--data",
        "synthetic:12",
        "--checkpoints",
        "3",
        "--slots",
        "8",
        "--scope-model",
        "none",
    )
    assert [r["edits"] for r in payload["records"]] == [4, 8, 12]
    assert result["summary"]["slots"] == 8 and Path(result["paths"]["png"]).stat().st_size > 0
    assert payload["records"][-1]["rephrase"] is None  # synthetic facts have no rephrases
    result, payload = run(
        job,
        tmp_path,
        "sequential",
        "--model",
        tiny_model,
        "--data",
        str(data / "zsre.json"),
        "--checkpoints",
        "2",
        "--scope-model",
        "none",
    )
    assert payload["records"][-1]["rephrase"] is not None


def test_forgetting(job, tiny_model, tmp_path):
    result, payload = run(
        job,
        tmp_path,
        "forgetting",
        "--model",
        tiny_model,
        "--data",
        "synthetic:20",
        "--trials",
        "2",
        "--scope-model",
        "none",
    )
    points = result["summary"]["points"]
    assert [p["n"] for p in points] == [1, 16, 20]  # N = 1, K, 2K capped at the 20 facts available
    assert points[0]["retained"] is None and points[1]["trials"] == 2
    assert "asked 32" in Path(result["paths"]["md"]).read_text()


def test_capacity(job, tiny_model, tmp_path):
    result, payload = run(
        job,
        tmp_path,
        "capacity",
        "--model",
        tiny_model,
        "--data",
        "synthetic:30",
        "--slots-list",
        "4,8",
        "--sizes",
        "2,8,30",
        "--eval-cap",
        "5",
        "--scope-model",
        "none",
    )
    assert [(r["slots"], r["n"]) for r in payload["records"]] == [(4, 2), (4, 8), (4, 30), (8, 2), (8, 8), (8, 30)]
    assert max(r["evaluated"] for r in payload["records"]) == 5 and Path(result["paths"]["png"]).exists()
    assert set(payload["curve"]["series"]) == {"K = 4", "K = 8"}


def test_long_context(job, tiny_model, tmp_path):
    result, payload = run(
        job,
        tmp_path,
        "long-context",
        "--model",
        tiny_model,
        "--data",
        "synthetic:40",
        "--sizes",
        "8,40",
        "--segment-facts",
        "4",
        "--scope-model",
        "none",
    )
    assert [(r["n"], r["segments"], r["levels"]) for r in payload["records"]] == [(8, 2, 2), (40, 10, 3)]
    assert Path(result["paths"]["png"]).exists()


def test_timing(job, tiny_model, data, tmp_path):
    result, payload = run(
        job,
        tmp_path,
        "timing",
        "--model",
        tiny_model,
        "--data",
        str(data / "cf.json"),
        "--scope-model",
        "none",
        "--repeats",
        "2",
    )
    s = result["summary"]
    assert s["edits"] == 4 and s["write"]["median_ms"] > 0 and s["scope_index"]["median_ms"] < 1.0
    assert s["encode"]["p90_ms"] >= s["encode"]["median_ms"]


def test_bad_arguments_name_the_flag(job, tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        job.main(["zsre", "--model", tiny_model, "--data", "x.json", "--limit", "0"])
    assert "--limit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job.main(["zsre", "--model", str(tmp_path / "nope"), "--data", "synthetic", "--out", str(tmp_path)])
    assert "--model" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_workers_give_the_single_process_numbers(job, tiny_model, data, tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        args = ["zsre", "--model", tiny_model, "--data", str(data / "zsre.json"), "--scope-model", "none"]
        single, ps = run(job, tmp_path, *args)
        spread, pr = run(job, tmp_path, *args, "--workers", "2")
    finally:
        ray.shutdown()
    assert single["summary"] == spread["summary"] and untimed(ps["records"]) == untimed(pr["records"])


def test_perplexity_z0_is_the_base_lm(job, tiny_model, tmp_path):
    text = tmp_path / "wiki.raw"
    text.write_text(
        " = Title = \n"
        + "\n".join(f"The river number {i} flows past the old mill into the sea ." * 3 for i in range(6))
        + "\n"
    )
    result, payload = run(job, tmp_path, "perplexity", "--model", tiny_model, "--data", str(text), "--batch-size", "4")
    s = result["summary"]
    assert s["chunks"] >= 6 and s["tokens"] > 50
    assert s["ppl_base"] > 1 and abs(s["z0_vs_base"]) < 1e-4  # z = 0 masks the slot: the plain decoder
    assert s["ppl_self"] != s["ppl_base"]  # a random latent head does move the conditioned decoder
    with pytest.raises(SystemExit):
        job.main(
            ["perplexity", "--model", tiny_model, "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path)]
        )


def test_generation_forgets_back_to_the_plain_decoder(job, tiny_model, data, tmp_path):
    """Greedy continuations of each edited prompt; after forget() the memory is empty and every
    continuation is exactly the unedited decoder's."""
    result, payload = run(job, tmp_path, "generation", "--model", tiny_model, "--data", str(data / "cf.json"))
    s = result["summary"]
    assert s["cases"] == 2 and all(0.0 <= s[c]["rewrite"] <= 1.0 for c in ("edited", "forgotten", "unedited"))
    for rec in payload["records"]:
        assert len(rec["prompts"]) == 3 and rec["forgotten"]["texts"] == rec["unedited"]["texts"]


def test_begins_with_counts_whole_words_only():
    from larimar.evaluation.generation import begins_with

    assert begins_with(' "Rome, the capital', "Rome") and begins_with("rome", "Rome")
    assert not begins_with("Romeo and Juliet", "Rome") and not begins_with("in Rome", "Rome")


def test_counterfact_reports_the_papers_paraphrase_protocol(job, tiny_model, data, tmp_path):
    from larimar.evaluation.counterfact import reference_paraphrase

    assert (
        reference_paraphrase("Nebamun was the son of Ipu. Airbus A350 was created by") == "Airbus A350 was created by"
    )
    result, payload = run(
        job,
        tmp_path,
        "counterfact",
        "--model",
        tiny_model,
        "--data",
        str(data / "cf.json"),
        "--no-subjects",
        "--readout",
        "value_norm",
    )
    assert 0.0 <= result["summary"]["no_scope"]["PS_ref"] <= 1.0
    assert len(payload["records"][0]["no_scope"]["paraphrase_ref"]["nll_new"]) == 2
    assert payload["config"]["use_subjects"] is False and payload["config"]["readout"] == "value_norm"


@pytest.fixture(scope="module")
def decoder_space_model(tiny_model, tmp_path_factory):
    """The tiny model derived to latent+decoder values (`larimar derive`)."""
    model, _ = LarimarModel.derive(tiny_model, ["value_space=latent+decoder", 'value_template="{value} ."'])
    return str(model.save_pretrained(tmp_path_factory.mktemp("latent_decoder")))


def test_perplexity_and_refusals_with_decoder_space_values(job, decoder_space_model, tmp_path, capsys):
    """z = 0 is still the base LM for a model with wider values; the hierarchical long-context
    memory, which writes read-outs as keys, refuses it naming the option."""
    text = tmp_path / "wiki.raw"
    text.write_text("\n".join(f"The river number {i} flows past the old mill into the sea ." * 3 for i in range(4)))
    result, _ = run(job, tmp_path, "perplexity", "--model", decoder_space_model, "--data", str(text))
    assert (
        abs(result["summary"]["z0_vs_base"]) < 1e-4 and result["summary"]["ppl_self"] != result["summary"]["ppl_base"]
    )
    with pytest.raises(SystemExit):
        job.main(
            [
                "long-context",
                "--model",
                decoder_space_model,
                "--data",
                "synthetic:8",
                "--sizes",
                "8",
                "--segment-facts",
                "4",
                "--scope-model",
                "none",
                "--out",
                str(tmp_path),
            ]
        )
    assert "value_space" in capsys.readouterr().err
