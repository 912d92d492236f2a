"""Peer baselines (larimar/baselines): each edit makes its target likelier on the rewrite prompt and
leaves an unrelated prompt alone; reset restores the model; ROME's statistics are cached; the
editors run through jobs/eval.py and the benchmark. Tiny random decoders, a few seconds each."""

import json
import sys
from pathlib import Path

import pytest
import torch

from larimar import backbones
from larimar.baselines import EditRequest, make_editor
from larimar.baselines.base import subject_last_index
from larimar.baselines.layer_stats import second_moment
from larimar.config import ConfigError

from conftest import ROOT, require_shared

REQUEST = EditRequest("the eiffel tower is located in the city of", "tokyo", subject="the eiffel tower")
UNRELATED = ("my brother plays the", "guitar")

# Settings for a 4-layer random decoder, whose activations are far smaller than a pretrained
# model's: FT-L's L-inf radius, ROME's clamp on v* and GRACE's deferral radius scale with them.
# ROME is checked on SmolLM2 instead (test_rome_edits_smollm2): it edits at the subject's last
# token and relies on trained attention to carry that to the prompt's end, which a random
# decoder does not do (measured: target NLL 10.015 -> 10.000 at any layer).
SETTINGS = {
    "ft-l": ["norm_constraint=0.01", "lr=0.01"],
    "grace": ["eps_init=0.05", "n_iter=40"],
}


@pytest.fixture(scope="module")
def lm_tok():
    torch.manual_seed(0)
    lm, tok = backbones.load_decoder("tiny-llama", tiny_hidden=64, tiny_layers=4)
    return lm.eval(), tok


def _logprobs(editor, prompt, answer):
    enc = editor.encode([editor.prompt_text(prompt)], [answer])
    with torch.no_grad():
        logits = editor._logits(enc)[0].float()
    start, ids = enc.spans[0]
    return torch.log_softmax(logits[start - 1 : start - 1 + len(ids)], -1)  # full next-token distributions


def _check_edit(editor, request, unrelated, min_gain, max_side):
    """The target's NLL drops by >= min_gain; the unrelated answer's NLL moves by <= max_side;
    reset restores both exactly. Returns the unrelated prompt's mean |change| of log-probs."""
    before_new, before_side = editor.score([request.prompt, unrelated[0]], [request.target_new, unrelated[1]])
    before_other = _logprobs(editor, *unrelated)
    editor.edit(request)
    after_new, after_side = editor.score([request.prompt, unrelated[0]], [request.target_new, unrelated[1]])
    after_other = _logprobs(editor, *unrelated)
    gain, side = before_new - after_new, abs(after_side - before_side)
    assert gain >= min_gain, f"{editor.name}: target NLL fell by only {gain:.3f}"
    assert side <= max_side, f"{editor.name}: unrelated answer NLL moved by {side:.3f} (target gain {gain:.3f})"
    editor.reset()
    assert editor.score([request.prompt], [request.target_new])[0] == pytest.approx(before_new, abs=1e-5)
    assert torch.allclose(_logprobs(editor, *unrelated), before_other, atol=1e-5)
    return (after_other - before_other).abs().mean().item(), gain


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_edit_makes_target_likelier_and_leaves_unrelated_prompt(method, lm_tok, tmp_path, monkeypatch):
    monkeypatch.setenv("LARIMAR_CACHE_DIR", str(tmp_path))
    lm, tok = lm_tok
    editor = make_editor(method, lm, tok, options=SETTINGS[method])
    editor.prepare()
    drift, gain = _check_edit(editor, REQUEST, UNRELATED, min_gain=0.2, max_side=0.15)
    # weight editors move other prompts a little, GRACE (outside its epsilon ball) not at all
    assert drift <= (1e-6 if method == "grace" else 0.05), f"{method}: unrelated log-probs moved {drift:.4f} on average"


