"""The Serve application on a real local Ray, over real HTTP (larimar/serving/app.py, larimar/serving/).

Uses the demo model trained by the project's own training code (the session fixture `demo_run`).
"""

import concurrent.futures as cf
import json
import random
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from larimar.memory import SequentialMemory  # noqa: E402
from larimar.serving.auth import hash_key  # noqa: E402
from tests.conftest import memory_actor_replica  # noqa: E402
from larimar.serving.store import MemoryStore, StoreConfig  # noqa: E402

pytestmark = pytest.mark.slow
KEYS = {"acme": "key-acme-123", "globex": "key-globex-456"}
URL = "http://127.0.0.1:8000"
LOAD_KEY = "key-load-789"  # the failover test's clients: no rate limit in the way


def h(tenant: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="module")
def service(demo_run, tmp_path_factory):
    from larimar.serving.app import build

    storage = tmp_path_factory.mktemp("serve-store")
    settings = {
        "model": str(demo_run[0] / "model"),
        "storage": str(storage),
        "snapshot_every": 25,
        "api_keys": [{"tenant": t, "sha256": hash_key(k)} for t, k in KEYS.items()]
        + [{"tenant": "load", "sha256": hash_key(LOAD_KEY), "requests_per_second": 10000, "burst": 10000}],
        "limits": {"max_text_chars": 200, "max_facts_per_request": 8, "max_tokens": 16},
        "write_batch_size": 4,  # concurrent writes span several encoder batches, in flight together
    }
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    serve.run(build(settings), name="larimar", route_prefix="/")
    yield {"storage": storage, "settings": settings}
    serve.shutdown()
    ray.shutdown()


def assert_served_as_local(mid: str, local, prompts: list[str]) -> None:
    """Greedy answers over HTTP equal the Python memory's, text and whether the memory was used."""
    for prompt in prompts:
        served = requests.post(
            f"{URL}/v1/memories/{mid}/generate", headers=h("acme"), json={"prompt": prompt, "max_tokens": 4}
        ).json()
        [mine] = local.generate([prompt], max_new_tokens=4)
        assert (served["text"], served["used_memory"]) == (mine.text, mine.in_scope), prompt


def create(tenant="acme", **body) -> str:
    r = requests.post(f"{URL}/v1/memories", json=body, headers=h(tenant))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_write_then_generate_uses_the_fact_and_forget_removes_it(service):
    mid = create(name="people")
    r = requests.post(
        f"{URL}/v1/memories/{mid}/facts",
        headers=h("acme"),
        json={
            "facts": [{"prompt": "alice lives in", "target": "tokyo"}, {"prompt": "bob plays the", "target": "drums"}]
        },
    )
    assert r.status_code == 200 and r.json() == {"ids": [1, 2], "version": 1}
    g = requests.post(
        f"{URL}/v1/memories/{mid}/generate", headers=h("acme"), json={"prompt": "alice lives in", "max_tokens": 4}
    ).json()
    assert g["text"].startswith("tokyo") and g["used_memory"] and g["matched"][0]["fact_id"] == 1
    s = requests.post(
        f"{URL}/v1/memories/{mid}/score",
        headers=h("acme"),
        json={"prompt": "alice lives in", "candidates": ["tokyo", "paris"]},
    ).json()
    assert s["logprobs"][0] > s["logprobs"][1]
    c = requests.post(
        f"{URL}/v1/completions", headers=h("acme"), json={"prompt": "bob plays the", "max_tokens": 4, "memory_id": mid}
    ).json()
    assert c["object"] == "text_completion" and c["choices"][0]["text"].strip().startswith("drums")
    r = requests.delete(f"{URL}/v1/memories/{mid}/facts/1", headers=h("acme"))
    assert r.json() == {"forgotten": 1, "version": 2}
    g = requests.post(
        f"{URL}/v1/memories/{mid}/generate", headers=h("acme"), json={"prompt": "alice lives in", "max_tokens": 4}
    ).json()
    assert not g["text"].startswith("tokyo") and g["version"] == 2
    detail = requests.get(f"{URL}/v1/memories/{mid}", headers=h("acme")).json()
    assert [f["id"] for f in detail["stored"]] == [2]
    assert [(e["op"], e["fact_id"]) for e in detail["log"]] == [("write", 1), ("write", 2), ("forget", 1)]


