"""Shared fixtures; tests that need ../shared skip without it unless LARIMAR_REQUIRE_SHARED=1 (CI)."""

import os
from pathlib import Path

# Tests never use the network; huggingface_hub reads this once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LARIMAR_SHARED_DIR", ROOT.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """Path under ../shared, or skip (fail in CI, where LARIMAR_REQUIRE_SHARED=1) when absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"{path} is absent: this test needs the project's shared data directory (../shared)"
        if os.environ.get("LARIMAR_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and LARIMAR_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README demo, run once per session: (output directory, summary). ~1.5 min on 2 cores."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("larimar_demo_job", ROOT / "jobs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(demo)
    out = tmp_path_factory.mktemp("demo")
    return out, demo.main(["--train", "--out", str(out)])


def tiny_editor():
    """A LarimarEditor on untrained tiny backbones (tiny-bert + tiny-llama, K = 16, C = 32), seeded."""
    from larimar import LarimarEditor, LarimarModel
    from larimar.config import from_dict
    from larimar.model import LarimarConfig

    torch.manual_seed(0)
    cfg = from_dict(
        LarimarConfig,
        {"encoder": "tiny-bert", "decoder": "tiny-llama", "max_length": 16, "memory": {"slots": 16, "latent_dim": 32}},
    )
    return LarimarEditor(LarimarModel(cfg))


def memory_actor_replica():
    """The live Serve application's MemoryActor replica (for tests that kill it)."""
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        if "MemoryActor" in info["name"] and "REPLICA" in info["name"].upper():
            return ray.get_actor(info["name"], namespace=info["namespace"])
    raise AssertionError("no MemoryActor replica found")