@pytest.mark.slow
def test_ike_puts_the_fact_in_context_on_smollm2():
    """In-context editing needs a model that reads its context: SmolLM2-135M, not a random one."""
    require_shared("data", "counterfact")
    lm, tok = backbones.load_decoder("smollm2-135m")  # installed by `make install`: a missing wheel must fail
    editor = make_editor("ike", lm, tok, options=["demos=2"])
    editor.prepare()
    request = EditRequest("The Eiffel Tower is located in the city of", "Rome", "The Eiffel Tower")
    # SmolLM2-135M follows an in-context fact only weakly: measured NLL(Rome) gain 0.30 nats.
    _check_edit(editor, request, ("The capital of Japan is", "Tokyo"), min_gain=0.15, max_side=1.0)
    editor.edit(request)
    text = editor.prompt_text("Where is the Eiffel Tower?")
    assert text.count("New Fact:") == 3 and text.endswith(
        "New Fact: The Eiffel Tower is located in the city of Rome\nPrompt: Where is the Eiffel Tower?"
    )
    assert "Eiffel" not in text.split("New Fact: The Eiffel")[0]  # demonstrations come from other records


@pytest.mark.slow
def test_rome_edits_smollm2(tmp_path, monkeypatch):
    """Eiffel Tower -> Rome on the real decoder: measured NLL(Rome) 4.80 -> 0.02, NLL(Paris)
    1.19 -> 12.3, the Colosseum's (unrelated subject) Rome 1.51 -> 1.33."""
    require_shared("data", "wikitext-2-raw")
    monkeypatch.setenv("LARIMAR_CACHE_DIR", str(tmp_path))
    lm, tok = backbones.load_decoder("smollm2-135m")  # installed by `make install`: a missing wheel must fail
    editor = make_editor("rome", lm, tok, options=["stats_tokens=20000"])
    editor.prepare()
    request = EditRequest("The Eiffel Tower is located in the city of", "Rome", "The Eiffel Tower")
    _check_edit(editor, request, ("The Colosseum is located in the city of", "Rome"), min_gain=2.0, max_side=0.5)
    before_true = editor.score([request.prompt], ["Paris"])[0]
    editor.edit(request)
    assert editor.score([request.prompt], ["Paris"])[0] > before_true + 2.0  # the old answer lost
    editor.reset()


def test_rome_hits_its_value_and_caches_statistics(lm_tok, tmp_path, monkeypatch):
    require_shared("data", "wikitext-2-raw")
    monkeypatch.setenv("LARIMAR_CACHE_DIR", str(tmp_path))
    lm, tok = lm_tok
    first = second_moment(lm, tok, 1, "../shared/data/wikitext-2-raw/wiki.valid.raw", 2000, tok.cls_token_id)
    again = second_moment(lm, tok, 1, "../shared/data/wikitext-2-raw/wiki.valid.raw", 2000, tok.cls_token_id)
    assert not first.cached and again.cached and first.path.parent == tmp_path / "rome_stats"
    assert first.tokens >= 2000 and torch.equal(first.moment, again.moment)
    assert torch.allclose(first.moment, first.moment.T) and torch.linalg.eigvalsh(first.moment).min() > 0

    editor = make_editor("rome", lm, tok, options=["stats_tokens=2000", "layer=1"])
    editor.prepare()
    k, v = editor._keys_at([REQUEST.prompt], REQUEST.subject)
    editor.edit(REQUEST)
    k2, v2 = editor._keys_at([REQUEST.prompt], REQUEST.subject)
    assert torch.allclose(k, k2)  # the layer's input is upstream of the edit
    assert (v2 - v).norm() > 1e-3  # W k moved to v*: a rank-one change of the weight
    delta = editor.module.weight - editor.snapshot.saved["weight"]
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == 1
    editor.reset()


def test_grace_codebook_rules(lm_tok):
    lm, tok = lm_tok
    editor = make_editor("grace", lm, tok, options=["eps_init=0.05", "n_iter=2"])
    editor.edit(REQUEST)
    editor.edit(EditRequest(REQUEST.prompt, REQUEST.target_new))  # same key, same label: no new entry
    assert len(editor.keys) == 1
    editor.edit(EditRequest(REQUEST.prompt, "paris"))  # same key, other label: new entry, radii split
    assert len(editor.keys) == 2 and editor.eps[0] <= 0.0 and editor.eps[1] == 0.0
    editor.edit(EditRequest(UNRELATED[0], UNRELATED[1]))  # far away: a fresh entry at eps_init
    assert len(editor.keys) == 3 and editor.eps[2] == 0.05