def test_a_facts_subject_decides_scope_over_http(service):
    """The subject travels with the fact (stored and shown), and the served scope detector consults
    the memory only for queries that name it, like the Python editor (larimar.scope)."""
    mid = create(name="subjects")
    r = requests.post(
        f"{URL}/v1/memories/{mid}/facts",
        headers=h("acme"),
        json={"facts": [{"prompt": "alice lives in", "target": "tokyo", "subject": "alice"}]},
    )
    assert r.status_code == 200, r.text
    assert requests.get(f"{URL}/v1/memories/{mid}", headers=h("acme")).json()["stored"][0]["subject"] == "alice"
    named = requests.post(
        f"{URL}/v1/memories/{mid}/generate", headers=h("acme"), json={"prompt": "alice lives in", "max_tokens": 4}
    ).json()
    other = requests.post(
        f"{URL}/v1/memories/{mid}/generate", headers=h("acme"), json={"prompt": "alicia lives in", "max_tokens": 4}
    ).json()
    assert named["used_memory"] and not other["used_memory"]
    bad = requests.post(
        f"{URL}/v1/memories/{mid}/facts",
        headers=h("acme"),
        json={"facts": [{"prompt": "bob plays the", "target": "drums", "subject": ""}]},
    )
    assert bad.status_code in (400, 422) and "subject" in bad.text


