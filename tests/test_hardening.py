"""The service under hostile and careless input, on a live Serve application over real HTTP
(larimar/serving/app.py, larimar/serving/guard.py, store.py): a schemathesis run of every route from the
OpenAPI document, and one reproduction per finding of the hardening issue."""

import json
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from larimar.serving.auth import hash_key  # noqa: E402
from tests.conftest import memory_actor_replica  # noqa: E402

pytestmark = pytest.mark.slow
URL = "http://127.0.0.1:8000"
KEYS = {"acme": "key-hard-1", "fuzz": "key-hard-2", "slow": "key-hard-3", "small": "key-hard-4"}


def h(tenant="acme") -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture(scope="module")
def app(demo_run, tmp_path_factory):
    from larimar.serving.app import build

    storage = tmp_path_factory.mktemp("hard-store")
    keys = [{"tenant": t, "sha256": hash_key(k)} for t, k in KEYS.items()]
    keys[2].update(requests_per_second=1.0, burst=3)
    settings = {
        "model": str(demo_run[0] / "model"),
        "storage": str(storage),
        "snapshot_every": 4,
        "api_keys": keys,
        "max_bytes_per_tenant": 2 * 2**20,
        "limits": {
            "max_tokens": 16,
            "max_body_bytes": 64 * 1024,
            "max_prompt_tokens": 256,
            "deadline_s": 30,
            "requests_per_second": 500,
            "burst": 1000,
        },
    }
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    serve.run(build(settings), name="larimar", route_prefix="/")
    yield {"storage": storage}
    serve.shutdown()
    ray.shutdown()