def test_subject_last_token(lm_tok):
    _, tok = lm_tok
    prompt = "the eiffel tower is located in"
    idx = subject_last_index(tok, prompt, "the eiffel tower")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[: idx + 1]) == "the eiffel tower"
    assert subject_last_index(tok, prompt, "not there") == len(ids) - 1


def test_bad_options_name_the_key(lm_tok):
    lm, tok = lm_tok
    with pytest.raises(ConfigError, match="rome.v_stepz"):
        make_editor("rome", lm, tok, options=["v_stepz=3"])
    with pytest.raises(ConfigError, match="unknown editor 'memit'"):
        make_editor("memit", lm, tok)


def _load_job(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"larimar_{name}_job", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_eval_job_runs_a_baseline_with_the_shared_metric_code(tmp_path, monkeypatch, capsys):
    data = require_shared("data", "counterfact", "dev_canonical_100.json")
    monkeypatch.setenv("LARIMAR_CACHE_DIR", str(tmp_path / "cache"))
    eval_job = _load_job("eval")
    out = eval_job.main(
        [
            "counterfact",
            "--model",
            "tiny",
            "--data",
            str(data),
            "--limit",
            "2",
            "--editor",
            "ft-l",
            "--editor-opt",
            "norm_constraint=0.05",
            "--editor-opt",
            "lr=0.01",
            "--out",
            str(tmp_path / "eval"),
            "--no-progress",
        ]
    )
    s = out["summary"]
    assert set(s) == {"cases", "edited", "unedited"} and s["cases"] == 2
    assert s["edited"]["EM"] > s["unedited"]["EM"]  # the new target's probability rose on average
    saved = json.loads(Path(out["paths"]["json"]).read_text())
    assert all(r["edit_s"] > 0 for r in saved["records"])
    with pytest.raises(SystemExit):
        eval_job.main(["capacity", "--model", "tiny", "--data", str(data), "--editor", "rome"])
    assert "baselines run" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_writes_table_csv_json_and_plot(tmp_path, monkeypatch, capsys):
    require_shared("data")
    monkeypatch.setenv("LARIMAR_CACHE_DIR", str(tmp_path / "cache"))
    bench = _load_job("bench_edit")
    argv = [
        "--larimar-model",
        "tiny",
        "--base",
        "larimar",
        "--methods",
        "larimar,rome",
        "--cases",
        "2",
        "--stream",
        "2",
        "--checkpoints",
        "1",
        "--scope-model",
        "none",
        "--opt",
        "rome:stats_tokens=2000",
        "--opt",
        "rome:v_steps=3",
        "--out",
        str(tmp_path / "bench"),
    ]
    out = bench.main(argv)
    paths = {k: Path(v) for k, v in out["paths"].items()}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    results = {r["method"]: r for r in out["results"]}
    assert results["rome"]["one_time_s"]["layer_stats"] > 0 and results["rome"]["edit"]["n"] == 2
    assert results["larimar"]["edit"]["median_s"] < results["rome"]["edit"]["median_s"]
    assert results["rome"]["rss_peak_mib"] >= results["rome"]["rss_loaded_mib"] > 0
    md = paths["md"].read_text()
    assert "| larimar (no_scope) | tiny-llama |" in md and "faster" in md
    assert paths["csv"].read_text().splitlines()[0].startswith("method,decoder,ES,PS,NS,Score")
    # the same command again resumes: every method is read back from <out>/methods, nothing reruns
    saved = {m: (tmp_path / "bench" / "methods" / f"{m}.json").stat().st_mtime_ns for m in ("larimar", "rome")}
    again = bench.main(argv)
    assert {m: (tmp_path / "bench" / "methods" / f"{m}.json").stat().st_mtime_ns for m in saved} == saved
    assert [r["edit"]["median_s"] for r in again["results"]] == [r["edit"]["median_s"] for r in out["results"]]
    assert "measured earlier" in capsys.readouterr().err
    # a changed setting of one method reruns that method only
    bench.main([a.replace("rome:v_steps=3", "rome:v_steps=2") for a in argv])
    assert (tmp_path / "bench" / "methods" / "larimar.json").stat().st_mtime_ns == saved["larimar"]
    assert (tmp_path / "bench" / "methods" / "rome.json").stat().st_mtime_ns != saved["rome"]