def test_a_memory_built_in_python_serves_over_http_and_exports_back(service, demo_run, tmp_path):
    """The one memory file format (larimar.memory_file): save in Python, import over HTTP, the same
    answers from both paths, export, load in Python, the same state; relu addressing served too."""
    from larimar import LarimarEditor

    editor = LarimarEditor.from_pretrained(str(demo_run[0] / "model"))
    mem = editor.create_memory(keys="relu")
    mem.edit(["alice lives in", "bob plays the"], ["tokyo", "drums"], subject=["alice", None])
    mem.forget(mem.edit(["carol teaches"], ["math"])[0])
    path = mem.save(tmp_path / "kb.larimar.safetensors")
    r = requests.post(
        f"{URL}/v1/memories/import?name=offline",
        data=path.read_bytes(),
        headers={**h("acme"), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert (info["name"], info["facts"], info["keys"]) == ("offline", 2, "relu")
    assert_served_as_local(info["id"], mem, ["alice lives in", "bob plays the", "alicia lives in"])
    exported = requests.get(f"{URL}/v1/memories/{info['id']}/export", headers=h("acme"))
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/octet-stream"
    (tmp_path / "back.safetensors").write_bytes(exported.content)
    back = editor.load_memory(tmp_path / "back.safetensors")
    assert torch.equal(back.state.M, mem.state.M) and sorted(back.facts) == sorted(mem.facts)
    assert requests.get(f"{URL}/v1/memories/{info['id']}/export", headers=h("globex")).status_code == 404
    bad = requests.post(f"{URL}/v1/memories/import", data=b"not a memory file", headers=h("acme"))
    assert bad.status_code == 400 and "memory file" in bad.json()["error"]["message"]
    relu = requests.post(f"{URL}/v1/memories", json={"name": "r", "keys": "relu"}, headers=h("acme")).json()
    assert relu["keys"] == "relu"


def test_http_and_python_paths_store_bit_identical_keys_values_and_scope_vectors(service, demo_run, tmp_path):
    """The same facts written over HTTP and in Python, into memories of the same spec (relu keys,
    a seed), store bit-identical keys, values and scope vectors, and the same memory state."""
    from larimar import LarimarEditor
    from larimar.facts import make_fact
    from larimar.precision import default_encoder_precision, set_encoder_precision

    facts = [
        {"prompt": "dave works as a", "target": "pilot", "subject": "dave"},
        {"text": "erin keeps three cats. She lives in oslo."},
    ]
    mid = create(name="twin", slots=64, keys="relu", seed=3)
    r = requests.post(f"{URL}/v1/memories/{mid}/facts", json={"facts": facts}, headers=h("acme"))
    assert r.status_code == 200, r.text
    exported = requests.get(f"{URL}/v1/memories/{mid}/export", headers=h("acme"))
    (tmp_path / "served.safetensors").write_bytes(exported.content)
    editor = LarimarEditor.from_pretrained(str(demo_run[0] / "model"))
    # the encoder at the precision the encoder replica resolves (ServeSettings.encoder_precision: None)
    set_encoder_precision(editor.model.encoder, default_encoder_precision())
    served = editor.load_memory(tmp_path / "served.safetensors").core
    local = editor.create_memory(slots=64, keys="relu", seed=3)
    local.write_facts([make_fact(**facts[0]), make_fact(**facts[1])])  # one update, as one request is
    local = local.core
    assert sorted(served.latents) == sorted(local.latents) == [1, 2]
    for i in (1, 2):  # the fact path (larimar.fact_encoder) is one code path: bit for bit
        assert torch.equal(served.latents[i][0], local.latents[i][0]), i
        assert torch.equal(served.latents[i][1], local.latents[i][1]), i
    assert torch.equal(served.scope._vectors, local.scope._vectors) and served.scope._ids == local.scope._ids
    # The memory state comes out of float64 LAPACK (the reference's QR, the Woodbury solves), whose
    # last bits depend on the process's thread count: the same to ~1e-12, not bit for bit.
    for a, b in [
        (served.state.reference, local.state.reference),
        (served.state.M, local.state.M),
        (served.state.P, local.state.P),
    ]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    seeded = requests.post(f"{URL}/v1/memories", json={"name": "s", "seed": -1}, headers=h("acme"))
    assert seeded.status_code == 422 and "seed" in seeded.text


def test_concurrent_clients_match_a_replay_of_the_log(service):
    mid = create(name="load", slots=32)
    acked_writes, acked_forgets, versions = {}, [], []
    lock = threading.Lock()

    def client(i: int) -> None:
        rng = random.Random(i)
        for j in range(3):
            op = rng.random()
            if op < 0.5:
                r = requests.post(
                    f"{URL}/v1/memories/{mid}/facts",
                    headers=h("acme"),
                    json={"facts": [{"text": f"client {i} fact {j} ."}]},
                )
                assert r.status_code in (200, 409), r.text
                if r.status_code == 200:
                    with lock:
                        acked_writes.update({fid: f"client {i} fact {j} ." for fid in r.json()["ids"]})
                        versions.append(r.json()["version"])
            elif op < 0.7:
                with lock:
                    candidates = [f for f in acked_writes if f not in acked_forgets]
                if candidates:
                    fid = rng.choice(candidates)
                    r = requests.delete(f"{URL}/v1/memories/{mid}/facts/{fid}", headers=h("acme"))
                    assert r.status_code in (200, 404), r.text  # 404: another client forgot it first
                    if r.status_code == 200:
                        with lock:
                            acked_forgets.append(fid)
                            versions.append(r.json()["version"])
            else:
                r = requests.post(
                    f"{URL}/v1/memories/{mid}/generate",
                    headers=h("acme"),
                    json={"prompt": f"client {i} fact", "max_tokens": 2},
                )
                assert r.status_code == 200, r.text

    with cf.ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))
    assert len(versions) == len(set(versions))  # every acknowledged edit got its own version
    detail = requests.get(f"{URL}/v1/memories/{mid}", headers=h("acme")).json()
    assert detail["version"] == len(versions) == max(versions)
    live = {f["id"]: f["text"] for f in detail["stored"]}
    expected = {fid: t for fid, t in acked_writes.items() if fid not in acked_forgets}
    assert live == expected  # no lost and no duplicated edit

    # An independent replay of the durable log (snapshot + entries) reaches the same memory.
    replay = MemoryStore(StoreConfig(storage=str(service["storage"]), latent_dim=64))
    rec = replay.records[mid]
    assert rec.info.version == detail["version"] and {i: f.text for i, f in rec.memory.facts.items()} == live
    assert rec.events == detail["log"]
    # ... and that memory is the least-squares solution over exactly the surviving facts.
    fresh = SequentialMemory(rec.memory.state.reference, ridge=rec.memory.state.ridge)
    if rec.memory.latents:
        keys = torch.stack([rec.memory.latents[i][0] for i in sorted(rec.memory.latents)])
        values = torch.stack([rec.memory.latents[i][1] for i in sorted(rec.memory.latents)])
        fresh.write(keys, values)
    torch.testing.assert_close(rec.memory.state.M, fresh.M, atol=1e-6, rtol=1e-5)