def create(tenant="acme", **body) -> str:
    r = requests.post(f"{URL}/v1/memories", json={"name": "m", **body}, headers=h(tenant), timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def raw_post(path: str, body: str, headers: dict | None = None) -> requests.Response:
    return requests.post(
        f"{URL}{path}",
        data=body.encode("utf-8", "surrogatepass"),
        timeout=60,
        headers={"Content-Type": "application/json", **(headers if headers is not None else h())},
    )


def test_no_route_answers_5xx_to_schema_fuzzing(app):
    """schemathesis generates requests for every operation of the live OpenAPI document, with a
    valid key and with none; bounded so it fits CI."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{URL}/openapi.json")
    failures = []
    for headers in (h("fuzz"), {}):
        for result in schema.get_all_operations():
            op = result.ok()

            @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def run(case):
                # requests directly: schemathesis' own transport trips over this urllib3's pool internals
                kwargs = case.as_transport_kwargs(base_url=URL, headers=dict(headers) or None)
                response = requests.request(**{**kwargs, "timeout": 60})
                if response.status_code >= 500:
                    failures.append((op.label, response.status_code, response.text[:300]))

            run()
    assert not failures, failures[:5]


def test_bad_numbers_surrogates_and_empty_lists_are_422_naming_the_field(app):
    mid = create()
    cases = [
        ("/v1/completions", '{"prompt": "hi", "temperature": NaN}', "temperature"),
        ("/v1/completions", '{"prompt": "hi", "temperature": Infinity}', "temperature"),
        ("/v1/completions", '{"prompt": "hi", "temperature": -Infinity}', "temperature"),
        ("/v1/completions", '{"prompt": "hi", "temperature": 1e400}', "temperature"),
        (f"/v1/memories/{mid}/facts", '{"facts": NaN}', "facts"),
        ("/v1/memories", '{"name": "x\\ud800y"}', "name"),
        (f"/v1/memories/{mid}/facts", '{"facts": [{"text": "x\\ud800y"}]}', "facts[0].text"),
        (f"/v1/memories/{mid}/generate", '{"prompt": "x\\udfffy"}', "prompt"),
        ("/v1/completions", '{"prompt": []}', "prompt"),
        ("/v1/memories", '{"slots": true}', "slots"),
        ("/v1/memories", '{"slots": "8"}', "slots"),
    ]
    for path, body, param in cases:
        r = raw_post(path, body)
        assert r.status_code == 422, (path, body, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"], (body, err)
    tiny = raw_post(f"/v1/memories/{mid}/generate", '{"prompt": "hi", "temperature": 1e-300, "max_tokens": 2}')
    assert tiny.status_code == 200, tiny.text  # greedy, not NaN probabilities
    big = raw_post("/v1/completions", json.dumps({"prompt": "secret " * 500, "temperature": "hot"}))
    assert big.status_code in (413, 422) and "secret" not in big.text  # never echoes the input


def test_the_key_is_checked_before_the_body_is_read_and_bodies_are_capped(app):
    huge = b"x" * (20 * 2**20)
    t = time.perf_counter()
    r = requests.post(f"{URL}/v1/memories", data=huge, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = requests.post(f"{URL}/v1/memories", data=huge, headers={**h(), "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(64):
            yield b"y" * 4096

    r = requests.post(
        f"{URL}/v1/memories", data=chunks(), headers={**h(), "Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert time.perf_counter() - t < 30


def test_an_oversized_score_request_is_refused_in_seconds_and_the_decoder_stays_small(app):
    import psutil

    mid = create()
    t = time.perf_counter()
    r = requests.post(
        f"{URL}/v1/memories/{mid}/score",
        headers=h(),
        timeout=60,
        json={"prompt": "東" * 400, "candidates": ["東" * 400] * 16},
    )  # within the body limit
    assert r.status_code == 413 and "tokens" in r.json()["error"]["message"]
    fits = requests.post(
        f"{URL}/v1/memories/{mid}/score",
        headers=h(),
        timeout=60,
        json={"prompt": "東" * 200, "candidates": ["東 " * 20] * 16},
    )
    assert fits.status_code == 200, fits.text
    assert time.perf_counter() - t < 60
    decoders = [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::ServeReplica:larimar:Decoder")
    ]  # Ray's process title of the replica
    assert decoders and all(p.memory_info().rss < 3 * 2**30 for p in decoders)


def test_long_facts_and_prompts_are_refused_in_tokens_not_cut(app):
    mid = create()
    long_fact = requests.post(
        f"{URL}/v1/memories/{mid}/facts", headers=h(), timeout=30, json={"facts": [{"text": "word " * 40}]}
    )
    assert long_fact.status_code == 413 and "encoder tokens" in long_fact.json()["error"]["message"]
    assert long_fact.json()["error"]["param"] == "facts[0].text"
    long_prompt = requests.post(f"{URL}/v1/completions", headers=h(), timeout=30, json={"prompt": "word " * 300})
    assert long_prompt.status_code == 413 and "256 tokens" in long_prompt.json()["error"]["message"]


def test_a_retried_write_with_an_idempotency_key_applies_once(app):
    mid = create()
    body = {"facts": [{"text": "carol teaches math ."}]}
    first = requests.post(
        f"{URL}/v1/memories/{mid}/facts", json=body, timeout=30, headers={**h(), "Idempotency-Key": "retry-1"}
    )
    again = requests.post(
        f"{URL}/v1/memories/{mid}/facts", json=body, timeout=30, headers={**h(), "Idempotency-Key": "retry-1"}
    )
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert requests.get(f"{URL}/v1/memories/{mid}", headers=h(), timeout=30).json()["facts"] == 1
    other = requests.post(
        f"{URL}/v1/memories/{mid}/facts",
        json={"facts": [{"text": "dan ."}]},
        timeout=30,
        headers={**h(), "Idempotency-Key": "retry-1"},
    )
    assert other.status_code == 409
    made = [
        requests.post(
            f"{URL}/v1/memories", json={"name": "once"}, timeout=30, headers={**h(), "Idempotency-Key": "create-1"}
        )
        for _ in range(2)
    ]
    assert made[0].status_code == made[1].status_code == 201 and made[0].json()["id"] == made[1].json()["id"]


def test_forgotten_text_leaves_responses_and_storage(app):
    mid = create()
    r = requests.post(
        f"{URL}/v1/memories/{mid}/facts",
        headers=h(),
        timeout=30,
        json={"facts": [{"text": "Patient John Roe has HIV ."}]},
    )
    fid = r.json()["ids"][0]
    assert requests.delete(f"{URL}/v1/memories/{mid}/facts/{fid}", headers=h(), timeout=30).status_code == 200
    detail = requests.get(f"{URL}/v1/memories/{mid}", headers=h(), timeout=30).text
    assert "John Roe" not in detail
    for i in range(4):  # snapshot_every=4: at least one snapshot follows the forget
        requests.post(f"{URL}/v1/memories/{mid}/facts", headers=h(), timeout=30, json={"facts": [{"text": f"f{i} ."}]})
    stored = b"".join(p.read_bytes() for p in Path(app["storage"]).rglob("*") if p.is_file())
    assert b"John Roe" not in stored


def test_quotas_count_bytes_and_rate_limits_answer_429_with_retry_after(app):
    r = requests.post(f"{URL}/v1/memories", json={"slots": 1024}, headers=h("small"), timeout=30)  # ~8.4 MB > 2 MiB
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded" and "Retry-After" in r.headers
    statuses = [requests.get(f"{URL}/v1/memories", headers=h("slow"), timeout=30) for _ in range(5)]
    assert [s.status_code for s in statuses[:3]] == [200, 200, 200]
    limited = [s for s in statuses if s.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].json()["error"]["type"] == "rate_limit_error"


def test_strict_ids_and_the_bearer_scheme(app):
    mid = create()
    requests.post(f"{URL}/v1/memories/{mid}/facts", headers=h(), json={"facts": [{"text": "a b c ."}]}, timeout=30)
    assert requests.delete(f"{URL}/v1/memories/{mid}/facts/1.0", headers=h(), timeout=30).status_code == 422
    assert requests.get(f"{URL}/v1/memories", headers={"Authorization": KEYS["acme"]}, timeout=30).status_code == 401
    assert (
        requests.get(f"{URL}/v1/memories", headers={"Authorization": f"bearer {KEYS['acme']}"}, timeout=30).status_code
        == 200
    )


def test_one_damaged_log_entry_after_a_crash_takes_down_only_its_memory(app):
    bad, good = create(), create()
    for mid in (bad, good):
        requests.post(f"{URL}/v1/memories/{mid}/facts", headers=h(), json={"facts": [{"text": "x y z ."}]}, timeout=30)
    storage = Path(app["storage"])
    for i in range(8):  # until an entry of `bad` is in the log and no snapshot (snapshot_every=4) covers it
        requests.post(
            f"{URL}/v1/memories/{bad}/facts", headers=h(), json={"facts": [{"text": f"u v {i} ."}]}, timeout=30
        )
        time.sleep(1.0)  # a due snapshot is written in the background: let it land first
        index = storage / "snapshot" / "index.json"
        covered = json.loads(index.read_text())["seq"] if index.exists() else 0
        logs = [p for p in sorted((storage / "log").glob(f"*-{bad}.json")) if int(p.name.split("-")[0]) > covered]
        if logs:
            break
    assert logs, "an entry of the memory is in the log, not yet in a snapshot"
    logs[-1].write_bytes(logs[-1].read_bytes()[:30])  # a truncated newest entry
    ray.kill(memory_actor_replica(), no_restart=False)
    for _ in range(120):
        try:
            r = requests.get(f"{URL}/v1/memories/{good}", headers=h(), timeout=10)
            if r.status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    assert r.status_code == 200  # every other memory is served
    down = requests.get(f"{URL}/v1/memories/{bad}", headers=h(), timeout=10)
    assert down.status_code == 503 and logs[-1].name in down.json()["error"]["message"]
    ready = requests.get(f"{URL}/readyz", timeout=60).json()
    assert ready["status"] == "degraded" and any(bad in d for d in ready["damaged"])
