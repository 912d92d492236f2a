"""Hyperparameter sweeps (larimar/train/tuning.py, tune/sweep.py) and the validation metrics they optimise
(larimar/train/validation.py).

The slow test runs the real thing: a local Ray with the dashboard on, 4 Tune trials of the tiny
config, each a Ray Train + DeepSpeed run of a few steps on WikiText-2 chunks reporting held-out
metrics, ASHA stopping some of them. ~2 minutes on 2 cores, then a rerun that restores the finished
experiment in seconds.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from larimar.config import ConfigError
from larimar.recipes import RECIPE_DIR
from larimar.train.distributed import resolve_paths
from larimar.train.config import load_train_config
from larimar.train.sweep_config import check_metric, load_sweep_config, parse_space
from larimar.train.tuning import concurrent_trials
from tests.conftest import ROOT, require_shared

TINY_SWEEP = RECIPE_DIR / "sweep-tiny.yaml"
SWEEPS = sorted(RECIPE_DIR.glob("sweep-*.yaml"))
TINY = RECIPE_DIR / "tiny.yaml"
COUNTERFACT = "../shared/data/counterfact/dev_canonical_100.json"


def _sweep_job():
    spec = importlib.util.spec_from_file_location("tune_sweep", ROOT / "tune" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep_job = _sweep_job()


# -- config (fast) ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_parse_against_their_training_config(path):
    require_shared("data", "wikitext-2-raw")
    cfg = load_sweep_config(path)
    base = resolve_paths(load_train_config(cfg.train, cfg.overrides))
    params = parse_space(cfg.search, base)
    check_metric(cfg, base)
    assert any(p.swept for p in params)
    assert base.validation.enabled


def test_capacity_sweep_covers_the_papers_memory_sizes_with_k_not_above_c():
    cfg = load_sweep_config(RECIPE_DIR / "sweep-tiny-capacity.yaml")
    base = load_train_config(cfg.train, [o for o in cfg.overrides if not o.startswith("validation.")])
    assert cfg.search.space["K"] == {"grid": [128, 256, 512, 1024]}
    assert max(cfg.search.space["K"]["grid"]) <= base.model.memory.latent_dim


@pytest.mark.parametrize(
    "override,key",
    [
        ("search.space.slotz={grid: [1, 2]}", "search.space.slotz"),  # not a TrainConfig key
        ("search.space.sigma_w={grid: [0.1, -1]}", "search.space.sigma_w"),  # MemoryConfig rejects -1
        ("search.space.lr={loguniform: [0, 1]}", "search.space.lr.loguniform"),
        ("search.space.K={grid: []}", "search.space.K.grid"),
        ("search.space.K={grid: [16], uniform: [1, 2]}", "search.space.K"),
        ("search.space.scaling.num_workers={grid: [1, 2]}", "search.space.scaling.num_workers"),  # fixed per sweep
        ("metric=val/nope", "metric"),
        ("search.algorithm=bayes", "search.algorithm"),
        ("scheduler.grace_period=99", "scheduler.grace_period"),
    ],
)
def test_bad_sweep_config_exits_naming_the_key_before_ray_starts(override, key, capsys):
    import ray

    require_shared("data", "wikitext-2-raw")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        sweep_job.main(["--config", str(TINY_SWEEP), "experiment.storage_path=/nonexistent/never-written", override])
    assert exc.value.code == 2
    assert key in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30
    assert not ray.is_initialized()


def test_val_metric_without_validation_names_the_fix():
    cfg = load_sweep_config(TINY_SWEEP)
    base = load_train_config(TINY)
    with pytest.raises(ConfigError, match="validation.enabled=true"):
        check_metric(cfg, base)


def test_concurrent_trials_follow_the_cluster_resources():
    cfg = load_sweep_config(TINY_SWEEP)
    two_cpu_workers = load_train_config(TINY)  # 2 workers x 1 CPU
    assert concurrent_trials(cfg, two_cpu_workers, {"CPU": 8}) == 4
    assert concurrent_trials(cfg, two_cpu_workers, {"CPU": 1}) == 1  # waits for resources, never 0
    cfg.resources.trial_driver_cpus = 1
    assert concurrent_trials(cfg, two_cpu_workers, {"CPU": 9}) == 3
    cfg.resources.max_concurrent_trials = 2
    assert concurrent_trials(cfg, two_cpu_workers, {"CPU": 9}) == 2
    gpu = load_train_config(TINY, ["scaling.use_gpu=true", "scaling.num_workers=2"])
    cfg = load_sweep_config(TINY_SWEEP)
    assert concurrent_trials(cfg, gpu, {"CPU": 64, "GPU": 8}) == 4


# -- validation metrics (fast, real tiny model) ------------------------------------------------


@pytest.fixture(scope="module")
def validation_setup():
    require_shared("data", "wikitext-2-raw", "wiki.test.raw")
    require_shared("data", "counterfact", "dev_canonical_100.json")
    from larimar.model import LarimarModel
    from larimar.train.validation import prepare_validation_texts

    cfg = resolve_paths(
        load_train_config(
            TINY,
            [
                "validation.enabled=true",
                "validation.chunks=16",
                "validation.decode_cap=8",
                "validation.capacity_sizes=[8,32]",
                f"validation.counterfact={COUNTERFACT}",
                "validation.counterfact_cases=2",
                "model.memory.pinv.rtol=1.0e-5",
            ],
        )
    )
    torch.manual_seed(0)
    return cfg, prepare_validation_texts(cfg), LarimarModel(cfg.model)


def test_validation_texts_are_held_out_and_the_training_source_is_refused(validation_setup):
    from larimar.train.validation import prepare_validation_texts

    cfg, texts, _ = validation_setup
    assert len(texts) == 32 == len(set(texts))  # max(chunks, capacity_sizes), distinct
    bad = resolve_paths(load_train_config(TINY, ["validation.enabled=true", f"validation.source={cfg.data.source}"]))
    with pytest.raises(ConfigError, match="validation.source"):
        prepare_validation_texts(bad)


def test_validation_metrics_are_the_same_split_over_ranks_and_leave_training_state_alone(validation_setup):
    from larimar.train.validation import Validator, metric_names

    cfg, texts, model = validation_setup
    model.train()
    rng = torch.random.get_rng_state()
    whole = Validator(cfg, texts).metrics(model)
    assert torch.equal(rng, torch.random.get_rng_state())  # training's noise stream is not shifted
    assert model.training
    assert sorted(whole) == sorted(metric_names(cfg))

    partial = []
    ranks = [Validator(cfg, texts, rank, 2) for rank in range(2)]
    for v in ranks:
        v.metrics(model, reduce=lambda x: partial.append(x) or x)
    summed = [a + b for a, b in zip(*partial)]
    split = ranks[0].metrics(model, reduce=lambda x: summed)
    for k, v in whole.items():
        assert split[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k

    # With a real pseudo-inverse cut-off a memory returns what was written while N <= K (= 16),
    # and loses some of it beyond K (rank(M) <= K).
    assert whole["val/latent_err@8"] < 1e-3 and whole["val/latent_recall@8"] == 1.0
    assert whole["val/latent_err@32"] > 1e-3
    assert 0 <= whole["val/ES"] <= 1 and 0 <= whole["val/Score"] <= 1
    assert whole["val/rec_nll"] > 0


# -- a real sweep (slow) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_with_dashboard():
    """A local Ray with the dashboard: Ray removes ASHA-stopped trials' placement groups through it."""
    import ray

    from larimar.train.tuning import start_local_ray

    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _live_placement_groups() -> dict:
    from ray.util import placement_group_table

    return {k: v["state"] for k, v in placement_group_table().items() if v["state"] != "REMOVED"}