def test_writes_the_ingress_batches_are_answered_each_on_its_own(service):
    """Concurrent writes reach the encoder and the memory actor in one call per batch (the
    ingress's `WhenFree` stages): a request the actor refuses (an unknown memory, a full one)
    fails alone, and every other one is acknowledged with its own ids and its own version. The
    service's `write_batch_size` of 4 splits these 14 requests over several encoder batches, so a
    batch is encoded while the one before it is committed."""
    mid, tiny = create(name="batched", slots=64), create(name="tiny", slots=2)
    bodies = [(mid, {"facts": [{"text": f"batched fact {i} ."}]}) for i in range(12)]
    bodies += [
        ("mem_nope", {"facts": [{"text": "a b ."}]}),
        (tiny, {"facts": [{"text": f"{n} ."} for n in ("one", "two", "three")]}),
    ]
    barrier = threading.Barrier(len(bodies))

    def send(item):
        memory_id, body = item
        barrier.wait()  # all at once, so that they share batches
        return requests.post(f"{URL}/v1/memories/{memory_id}/facts", headers=h("acme"), json=body, timeout=120)

    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(send, bodies))
    ok, unknown, full = answers[:12], answers[12], answers[13]
    assert all(r.status_code == 200 for r in ok), [r.text for r in ok]
    assert unknown.status_code == 404 and "not found" in unknown.text
    assert full.status_code == 409, full.text
    assert requests.get(f"{URL}/v1/memories/{tiny}", headers=h("acme")).json()["stored"] == []  # none of its 3
    ids = [r.json()["ids"] for r in ok]
    assert all(len(i) == 1 for i in ids) and sorted(i[0] for i in ids) == list(range(1, 13))
    assert len({r.json()["version"] for r in ok}) == 12
    stored = requests.get(f"{URL}/v1/memories/{mid}", headers=h("acme")).json()["stored"]
    by_id = {f["id"]: f["text"] for f in stored}
    assert {by_id[i[0]] for i in ids} == {f"batched fact {i} ." for i in range(12)}
    for r, (_, body) in zip(ok, bodies):  # each request got the id of its own fact
        assert by_id[r.json()["ids"][0]] == body["facts"][0]["text"]


def test_killing_the_memory_actor_loses_no_acknowledged_edit(service):
    mid = create(name="crash", slots=64)
    acked, stop = [], threading.Event()

    def writer(i: int) -> None:
        j = 0
        while not stop.is_set() and j < 40:
            try:
                r = requests.post(
                    f"{URL}/v1/memories/{mid}/facts",
                    headers=h("acme"),
                    json={"facts": [{"text": f"writer {i} item {j} ."}]},
                    timeout=60,
                )
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 200:
                acked.extend(r.json()["ids"])
            j += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked) < 5 and time.time() < deadline:
        time.sleep(0.05)
    ray.kill(memory_actor_replica(), no_restart=False)  # Serve's controller starts a new replica
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    for _ in range(120):  # wait for the replacement replica to restore and answer
        r = requests.get(f"{URL}/v1/memories/{mid}", headers=h("acme"), timeout=30)
        if r.status_code == 200:
            break
        time.sleep(1)
    stored = {f["id"] for f in r.json()["stored"]}
    assert acked and set(acked) <= stored  # every acknowledged write survived the crash
    assert len(stored) == len({f["text"] for f in r.json()["stored"]})  # none applied twice


