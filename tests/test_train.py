"""Distributed training (larimar/distributed.py, larimar/train_config.py, jobs/train.py).

The slow tests run the real thing on CPU: a local Ray cluster, 2 Ray Train workers, each a
DeepSpeed ZeRO-2 engine over gloo, on WikiText-2 chunks with the tiny config.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from larimar.config import ConfigError
from larimar.distributed import FAILURE_MARKER, STATE_FILE
from larimar.model import LarimarModel
from larimar.train_config import load_train_config
from tests.conftest import ROOT, require_shared

TINY = ROOT / "jobs" / "configs" / "tiny.yaml"
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_job = _job("train")


# -- config (fast) ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_train_config(path)
    ds = cfg.deepspeed_config()
    assert ds["zero_optimization"]["stage"] == 2 == cfg.deepspeed.zero_stage
    assert ds["train_batch_size"] == cfg.optim.micro_batch_episodes * cfg.optim.grad_accumulation * cfg.scaling.num_workers
    assert cfg.chunk_tokens == cfg.model.max_length - 2 == 62  # <bos> 62 tokens <eos>: the paper's 64


def test_paper_configs_match_the_paper():
    big = load_train_config(ROOT / "jobs" / "configs" / "larimar-1.3b.yaml")
    assert (big.model.encoder, big.model.decoder, big.model.memory.slots, big.model.memory.latent_dim) == \
        ("bert-large-cased", "gpt2-large", 512, 768)
    assert (big.optim.lr, big.data.episode_size, big.scaling.num_workers, big.deepspeed.precision) == (5e-5, 16, 8, "bf16")
    six = load_train_config(ROOT / "jobs" / "configs" / "larimar-6b.yaml")
    assert (six.model.decoder, six.optim.lr, six.deepspeed.precision) == ("gpt-j-6b", 5e-6, "bf16")


@pytest.mark.parametrize("override,key", [
    ("optim.stepz=3", "optim.stepz"),
    ("optim.lr=-1", "optim.lr"),
    ("data.chunk_tokens=100", "data.chunk_tokens"),
    ("deepspeed.zero_stage=3", "deepspeed.zero_stage"),
    ("deepspeed.precision=bf16", "deepspeed.precision"),
    ("debug.fail_at_step=99", "debug.fail_at_step"),
    ("data.source=./no/such/file.raw", "data.source"),
])
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
    require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    return train_job.main(["--config", str(TINY), f"run.storage_path={tmp_path}", *overrides])


@pytest.mark.slow
def test_run_checkpoints_exports_a_loadable_model_and_resumes_at_the_saved_step(tmp_path, ray_local):
    first = _train(tmp_path, "optim.steps=4", "run.checkpoint_every=2", "run.log_every=2")
    m = first["metrics"]
    assert (m["step"], m["start_step"]) == (4, 0)
    assert {"loss/reconstruction", "loss/autoencoder", "loss/lm", "loss/kl", "tokens_per_second"} <= set(m)
    ckpt = Path(first["checkpoint"])
    assert json.loads((ckpt / STATE_FILE).read_text())["step"] == 4
    assert {p.name for p in (ckpt / "deepspeed").iterdir()} >= {
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}

    model = LarimarModel.from_pretrained(first["model"])
    trained = torch.load(ckpt / "deepspeed" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert torch.equal(model.memory.prior_mean, trained["memory.prior_mean"])  # the export is the trained model
    prompt = model.tokenize_for_decoder(["The lobster is"], add_eos=False, padding_side="left")
    z = model.encode_texts(["The lobster is blue ."])
    out = model.decoder.generate(prompt["input_ids"], prompt["attention_mask"], z, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]

    again = _train(tmp_path, "optim.steps=6", "run.checkpoint_every=2", "run.log_every=2")
    assert (again["metrics"]["start_step"], again["metrics"]["step"]) == (4, 6)  # resumed, not from zero
    assert json.loads((Path(again["checkpoint"]) / STATE_FILE).read_text())["step"] == 6


@pytest.mark.slow
def test_an_injected_worker_failure_is_survived_and_the_run_finishes(tmp_path, ray_local):
    out = _train(tmp_path, "run.name=faulty", "optim.steps=4", "run.checkpoint_every=2", "debug.fail_at_step=3",
                 "run.max_failures=1")
    assert (tmp_path / "faulty" / FAILURE_MARKER).exists()  # it did fail once
    assert (out["metrics"]["step"], out["metrics"]["start_step"]) == (4, 2)  # restarted from the step-2 checkpoint
    assert (tmp_path / "faulty" / "model" / "model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_runs_the_tiny_config_end_to_end(tmp_path):
    data = require_shared("data")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port, dash = _free_port(), _free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    # --block keeps `ray start` in the foreground; terminating its process group stops exactly this
    # cluster (`ray stop` would stop every Ray on the machine). A private --temp-dir keeps its
    # address out of /tmp/ray/ray_current_cluster, which a later plain ray.init() would try to join.
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                             "--num-cpus=4", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--block"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("the Ray head did not come up within 90 s")
                time.sleep(1)
        runtime_env = {"env_vars": {"LARIMAR_DATA_DIR": str(data)}}
        submit = [str(ray_bin), "job", "submit", "--address", address, "--working-dir", str(ROOT),
                  "--runtime-env-json", json.dumps(runtime_env), "--",
                  "python", "jobs/train.py", "--config", "jobs/configs/tiny.yaml", f"run.storage_path={tmp_path}",
                  "optim.steps=2", "run.checkpoint_every=2", "run.log_every=1"]
        for _ in range(30):  # the dashboard answers before the head's job agent has registered
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "[larimar] step 2/2" in job.stdout and "trained model:" in job.stdout
        assert (tmp_path / "larimar-tiny" / "model" / "model.safetensors").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