@pytest.mark.slow
def test_tiny_sweep_stops_trials_early_leaks_no_placement_groups_and_resumes(tmp_path, ray_with_dashboard):
    require_shared("data", "wikitext-2-raw")
    require_shared("data", "counterfact")
    args = ["--config", str(TINY_SWEEP), f"experiment.storage_path={tmp_path}"]
    summary = sweep_job.main(args)

    rows = summary.rows
    assert len(rows) == 4 and summary.concurrency == 2 and not summary.restored
    statuses = [r["status"] for r in rows]
    assert "error" not in statuses, [r["error"] for r in rows]
    assert statuses.count("stopped early") >= 1, rows  # ASHA acted on the held-out metric
    assert statuses.count("finished") >= 1
    assert {(r["K"], r["sigma_w"]) for r in rows} == {(16, 0.001), (16, 0.1), (32, 0.001), (32, 0.1)}
    for r in rows:
        assert r["status"] != "stopped early" or r["step"] < r["steps"]
        assert r["val/rec_nll"] > 0 and 0 <= r["val/ES"] <= 1

    report = tmp_path / "tiny-sweep" / "report"
    best = json.loads((report / "best.json").read_text())
    assert best["value"] == min(r["val/rec_nll"] for r in rows)
    assert set(best["params"]) == {"K", "sigma_w", "lr"}
    assert f"model.memory.slots={best['params']['K']}" in best["overrides"]
    for r in rows:  # finished trials keep their last checkpoint and their exported model
        if r["status"] == "finished":
            assert (Path(r["checkpoint"]) / "train_state.json").exists() and Path(r["model"], "config.json").exists()
    assert best["checkpoint"] is None or str(tmp_path / "tiny-sweep" / "train") in best["checkpoint"]
    csv_lines = (report / "trials.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 5 and "val/rec_nll" in csv_lines[0]
    assert "stopped early" in (report / "trials.md").read_text()
    for png in ("val_rec_nll_vs_K.png", "val_rec_nll_vs_sigma_w.png", "val_latent_recall_vs_N.png"):
        assert (report / png).stat().st_size > 1000

    # ASHA-stopped trials' Train placement groups are removed (asynchronously, by Ray's cleaner).
    deadline = time.monotonic() + 90
    while _live_placement_groups() and time.monotonic() < deadline:
        time.sleep(2)
    assert _live_placement_groups() == {}

    again = sweep_job.main(args)  # same experiment name: restored, nothing re-trained
    assert again.restored
    assert {r["trial_id"]: (r["status"], r["step"]) for r in again.rows} == {
        r["trial_id"]: (r["status"], r["step"]) for r in rows
    }