def test_killing_each_replica_under_load_answers_503_with_retry_after_and_loses_no_edit(service):
    """16 clients write and generate (whole and streamed) while the decoder, the encoder and the
    memory actor are killed in turn (jobs/bench_failover.py, the same code as the benchmark)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_failover", ROOT / "jobs" / "bench_failover.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    headers = {"Authorization": f"Bearer {LOAD_KEY}"}
    r = requests.post(f"{URL}/v1/memories", json={"name": "failover", "slots": 2048}, headers=headers)
    assert r.status_code == 201, r.text
    report = bench.run_failover(URL, headers, r.json()["id"], clients=16, settle_s=3.0, timeout_s=90)
    print(json.dumps(report, indent=1))
    assert [w["target"] for w in report["outages"]] == ["Decoder", "Encoder", "MemoryActor"]
    assert report["before_first_kill"]["other_errors"] == 0 and report["before_first_kill"]["ok"] > 0
    for w in report["outages"]:
        assert w["recovered"], w  # /readyz said ready again
        assert w["readyz_503_seen"], w  # ... after saying 503 while the replica was being replaced
        assert w["other_errors"] == 0, w  # only 200 or 503 + Retry-After: no 500, no hang, no silent stream cut
        assert w["ok"] > 0, w
    assert report["acknowledged"] > 0
    assert report["acknowledged_lost"] == [] and report["duplicates"] == 0  # retried writes kept exactly once


def test_tenants_cannot_see_each_other(service):
    mid = create("acme", name="secret")
    assert requests.get(f"{URL}/v1/memories/{mid}", headers=h("globex")).status_code == 404
    assert mid not in [m["id"] for m in requests.get(f"{URL}/v1/memories", headers=h("globex")).json()]
    assert mid in [m["id"] for m in requests.get(f"{URL}/v1/memories", headers=h("acme")).json()]
    r = requests.post(f"{URL}/v1/memories/{mid}/facts", headers=h("globex"), json={"facts": [{"text": "x y z ."}]})
    assert r.status_code == 404
    assert requests.delete(f"{URL}/v1/memories/{mid}/facts/1", headers=h("globex")).status_code == 404
    assert requests.delete(f"{URL}/v1/memories/{mid}", headers=h("globex")).status_code == 404
    assert (
        requests.post(
            f"{URL}/v1/memories/{mid}/generate", headers=h("globex"), json={"prompt": "hi", "max_tokens": 4}
        ).status_code
        == 404
    )
    assert requests.get(f"{URL}/v1/memories").status_code == 401
    assert requests.get(f"{URL}/v1/memories", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_bad_inputs_get_clear_4xx(service):
    mid = create(slots=2)
    post = lambda path, **kw: requests.post(f"{URL}{path}", headers=h("acme"), timeout=30, **kw)  # noqa: E731
    cases = [
        (post(f"/v1/memories/{mid}/facts", data="{not json"), 422, None),
        (post(f"/v1/memories/{mid}/facts", json={"facts": []}), 422, None),
        (post(f"/v1/memories/{mid}/facts", json={"facts": [{"text": "   "}]}), 422, "non-empty"),
        (post(f"/v1/memories/{mid}/facts", json={"facts": [{"prompt": "only a prompt"}]}), 422, "prompt and target"),
        (post(f"/v1/memories/{mid}/facts", json={"facts": [{"text": "x" * 500}]}), 413, "limit is 200"),
        (post(f"/v1/memories/{mid}/facts", json={"facts": [{"text": f"f{i}"} for i in range(9)]}), 413, "limit is 8"),
        (post("/v1/memories/mem_nope/facts", json={"facts": [{"text": "a b c ."}]}), 404, "not found"),
        (post(f"/v1/memories/{mid}/generate", json={"prompt": "hi", "max_tokens": 1000}), 413, "max_tokens"),
        (post(f"/v1/memories/{mid}/generate", json={"prompt": ""}), 422, None),
        (requests.delete(f"{URL}/v1/memories/{mid}/facts/77", headers=h("acme")), 404, "fact 77"),
        (post("/v1/memories", json={"slots": 10**9}), 400, "slots"),
        (post("/v1/completions", json={"prompt": "hi", "best_of": 3}), 400, "best_of"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, (response.request.url, response.text)
        if text is not None:
            assert text in response.text
    assert post(f"/v1/memories/{mid}/facts", json={"facts": [{"text": "a ."}, {"text": "b ."}]}).status_code == 200
    full = post(f"/v1/memories/{mid}/facts", json={"facts": [{"text": "c ."}]})
    assert full.status_code == 409 and "2 of 2" in full.text
    assert requests.get(f"{URL}/readyz", timeout=60).status_code == 200


def test_a_write_batch_size_below_one_is_refused_by_name():
    from pydantic import ValidationError

    from larimar.serving.schemas import ServeSettings

    with pytest.raises(ValidationError, match="write_batch_size"):
        ServeSettings(write_batch_size=0)


def test_every_route_and_dependency_of_the_ingress_runs_on_its_event_loop():
    """FastAPI runs a plain `def` endpoint or dependency in a worker thread for each request; for
    the ingress's header readers that hop was about a tenth of its CPU under load. Every route
    and every dependency it has is therefore `async def`: a plain one added later fails here."""
    import inspect

    from fastapi.routing import APIRoute

    from larimar.serving.app import api

    def calls(dependant):
        yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    def api_routes(routes):  # FastAPI 0.165 keeps a class's routes behind an included router
        for r in routes:
            if isinstance(r, APIRoute):
                yield r
            yield from api_routes(
                getattr(r, "routes", None) or getattr(getattr(r, "original_router", None), "routes", [])
            )

    routes = list(api_routes(api.routes))
    assert {"/v1/memories/{memory_id}/facts", "/v1/chat/completions", "/healthz"} <= {r.path for r in routes}
    for route in routes:
        for call in calls(route.dependant):
            if call is not None:
                assert inspect.iscoroutinefunction(call), f"{route.path}: {call.__qualname__} is not async"


def test_serve_config_validates_with_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "larimar.serving.app:build"
    settings = yaml.safe_load((ROOT / app.args["config"]).read_text())
    from larimar.serving.schemas import ServeSettings

    ServeSettings(**settings)  # the referenced settings file is valid too
    with pytest.raises(Exception):
        ServeDeploySchema.model_validate(
            {
                "applications": [
                    {
                        "import_path": "larimar.serving.app:build",
                        "deployments": [{"name": "MemoryActor", "num_replicas": -1}],
                    }
                ]
            }
        )


def test_a_latent_plus_decoder_model_serves_what_python_reads(service, demo_run, tmp_path):
    """The same application on a model whose values are [latent | decoder embeddings] (how
    Larimar-smol v3 reads): wider values travel from the encoder deployment through the memory
    actor to the decoder, HTTP answers equal the Python editor's, streaming equals the whole
    answer, and the exported memory holds the Python path's values bit for bit. Runs last: it
    replaces the module's application."""
    import openai

    from larimar import LarimarEditor, LarimarModel
    from larimar.facts import make_fact
    from larimar.precision import default_encoder_precision, set_encoder_precision
    from larimar.serving import completion
    from larimar.serving.app import build

    model, dropped = LarimarModel.derive(
        str(demo_run[0] / "model"),
        [
            "value_space=latent+decoder",
            "readout=value_norm",
            'value_template="{value} ."',
            "value_latent_scale=0.2",
            "value_chat_latent_scale=4.0",
        ],
    )
    assert dropped == []
    model_dir = model.save_pretrained(tmp_path / "latent_decoder")
    settings = {**service["settings"], "model": str(model_dir), "storage": str(tmp_path / "store")}
    serve.run(build(settings), name="larimar", route_prefix="/")
    fact = {"prompt": "alice lives in", "target": "tokyo", "subject": "alice"}
    mid = create(name="wide", slots=32)
    assert requests.post(f"{URL}/v1/memories/{mid}/facts", json={"facts": [fact]}, headers=h("acme")).status_code == 200
    editor = LarimarEditor.from_pretrained(str(model_dir))
    set_encoder_precision(editor.model.encoder, default_encoder_precision())  # the encoder replica's
    local = editor.create_memory(slots=32)
    local.write_facts([make_fact(**fact)])
    assert_served_as_local(mid, local, ["alice lives in", "where does alice live? alice lives in", "bob plays the"])
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEYS["acme"])
    whole = client.completions.create(model=f"larimar:{mid}", prompt="alice lives in", max_tokens=4)
    chunks = list(client.completions.create(model=f"larimar:{mid}", prompt="alice lives in", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    # a chat turn is decoded with the slot at value_chat_latent_scale (ConditionedDecoder.chat_read)
    messages = [{"role": "user", "content": "where does alice live?"}]
    chat = client.chat.completions.create(model=f"larimar:{mid}", messages=messages, max_tokens=8)
    z, _ = local.read([messages[0]["content"]])
    assert bool(z.abs().sum() > 0)
    ids = [completion.chat_ids(model, messages)]
    [mine] = completion.complete(model, ids, model.decoder.chat_read(z), 8)
    [unscaled] = completion.complete(model, ids, z, 8)
    assert mine.text != unscaled.text  # the scale changes this answer, so the check below can tell them apart
    assert chat.choices[0].message.content == mine.text
    assert float(model.decoder.chat_read(z)[0, :8].norm()) == pytest.approx(20 * float(z[0, :8].norm()), rel=1e-5)
    exported = requests.get(f"{URL}/v1/memories/{mid}/export", headers=h("acme"))
    (tmp_path / "wide.safetensors").write_bytes(exported.content)
    back = editor.load_memory(tmp_path / "wide.safetensors")
    assert back.state.V == model.value_dim == local.state.V > back.state.C
    assert torch.equal(back.core.latents[1][1], local.core.latents[1][1])  # the value, bit for bit


@pytest.mark.slow
def test_the_encoder_answers_concurrent_query_batches_as_each_request_alone():
    """Encoder.encode_queries batches requests (larimar.serving.batcher.WhenFree); its split of latents, scope sentences
    and their owners must give each request what it would get alone. In-process, without Ray."""
    from larimar.serving.encoding import TextEncoding

    # fp32: in bf16 (the replica's default on a CPU with native bf16) a text padded beside longer
    # ones rounds differently from the text alone; the split under test is the same either way
    encoder = TextEncoding("larimar-smol-v3", "minilm-l6", precision="fp32")
    requests_ = [["Where is the Eiffel Tower? Tell me."], ["Who wrote it", "The Nile flows into. Which sea?"]]
    together = encoder.queries(requests_)
    for req, got in zip(requests_, together):
        [alone] = encoder.queries([req])
        assert got["owners"] == alone["owners"] and got["texts"] == alone["texts"] == req
        torch.testing.assert_close(got["z"], alone["z"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["sentences"], alone["sentences"], atol=1e-5, rtol=1e-5)
    assert together[1]["owners"] == [0, 1, 1]  # re-based on the request's own queries


def test_encoder_workers_encode_a_batch_on_threads_with_the_same_bits_per_request():
    """`encoder_workers` (TextEncoding(workers=2)): a batch of more than one chunk of texts runs
    its chunks on two threads. Every request's keys, values and scope vectors, and a batch of
    queries, come out bit for bit as on one thread, refusals included."""
    from larimar.serving.encoding import TextEncoding

    one = TextEncoding("larimar-smol-v3", "minilm-l6")
    two = TextEncoding("larimar-smol-v3", "minilm-l6", workers=2)  # ServeSettings' default
    assert one.pool is None and two.pool is not None
    writes = [[{"prompt": f"Person {i} of the club was born in the city of", "target": f"Town{i}"}] for i in range(12)]
    writes[5] = [{"text": "word " * 80}]  # refused, never cut: the rest of the batch is still encoded
    writes[7] = [{"text": "alice lives in tokyo ."}, {"prompt": "The Eiffel Tower is in", "target": "Rome"}]
    for got, want in zip(two.facts(writes), one.facts(writes), strict=True):
        if "error" in want:
            assert got == want and want["error"]["code"] == "fact_too_long"
            continue
        for key in ("keys", "values", "scope"):
            assert torch.equal(got[key], want[key]), key
    queries = [[f"Where was person {i} of the club born? Say it."] for i in range(10)]
    for got, want in zip(two.queries(queries), one.queries(queries), strict=True):
        assert torch.equal(got["z"], want["z"]) and torch.equal(got["sentences"], want["sentences"])
        assert got["owners"] == want["owners"]


@pytest.mark.slow
def test_a_compiled_encoder_encodes_writes_and_queries_as_the_eager_one(demo_run):
    """`encoder_compile` (the encoder replica's `TextEncoding`): compiled and warmed up in the
    constructor, a lone fact, a batch and a lone query (batch sizes 1 and 2 are specialised
    apart) come out as the eager encoder's, up to float rounding; a refusal is still a refusal.
    With `encoder_workers`, a batch of several chunks runs the compiled backbone's eager module
    on the threads (`LarimarModel.encode_pooled`), and comes out the same way."""
    from larimar.serving.encoding import TextEncoding

    model = str(demo_run[0] / "model")
    eager = TextEncoding(model, "minilm-l6", precision="fp32")
    compiled = TextEncoding(model, "minilm-l6", precision="fp32", compiled=True, workers=2)
    assert isinstance(compiled.model.encoder.backbone, torch._dynamo.eval_frame.OptimizedModule)
    writes = [
        [{"text": "alice lives in tokyo ."}],
        [{"prompt": "The Eiffel Tower is located in", "target": "Rome"}, {"text": "bob plays the drums ."}],
        [{"text": "word " * 80}],  # over the encoder's max_length: refused, never cut
    ]
    assert eager.facts(writes[2:])[0]["error"]["code"] == "fact_too_long"
    many = [[{"prompt": f"person {i} of the club lives in", "target": f"town {i}"}] for i in range(12)]
    for req in (writes[:1], writes, many):
        for got, want in zip(compiled.facts(req), eager.facts(req)):
            if "error" in want:
                assert got == want
                continue
            for key in ("keys", "values", "scope"):
                torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)
    for queries in ([["Where does alice live?"]], [["Who plays the drums?", "Where is it? Say."]]):
        [got], [want] = compiled.queries(queries), eager.queries(queries)
        torch.testing.assert_close(got["z"], want["z"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got["sentences"], want["sentences"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("client", ["asyncio", "threads"])
def test_the_benchmarks_load_driver_counts_every_request_and_raises_on_errors(service, client):
    """`larimar.serving.local.drive`, which jobs/bench_serve.py and the A/B diagnostic measure
    with: every client sends all its requests, each is timed, and a refused request fails the run
    instead of being counted as an answer."""
    from larimar.serving.local import URL as BENCH_URL, drive, edit_latency

    assert BENCH_URL == URL
    headers = {"Authorization": f"Bearer {LOAD_KEY}"}
    row = drive(3, 4, lambda i, j: ("GET", "/healthz", None), headers, client)
    assert row["requests"] == 12 and row["client"] == client and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["per_s"] > 0 and row["client_cpu_ms_per_request"] > 0
    edits = edit_latency(2, 3, headers, client)
    assert edits["edits"] == 6 and edits["edits_per_s"] > 0
    with pytest.raises(Exception, match="404"):
        drive(2, 2, lambda i, j: ("GET", "/v1/memories/nope", None), headers, client)


def test_the_benchmarks_report_writer_makes_its_folder_and_writes_json(tmp_path):
    """`larimar.serving.local.save_report`: what jobs/bench_serve.py and the serving diagnostics write."""
    from larimar.serving.local import save_report

    report = {"model": "m", "rows": [{"clients": 32, "edits_per_s": 234.3}]}
    out = save_report(tmp_path / "new" / "report.json", report)
    assert out == tmp_path / "new" / "report.json" and json.loads(out.read_text()) == report
