"""The README's demo end to end: a trained model recalls written facts and drops a forgotten one."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_demo():
    spec = importlib.util.spec_from_file_location("larimar_demo_job", ROOT / "jobs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(demo)
    return demo


@pytest.mark.slow
def test_demo_trains_recalls_and_forgets(demo_run):
    tmp_path, summary = demo_run
    assert summary["recall_before"] >= 5 / 6
    assert summary["forgotten_recalled_after"] is False
    assert summary["retained_recall_after"] >= 0.8
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == summary["steps"]
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_demo_over_http(demo_run, tmp_path):
    summary = load_demo().main(["--model", str(demo_run[0] / "model"), "--serve", "--out", str(tmp_path)])
    assert summary["http"]["recalled_before"] >= 5 / 6
    assert summary["http"]["forgotten_recalled_after"] is False
    assert summary["http"]["retained_recall_after"] >= 0.8


def test_demo_bad_override_names_the_key(capsys):
    demo = load_demo()
    with pytest.raises(SystemExit):
        demo.main(["--train", "model.memory.slotz=4"])
    assert "model.memory.slotz" in capsys.readouterr().err
