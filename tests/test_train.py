"""Distributed training (larimar/train/distributed.py, larimar/train/config.py, jobs/train.py).

The slow tests run the real thing on CPU: a local Ray cluster, 2 Ray Train workers, each a
DeepSpeed ZeRO-2 engine over gloo, on WikiText-2 chunks with the tiny config. They are sized for a
2-core machine: one Ray for the module (the in-process runs join it), 2-3 steps per run, three
in-process runs (first + resumed, and one with an injected failure). `ray job submit`, the
README's way in, is tested where a Ray head is running anyway: tests/test_metrics.py's stack.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from larimar.train.checkpoints import list_checkpoints, load_checkpoint_model
from larimar.config import ConfigError
from larimar.recipes import RECIPE_DIR
from larimar.train.distributed import FAILURE_MARKER, STATE_FILE
from larimar.model import LarimarModel
from larimar.train.run_record import read_metrics
from larimar.train.config import load_train_config
from tests.conftest import ROOT, require_shared

TINY = RECIPE_DIR / "tiny.yaml"
CONFIGS = sorted(p for p in RECIPE_DIR.glob("*.yaml") if not p.name.startswith("sweep-"))


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_job = _job("train")
curve_job = _job("learning_curve")


# -- config (fast) ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_train_config(path)
    ds = cfg.deepspeed_config()
    assert ds["zero_optimization"]["stage"] == 2 == cfg.deepspeed.zero_stage
    assert (
        ds["train_batch_size"] == cfg.optim.micro_batch_episodes * cfg.optim.grad_accumulation * cfg.scaling.num_workers
    )
    assert cfg.chunk_tokens == cfg.model.max_length - 2 == 62  # <bos> 62 tokens <eos>: the paper's 64


def test_paper_configs_match_the_paper():
    big = load_train_config("larimar-1.3b")
    assert (big.model.encoder, big.model.decoder, big.model.memory.slots, big.model.memory.latent_dim) == (
        "bert-large-cased",
        "gpt2-large",
        512,
        768,
    )
    assert (big.optim.lr, big.data.episode_size, big.scaling.num_workers, big.deepspeed.precision) == (
        5e-5,
        16,
        8,
        "bf16",
    )
    six = load_train_config("larimar-6b")
    assert (six.model.decoder, six.optim.lr, six.deepspeed.precision) == ("gpt-j-6b", 5e-6, "bf16")


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.stepz=3", "optim.stepz"),
        ("optim.lr=-1", "optim.lr"),
        ("data.chunk_tokens=100", "data.chunk_tokens"),
        ("deepspeed.zero_stage=3", "deepspeed.zero_stage"),
        ("deepspeed.precision=bf16", "deepspeed.precision"),
        ("debug.fail_at_step=99", "debug.fail_at_step"),
        ("data.source=./no/such/file.raw", "data.source"),
    ],
)
def test_bad_config_exits_in_seconds_naming_the_key_before_ray_starts(override, key, capsys):
    import ray

    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        train_job.main(["--config", str(TINY), override])
    assert exc.value.code == 2
    assert key in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10
    assert not ray.is_initialized()


def test_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match="run.nmae"):
        load_train_config(TINY, ["run.nmae=x"])


# -- real runs (slow) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the in-process runs (jobs/train.py leaves an initialised Ray running)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def _train(tmp_path, *overrides) -> dict:
    """jobs/train.py on the tiny config in the module's Ray, a few steps over 256 chunks (plenty:
    a step reads 8 per worker)."""
    require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    return train_job.main(
        [
            "--config",
            str(TINY),
            f"run.storage_path={tmp_path}",
            "data.limit=256",
            "optim.warmup_steps=1",
            "run.log_every=1",
            *overrides,
        ]
    )


@pytest.mark.slow
def test_run_checkpoints_exports_a_loadable_model_and_resumes_at_the_saved_step(tmp_path, ray_local):
    first = _train(tmp_path, "optim.steps=2", "run.checkpoint_every=2")
    m = first["metrics"]
    assert (m["step"], m["start_step"]) == (2, 0)
    assert {"loss/reconstruction", "loss/autoencoder", "loss/lm", "loss/kl", "tokens_per_second"} <= set(m)
    ckpt = Path(first["checkpoint"])
    assert json.loads((ckpt / STATE_FILE).read_text())["step"] == 2
    assert {p.name for p in (ckpt / "deepspeed").iterdir()} >= {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }

    model = LarimarModel.from_pretrained(first["model"])
    trained = torch.load(ckpt / "deepspeed" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert torch.equal(model.memory.prior_mean, trained["memory.prior_mean"])  # the export is the trained model
    prompt = model.tokenize_for_decoder(["The lobster is"], add_eos=False, padding_side="left")
    z = model.encode_texts(["The lobster is blue ."])
    out = model.decoder.generate(prompt["input_ids"], prompt["attention_mask"], z, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]

    again = _train(tmp_path, "optim.steps=3", "run.checkpoint_every=2")
    assert (again["metrics"]["start_step"], again["metrics"]["step"]) == (2, 3)  # resumed, not from zero
    assert json.loads((Path(again["checkpoint"]) / STATE_FILE).read_text())["step"] == 3

    # The run's record: the resolved config, and one metrics line per logged step, resumed in place
    run = tmp_path / "larimar-tiny"
    records = read_metrics(str(run))
    assert [r["step"] for r in records] == [1, 2, 3] and records[2]["start_step"] == 2
    assert {"loss", "loss/reconstruction", "lr", "tokens_per_second", "step_seconds"} <= set(records[0])
    assert records[2]["loss"] == again["metrics"]["loss"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["optim"]["steps"] == 3 and resolved["run"]["storage_path"] == str(tmp_path)

    # Learning curves evaluate each kept checkpoint as a model: step 3's weights are the exported ones.
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]
    cfg = load_train_config(TINY)
    at3 = dict(list_checkpoints(run))[3]
    exported = LarimarModel.from_pretrained(again["model"]).state_dict()
    loaded = load_checkpoint_model(cfg.model, at3).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in exported.items())
    torch.manual_seed(cfg.run.seed)  # the weights training started from: loading replaced them
    assert not torch.equal(LarimarModel(cfg.model).state_dict()["memory.prior_mean"], loaded["memory.prior_mean"])
    with pytest.raises(ConfigError, match="does not fit"):
        load_checkpoint_model(load_train_config(TINY, ["model.memory.latent_dim=8"]).model, at3)

    require_shared("data", "counterfact", "dev_canonical_100.json")
    out = tmp_path / "curve"
    args = [
        "--config",
        str(TINY),
        f"run.storage_path={tmp_path}",
        "--experiments",
        "counterfact",
        "--limit",
        "2",
        "--out",
        str(out),
    ]
    assert curve_job.main(args) == 0
    rows = (out / "checkpoints.csv").read_text().splitlines()
    assert rows[0].startswith("step,ES,PS,NS,Score") and [r.split(",")[0] for r in rows[1:]] == ["2", "3"]
    loss_rows = (out / "loss.csv").read_text().splitlines()[1:]  # read from metrics.jsonl, not log text
    assert [(int(r.split(",")[0]), float(r.split(",")[1])) for r in loss_rows] == [
        (r["step"], r["loss"]) for r in records
    ]
    assert (out / "curve.png").stat().st_size > 0
    done = (out / "step_3" / "counterfact.json").stat().st_mtime_ns
    assert curve_job.main([*args, "--steps", "3"]) == 0  # a rerun reuses the finished evaluation
    assert (out / "step_3" / "counterfact.json").stat().st_mtime_ns == done
    assert [r.split(",")[0] for r in (out / "checkpoints.csv").read_text().splitlines()[1:]] == ["3"]
    assert curve_job.main([*args, "--steps", "7"]) == 2  # no such checkpoint: a named error


@pytest.mark.slow
def test_an_injected_worker_failure_is_survived_and_the_run_finishes(tmp_path, ray_local):
    """Also run.checkpoint_score: Ray's CheckpointConfig ranks the checkpoints by the metric and the
    exported model is the best one (ranked by the highest loss here, so that it need not be the last)."""
    out = _train(
        tmp_path,
        "run.name=faulty",
        "optim.steps=2",
        "run.checkpoint_every=1",
        "debug.fail_at_step=2",
        "run.max_failures=1",
        "run.keep_checkpoints=2",
        "run.checkpoint_score=loss",
        "run.checkpoint_score_order=max",
        "optim.lr=0.05",
    )
    assert (tmp_path / "faulty" / FAILURE_MARKER).exists()  # it did fail once
    assert (out["metrics"]["step"], out["metrics"]["start_step"]) == (2, 1)  # restarted from the step-1 checkpoint
    assert (tmp_path / "faulty" / "model" / "model.safetensors").exists()
    records = read_metrics(str(tmp_path / "faulty"))
    assert [r["step"] for r in records] == [1, 2]  # the failed attempt's step-2 line was replaced on resume
    losses = {r["step"]: r["loss"] for r in records}
    best = max(losses, key=losses.get)
    assert out["best"]["step"] == best
    kept = dict(list_checkpoints(tmp_path / "faulty"))
    exported = LarimarModel.from_pretrained(out["model"]).state_dict()
    at_best = LarimarModel.from_pretrained(kept[best] / "model").state_dict()
    assert all(torch.equal(at_best[k], v) for k, v in exported.items())
    other = LarimarModel.from_pretrained(kept[3 - best] / "model").state_dict()
    assert not all(torch.equal(other[k], v) for k, v in exported.items())
