"""The wheel works outside the checkout: built from this repo, installed into a fresh virtual
environment in a temporary directory, it trains the bundled ``tiny`` recipe, evaluates the result
and serves it, through the ``larimar`` console command.

The fresh environment gets the wheel and nothing else of this repo; its third-party dependencies
come from the test's own environment through a ``.pth`` line (installing torch, Ray and DeepSpeed
again would take ten minutes and prove nothing about our package). That path line does not run the
editable install's finder, so ``import larimar`` can only find the wheel, which the test checks.
"""

import hashlib
import json
import shutil
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from tests.conftest import require_shared
from tests.services import free_ports, stop_group, wait_http

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, a working directory outside the checkout, its environment)."""
    data = require_shared("data", "wikitext-2-raw", "wiki.valid.raw").parents[1]
    tmp = tmp_path_factory.mktemp("wheel")
    # setuptools stages the package in <checkout>/build and never prunes it: a stale module there
    # would ride into the wheel, so the build starts from nothing and leaves nothing behind.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        timeout=600,
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = (tmp / "dist").glob("larimar-*.whl")
    run([sys.executable, "-m", "venv", str(tmp / "venv")], timeout=300)
    bin_dir = tmp / "venv" / "bin"
    site = Path(
        run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], timeout=300)
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        LARIMAR_DATA_DIR=str(data),
        RAY_ADDRESS="local",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    return bin_dir, work, env


def test_the_wheel_is_the_package_and_leaves_the_checkout_tools_out(installed):
    bin_dir, work, env = installed
    out = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import larimar, larimar.recipes, importlib.util; "
            "print(larimar.__file__); print(larimar.recipes.names()); "
            "print(importlib.util.find_spec('larimar_ops'))",
        ],
        cwd=work,
        env=env,
    ).stdout.splitlines()
    assert str(bin_dir.parent) in out[0] and str(ROOT) not in out[0]
    assert "tiny" in out[1] and "larimar-smol-v2" in out[1] and "sweep-tiny" in out[1]
    assert out[2] == "None"


def test_train_eval_and_serve_from_the_wheel(installed):
    bin_dir, work, env = installed
    larimar = str(bin_dir / "larimar")
    train = run(
        [
            larimar,
            "train",
            "--config",
            "tiny",
            "optim.steps=2",
            "optim.warmup_steps=1",
            "run.log_every=1",
            "run.checkpoint_every=2",
            "data.limit=256",
            "scaling.num_workers=1",
            f"run.storage_path={work / 'runs'}",
        ],
        cwd=work,
        env=env,
        timeout=900,
    )
    assert "[larimar] done in" in train.stdout and ": step 2," in train.stdout, train.stdout[-2000:]
    model = work / "runs" / "larimar-tiny" / "model"
    assert (model / "model.safetensors").exists()

    run(
        [
            larimar,
            "eval",
            "sequential",
            "--model",
            str(model),
            "--data",
            "synthetic:12",
            "--checkpoints",
            "2",
            "--no-progress",
            "--out",
            str(work / "eval"),
        ],
        cwd=work,
        env=env,
        timeout=600,
    )
    report = json.loads((work / "eval" / "sequential.json").read_text())
    assert report["summary"]["edits"] == 12 and 0.0 <= report["summary"]["ERR"] <= 1.0

    port = free_ports(1)[0]
    key = "wheel-key"
    keys = f"api_keys=[{{tenant: wheel, sha256: {hashlib.sha256(key.encode()).hexdigest()}}}]"
    headers = {"Authorization": f"Bearer {key}"}
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [
            larimar,
            "serve",
            f"model={model}",
            f"storage={work / 'store'}",
            "scope_model=null",
            keys,
            "--port",
            str(port),
            "--num-cpus",
            "4",
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", 600, "larimar serve", server, work / "serve.log")
        mid = requests.post(f"{url}/v1/memories", json={"name": "wheel"}, headers=headers, timeout=60).json()["id"]
        wrote = requests.post(
            f"{url}/v1/memories/{mid}/facts",
            json={"facts": [{"prompt": "alice lives in", "target": "paris"}]},
            headers=headers,
            timeout=60,
        )
        assert wrote.status_code == 200, wrote.text
        gen = requests.post(
            f"{url}/v1/memories/{mid}/generate",
            json={"prompt": "alice lives in", "max_tokens": 3},
            headers=headers,
            timeout=60,
        )
        assert gen.status_code == 200 and gen.json()["used_memory"], gen.text
    finally:
        stop_group(server)
        log.close()
