"""Real backbones from their PyPI wheels, offline (larimar/backbones.py, larimar/scope.py)."""

import pytest
import torch

from larimar import backbones
from larimar.scope import ScopeDetector


def test_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = backbones.load_encoder("minilm-l6")
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    out = model(**tok(["hello world"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384 and torch.isfinite(out).all()


@pytest.mark.slow
def test_smollm2_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = backbones.load_decoder("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert (backbones.smollm2_dir() / "model.safetensors").exists()  # dequantized once, cached
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_unknown_backbone_error_names_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(backbones.BackboneNotFound, match="no-such-model"):
        backbones.load_decoder("no-such-model")


def test_scope_detector_paraphrase_in_scope_unrelated_out():
    scope = ScopeDetector("minilm-l6", threshold=0.7)
    scope.add([7, 8], ["The Eiffel Tower is located in Rome.", "Danielle Darrieux's mother tongue is English."])
    para, unrelated, distractor = scope.match(
        [
            "Where can you find the Eiffel Tower?",
            "Who won the 1998 football world cup?",
            "Apples are red. The mother tongue of Danielle Darrieux is",
        ]
    )
    assert para.in_scope and para.fact_id == 7
    assert not unrelated.in_scope
    assert distractor.in_scope and distractor.fact_id == 8  # max over sentences
    scope.remove(7)
    assert scope.match(["Where can you find the Eiffel Tower?"])[0].fact_id != 7
