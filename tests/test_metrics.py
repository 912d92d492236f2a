"""Metrics end to end: a real Prometheus scraping a real local Ray that runs a short training job
(jobs/train.py, `ray job submit`) and the Serve application (deployed from the same rendered
config as the RayService, over the dashboard's REST API as KubeRay does); every PromQL expression
of the Grafana dashboards must return data. Plus the dashboards' structure and the provisioning
payloads (no Grafana server can be installed here: neither Debian nor PyPI/npm ship one).

Prometheus is Debian's `prometheus` package (installed by `make install` / .ci/run). ~3 minutes
on 2 cores: one Ray head, a 20-step tiny training run, one Serve application, ~30 s of traffic.
The run is 20 steps, not 4, so that its step-time histogram rises across one of Ray's 10 s
exports: a histogram first seen with all its counts has no rate, and the quantile panels no data
(a CI run under heavy load failed so with 4 steps).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import requests
import yaml

from larimar_ops import dashboards, deploy
from larimar.serving.auth import hash_key
from tests.conftest import ROOT, require_shared
from tests.services import free_ports, start_ray_head, stop_head, wait_http

PROMETHEUS_CONFIG = ROOT / "platform" / "prometheus" / "prometheus.yml"
KEY = "metrics-test-key"
RUN = "metrics-tiny"


def _prometheus_bin(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: Debian's `prometheus` package (make install does it)")
    return path


# -- static checks (fast) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def boards():
    return dashboards.load()


def test_dashboards_are_well_formed_with_unique_panel_ids_and_datasource_refs(boards):
    assert set(boards) == {"training.json", "serving.json", "memories.json"}
    for name, board in boards.items():
        assert dashboards.problems(board) == [], name
    assert len({b["uid"] for b in boards.values()}) == 3


def test_dashboard_checks_catch_duplicate_ids_foreign_datasources_and_unknown_variables(boards):
    board = json.loads(json.dumps(boards["serving.json"]))
    board["panels"][1]["id"] = board["panels"][0]["id"]
    board["panels"][2]["datasource"] = {"type": "prometheus", "uid": "some-other"}
    board["panels"][3]["targets"][0]["expr"] += " + on() vector($nope)"
    found = "\n".join(dashboards.problems(board))
    assert "duplicates [1]" in found
    assert "panel 3" in found and "datasource must be" in found
    assert "variable $nope is not defined" in found


def test_dashboards_cover_what_the_issue_asks_for(boards):
    exprs = {name: " ".join(e for _, e in dashboards.expressions(b)) for name, b in boards.items()}
    for metric in (
        "larimar_train_loss",
        "larimar_train_tokens_per_second",
        "larimar_train_checkpoint_timestamp_seconds",
    ):
        assert metric in exprs["training.json"]
    for metric in (
        "larimar_http_requests_total",
        "larimar_http_latency_seconds_bucket",
        "larimar_memory_edits_total",
        "larimar_scope_checks_total",
        "serve_num_http_error_requests_total",
    ):
        assert metric in exprs["serving.json"]
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, endpoint)" in exprs["serving.json"]
    for metric in (
        "larimar_memories",
        "larimar_memory_fill_ratio",
        "larimar_memory_version_max",
        "larimar_memory_snapshot_age_seconds",
    ):
        assert metric in exprs["memories.json"]


def test_provisioning_payloads(boards):
    ds = dashboards.datasource_payload("http://prometheus:9090")
    assert (
        ds["type"] == "prometheus" and ds["uid"] == dashboards.DATASOURCE_UID and ds["url"] == "http://prometheus:9090"
    )
    board = boards["training.json"] | {"id": 17}
    body = dashboards.dashboard_payload(board)
    assert body["overwrite"] and body["folderUid"] == dashboards.FOLDER_UID and "id" not in body["dashboard"]
    [ds_var] = [v for v in body["dashboard"]["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["current"]["value"] == dashboards.DATASOURCE_UID
    assert board["id"] == 17  # the loaded dashboard is not modified
    assert dashboards.main(["--check"]) == 0


def test_provision_command_reports_an_unreachable_grafana_cleanly(capsys):
    port = free_ports(1)[0]  # nothing listens there
    code = dashboards.main(
        ["--grafana-url", f"http://127.0.0.1:{port}", "--token", "t", "--prometheus-url", "http://127.0.0.1:9090"]
    )
    assert code == 1 and f"provisioning http://127.0.0.1:{port} failed" in capsys.readouterr().err


def test_shipped_prometheus_config_is_valid_and_reads_rays_service_discovery_file():
    out = subprocess.run(
        [_prometheus_bin("promtool"), "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [job] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    monitor = yaml.safe_load((ROOT / "platform" / "prometheus" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


# -- the real stack (slow) -------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def finite_points(self, expr: str, start: float) -> int:
        data = self.get("/api/v1/query_range", query=expr, start=start, end=time.time(), step="2s")
        return sum(1 for series in data["result"] for _, v in series["values"] if math.isfinite(float(v)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Ray head (every port free-chosen, private temp dir, as in tests/test_train.py), Prometheus
    on the shipped config, a finished tiny training job and the deployed Serve application."""
    data = require_shared("data")
    tmp = tmp_path_factory.mktemp("metrics")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    prom_port, serve_port = free_ports(2)
    ray_bin = Path(sys.executable).parent / "ray"
    head_log, prom_log = tmp / "ray-head.log", tmp / "prometheus.log"
    head, ports, temp_dir = start_ray_head(env, head_log, cwd=ROOT)
    # The shipped config, pointed at this head's discovery file and scraping faster.
    cfg = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    cfg["global"]["scrape_interval"] = "2s"
    cfg["scrape_configs"][0]["file_sd_configs"][0]["files"] = [f"{temp_dir}/prom_metrics_service_discovery.json"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    prom = subprocess.Popen(
        [
            _prometheus_bin(),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=prom_log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    t0 = time.time()
    phases = {}  # seconds per setup phase, printed with -s (and kept in the report on failure)

    def mark(name):
        phases[name] = round(time.time() - t0 - sum(phases.values()), 1)
        print(f"[metrics] {name}: {phases[name]} s", flush=True)

    try:
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60, "prometheus", prom, prom_log)
        wait_http(f"{address}/api/version", 90, "`ray start --head`", head, head_log)
        mark("ray head and prometheus up")

        # The README's job command: `ray job submit --working-dir .` uploads the checkout and the
        # entrypoint says `python` (this interpreter's directory is first on the head's PATH, as
        # an activated virtualenv's would be), on a bundled recipe with a test-sized run. This is
        # the project's one test of that submission path (it once had its own Ray head, 85 s).
        submit = [
            str(ray_bin),
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            RUN,
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps({"env_vars": {"LARIMAR_DATA_DIR": str(data)}}),
            "--",
            "python",
            "jobs/train.py",
            "--config",
            "tiny",
            f"run.name={RUN}",
            f"run.storage_path={tmp / 'runs'}",
            "optim.steps=20",
            "optim.warmup_steps=1",
            "run.checkpoint_every=10",
            "run.log_every=1",
            "data.limit=256",
            "scaling.num_workers=1",
        ]
        for _ in range(60):  # the dashboard answers a few seconds before the job agent registers
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(1)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "[larimar] step 20/20" in job.stdout and "trained model:" in job.stdout, job.stdout[-3000:]
        model = tmp / "runs" / RUN / "model"
        assert (model / "model.safetensors").exists()
        mark("training job")

        # The RayService's config, rendered for this machine: same application, local args.
        base = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
        serve_cfg = deploy.render_serve_config(
            base,
            deploy.ServeArgs(
                application="larimar",
                args={
                    "config": None,
                    "model": str(model),
                    "storage": str(tmp / "serve-store"),
                    "snapshot_every": 3,
                    "torch_threads": 1,
                    "api_keys": [{"tenant": "acme", "sha256": hash_key(KEY)}],
                },
            ),
        )
        serve_cfg["http_options"] = {"host": "127.0.0.1", "port": serve_port}
        (tmp / "serve.yaml").write_text(yaml.safe_dump(serve_cfg))
        out = subprocess.run(
            [str(Path(sys.executable).parent / "serve"), "deploy", str(tmp / "serve.yaml"), "--address", address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        wait_http(f"http://127.0.0.1:{serve_port}/readyz", 240, "the Serve application", head, head_log)
        mark("serve deploy")
        yield {
            "prometheus": Prometheus(f"http://127.0.0.1:{prom_port}"),
            "url": f"http://127.0.0.1:{serve_port}",
            "t0": t0,
        }
    finally:
        stop_head(head, temp_dir)
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()


def _traffic(url: str) -> None:
    """Every kind of request the dashboards count: writes (batched by concurrency), reads in and
    out of scope, scoring, completions, forgets, and client errors (401, 404, 422)."""
    h = {"Authorization": f"Bearer {KEY}"}
    mid = requests.post(f"{url}/v1/memories", json={"name": "metrics", "slots": 16}, headers=h, timeout=60).json()["id"]
    facts = ["alice lives in tokyo .", "bob plays the drums .", "carol teaches physics .", "dave drives a bus ."]
    with cf.ThreadPoolExecutor(4) as pool:
        ids = list(
            pool.map(
                lambda f: requests.post(
                    f"{url}/v1/memories/{mid}/facts", json={"facts": [{"text": f}]}, headers=h, timeout=60
                ).json()["ids"][0],
                facts,
            )
        )
    for prompt in ("alice lives in", "bob plays the", "the weather tomorrow is"):
        r = requests.post(
            f"{url}/v1/memories/{mid}/generate", json={"prompt": prompt, "max_tokens": 2}, headers=h, timeout=60
        )
        assert r.status_code == 200, r.text
    assert (
        requests.post(
            f"{url}/v1/memories/{mid}/score",
            json={"prompt": "alice lives in", "candidates": ["tokyo"]},
            headers=h,
            timeout=60,
        ).status_code
        == 200
    )
    assert (
        requests.post(
            f"{url}/v1/completions",
            json={"prompt": "carol teaches", "max_tokens": 2, "memory_id": mid},
            headers=h,
            timeout=60,
        ).status_code
        == 200
    )
    assert requests.delete(f"{url}/v1/memories/{mid}/facts/{ids[0]}", headers=h, timeout=60).status_code == 200
    assert requests.get(f"{url}/v1/memories", timeout=30).status_code == 401
    assert requests.get(f"{url}/v1/memories/nope", headers=h, timeout=30).status_code == 404
    assert (
        requests.post(f"{url}/v1/memories/{mid}/generate", json={"max_tokens": 2}, headers=h, timeout=30).status_code
        == 422
    )


@pytest.mark.slow
def test_every_dashboard_expression_returns_data_from_ray_and_serve(stack, boards):
    prom: Prometheus = stack["prometheus"]
    targets = prom.get("/api/v1/targets")["activeTargets"]
    assert targets and any(t["health"] == "up" for t in targets), targets
    for _ in range(3):  # three rounds, ~10 s apart: rates see increases inside their window
        _traffic(stack["url"])
        time.sleep(10)
    queries = [
        (where, dashboards.to_promql(expr)) for b in boards.values() for where, expr in dashboards.expressions(b)
    ]
    missing = queries
    deadline = time.time() + 90  # Ray's agent exports every 10 s; Serve re-sets the gauges every 10 s
    while missing and time.time() < deadline:
        missing = [(w, q) for w, q in missing if prom.finite_points(q, stack["t0"]) == 0]
        if missing:
            time.sleep(5)
    assert not missing, "no data for:\n" + "\n".join(f"{w}: {q}" for w, q in missing)
    # The dashboards' variables offer this run and this application.
    for board in boards.values():
        for name, metric, label in dashboards.variable_queries(board):
            values = prom.get(
                f"/api/v1/label/{label}/values", **{"match[]": metric}, start=stack["t0"], end=time.time()
            )
            assert values == [RUN] if name == "run" else "larimar" in values, (board["uid"], name, values)


@pytest.mark.slow
def test_memory_gauges_track_the_served_state(stack):
    """The memory dashboard's numbers are the state the API reports, not just any data."""
    prom: Prometheus = stack["prometheus"]
    h = {"Authorization": f"Bearer {KEY}"}
    memories = requests.get(f"{stack['url']}/v1/memories", headers=h, timeout=30).json()
    deadline = time.time() + 60
    while True:
        got = prom.get("/api/v1/query", query="max(ray_larimar_memories)")["result"]
        version = prom.get("/api/v1/query", query="max(ray_larimar_memory_version_max)")["result"]
        if (
            got
            and version
            and float(got[0]["value"][1]) == len(memories)
            and float(version[0]["value"][1]) == max(m["version"] for m in memories)
        ):
            break
        if time.time() > deadline:
            pytest.fail(f"gauges {got} / {version} never matched the API's {memories}")
        time.sleep(3)
