"""Training across two nodes that survives losing one (larimar/train/distributed.py).

As close as one machine gets to training across A100 nodes: a `ray.cluster_utils.Cluster` with
two raylets (a head and a worker node, one CPU each), so Ray Train places one DeepSpeed ZeRO-2
worker on each; checkpoints on storage both nodes share (a directory here; NFS or S3 on a real
cluster). Mid-run the worker node is removed without warning (its raylet and every process on
it killed), and a new node joins a few seconds later, as an autoscaler or KubeRay would bring
one back. The scaling is fixed (2 workers), so Ray Train restarts the worker group once two
CPUs are there again (`FailureConfig(max_failures=1)`) and the run resumes from its last
checkpoint and finishes. Its own module: the cluster cannot share a process with test_train's
single-node Ray.
"""

import importlib.util
import json
import threading
import time

import pytest

from larimar.recipes import RECIPE_DIR
from larimar.train.checkpoints import list_checkpoints
from larimar.train.run_record import read_metrics
from tests.conftest import ROOT, require_shared

TINY = RECIPE_DIR / "tiny.yaml"


def _registered_steps(run) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (what a restart resumes from).
    A checkpoint's files can be on storage before that (rank 0's part uploaded, the collective
    report not yet finished): losing a node then restarts from the previous registered one."""
    snapshot = run / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (json.JSONDecodeError, KeyError):  # being rewritten
        return []
    return sorted(int(r["metrics"]["step"]) for r in results)


def _train_job():
    spec = importlib.util.spec_from_file_location("jobs_train_multinode", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_two_node_run_that_loses_a_node_resumes_from_its_last_checkpoint_and_finishes(tmp_path):
    require_shared("data", "wikitext-2-raw", "wiki.valid.raw")
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    steps, run = 24, tmp_path / "twonode"
    result: dict = {}

    def train() -> None:
        try:
            result["out"] = _train_job().main(
                [
                    "--config",
                    str(TINY),
                    f"run.storage_path={tmp_path}",
                    "run.name=twonode",
                    "data.limit=256",
                    "optim.warmup_steps=1",
                    f"optim.steps={steps}",
                    "run.log_every=1",
                    "run.checkpoint_every=4",
                    "run.keep_checkpoints=2",
                    "run.max_failures=1",
                    "scaling.num_workers=2",
                    "scaling.cpus_per_worker=1",
                ]
            )
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            result["error"] = err

    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        t = threading.Thread(target=train, daemon=True)
        t.start()
        deadline = time.time() + 600
        while not _registered_steps(run) and time.time() < deadline and t.is_alive():
            time.sleep(0.1)
        killed_after = max(_registered_steps(run), default=None)
        assert killed_after is not None and killed_after < steps, "no checkpoint before the end: nothing to kill"
        cluster.remove_node(worker_node, allow_graceful=False)  # the node is gone, with its worker
        lost_at = time.time()
        time.sleep(3)
        cluster.add_node(num_cpus=1)  # a replacement node joins
        t.join(900)
        assert not t.is_alive(), "the run did not finish after the node was replaced"
        assert "error" not in result, repr(result.get("error"))
        out = result["out"]
        # resumed from a checkpoint at or after the one that existed when the node was lost
        assert out["metrics"]["step"] == steps
        assert killed_after <= out["metrics"]["start_step"] < steps
        assert [r["step"] for r in read_metrics(str(run))] == list(range(1, steps + 1))
        assert (run / "model" / "model.safetensors").exists()
        assert [step for step, _ in list_checkpoints(run)][-1] == steps
        print(
            f"node lost after the step-{killed_after} checkpoint; resumed at {out['metrics']['start_step']}, "
            f"finished {time.time() - lost_at:.0f} s after the loss"
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
