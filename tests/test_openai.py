"""The OpenAI-compatible routes driven by the official `openai` client, over real HTTP against a
live Serve application on a real local Ray (larimar/serving/app.py, larimar/serving/openai_compat.py).

The served model is the demo's (trained by the project's own code on six facts such as "bob plays
the drums"), so "with a memory" checks that the written fact, not the plain decoder, answers.
"""

import concurrent.futures as cf
import json
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")
from ray import serve  # noqa: E402

from larimar.serving.auth import hash_key  # noqa: E402

pytestmark = pytest.mark.slow
KEY, OTHER = "key-openai-1", "key-openai-2"
URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def app(demo_run, tmp_path_factory):
    from larimar.serving.app import build

    settings = {
        "model": str(demo_run[0] / "model"),
        "storage": str(tmp_path_factory.mktemp("openai-store")),
        "api_keys": [{"tenant": "acme", "sha256": hash_key(KEY)}, {"tenant": "globex", "sha256": hash_key(OTHER)}],
        "limits": {"max_tokens": 32, "max_prompt_tokens": 48},
    }
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    serve.run(build(settings), name="larimar", route_prefix="/")
    h = {"Authorization": f"Bearer {KEY}"}
    mid = requests.post(f"{URL}/v1/memories", json={"name": "band"}, headers=h).json()["id"]
    r = requests.post(
        f"{URL}/v1/memories/{mid}/facts", headers=h, json={"facts": [{"prompt": "bob plays the", "target": "drums"}]}
    )
    assert r.status_code == 200, r.text
    yield {"memory": mid, "client": openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0, timeout=120)}
    serve.shutdown()
    ray.shutdown()


def test_models_lists_the_decoder_and_each_memory_as_a_model(app):
    client, mid = app["client"], app["memory"]
    ids = [m.id for m in client.models.list()]
    assert ids == ["larimar", f"larimar:{mid}"]
    assert client.models.retrieve(f"larimar:{mid}").id == f"larimar:{mid}"
    other = openai.OpenAI(base_url=f"{URL}/v1", api_key=OTHER, max_retries=0)
    assert [m.id for m in other.models.list()] == ["larimar"]  # another tenant's memory is not listed
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(f"larimar:{mid}")


def test_completion_with_a_memory_answers_the_fact_with_full_usage(app):
    client, mid = app["client"], app["memory"]
    out = client.completions.create(model=f"larimar:{mid}", prompt="bob plays the", max_tokens=3)
    assert out.choices[0].text.strip().startswith("drums")
    assert out.choices[0].finish_reason in ("stop", "length")
    u = out.usage
    assert (
        u.prompt_tokens > 0 and 0 < u.completion_tokens <= 3 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    )
    same = client.completions.create(
        model="larimar", prompt="bob plays the", max_tokens=3, extra_body={"memory_id": mid}
    )
    assert same.choices[0].text == out.choices[0].text
    plain = client.completions.create(model="larimar", prompt="bob plays the", max_tokens=3)
    assert not plain.model_extra["larimar"]["used_memory"][0] and out.model_extra["larimar"]["used_memory"][0]


def test_completion_stream_equals_the_whole_answer_and_ends_with_usage(app):
    client, mid = app["client"], app["memory"]
    whole = client.completions.create(model=f"larimar:{mid}", prompt="bob plays the", max_tokens=6)
    chunks = list(
        client.completions.create(
            model=f"larimar:{mid}",
            prompt="bob plays the",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and text.strip().startswith("drums")
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 2  # token by token, not one blob
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_with_and_without_memory_streaming_and_not(app):
    client, mid = app["client"], app["memory"]
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "bob plays the"},
    ]
    whole = client.chat.completions.create(model=f"larimar:{mid}", messages=messages, max_tokens=5)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.model_extra["larimar"]["used_memory"]  # read with the last user turn
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    plain = client.chat.completions.create(model="larimar", messages=messages, max_tokens=5)
    assert not plain.model_extra["larimar"]["used_memory"]
    # the whole conversation is the prompt: a longer history is more prompt tokens
    short = client.chat.completions.create(model="larimar", messages=messages[-1:], max_tokens=1)
    assert whole.usage.prompt_tokens > short.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model=f"larimar:{mid}", messages=messages, max_tokens=5, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_concurrent_requests_share_decoder_passes_and_each_gets_its_own_answer(app):
    """The decoder deployment batches concurrent requests (`serve.batch` + `completion.run_jobs`):
    each answer, streamed or whole, read with the memory or not, with its own max_tokens, is the
    one the request gets alone."""
    client, mid = app["client"], app["memory"]
    asks = [
        {"model": f"larimar:{mid}", "prompt": "bob plays the", "max_tokens": 6},
        {"model": "larimar", "prompt": "bob plays the", "max_tokens": 4},
        {"model": f"larimar:{mid}", "prompt": "alice lives in", "max_tokens": 5},
        {"model": "larimar", "prompt": "one two three", "max_tokens": 8, "stop": [" four"]},
    ]

    def ask(kw: dict, stream: bool) -> tuple[str, int, str]:
        if not stream:
            out = client.completions.create(**kw)
            return out.choices[0].text, out.usage.completion_tokens, out.choices[0].finish_reason
        chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return text, chunks[-1].usage.completion_tokens, reason[0]

    alone = [ask(kw, False) for kw in asks]
    both = [(kw, stream) for kw in asks for stream in (False, True)]
    with cf.ThreadPoolExecutor(len(both)) as pool:
        together = list(pool.map(lambda a: ask(*a), both))
    assert together == [alone[i // 2] for i in range(len(both))]
    assert alone[0][0].strip().startswith("drums")
    # vLLM's min_tokens: no end of sequence before it (benchmarks fix answer lengths with it)
    fixed = client.completions.create(
        model="larimar", prompt="bob plays the", max_tokens=7, extra_body={"min_tokens": 7}
    )
    assert fixed.usage.completion_tokens == 7 and fixed.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="larimar", prompt="bob", max_tokens=2, extra_body={"min_tokens": 3})
    assert err.value.body["param"] == "min_tokens"


def test_raw_sse_frames(app):
    r = requests.post(
        f"{URL}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        stream=True,
        json={
            "messages": [{"role": "user", "content": "bob plays the"}],
            "max_tokens": 4,
            "stream": True,
            "model": f"larimar:{app['memory']}",
        },
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(f.startswith("data: ") for f in frames) and frames[-1] == "data: [DONE]"
    bodies = [json.loads(f[6:]) for f in frames[:-1]]
    assert {b["object"] for b in bodies} == {"chat.completion.chunk"} and len({b["id"] for b in bodies}) == 1


def test_stop_sequences_cut_the_answer_in_both_modes(app):
    client, mid = app["client"], app["memory"]
    whole = client.completions.create(model=f"larimar:{mid}", prompt="bob plays the", max_tokens=6).choices[0].text
    word = whole.split()[0]
    cut = client.completions.create(model=f"larimar:{mid}", prompt="bob plays the", max_tokens=6, stop=[word])
    assert cut.choices[0].text == whole[: whole.index(word)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=f"larimar:{mid}", prompt="bob plays the", max_tokens=6, stop=[word], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_errors_have_openais_shape_and_status(app):
    client = app["client"]
    cases = [
        (lambda: client.completions.create(model="gpt-4", prompt="hi"), openai.NotFoundError, "model"),
        (lambda: client.completions.create(model="larimar:mem_nope", prompt="hi"), openai.NotFoundError, None),
        (
            lambda: client.completions.create(model="larimar", prompt="hi", logprobs=2),
            openai.BadRequestError,
            "logprobs",
        ),
        (lambda: client.completions.create(model="larimar", prompt="hi", n=2), openai.BadRequestError, "n"),
        (lambda: client.completions.create(model="larimar", prompt="hi", echo=True), openai.BadRequestError, "echo"),
        (
            lambda: client.chat.completions.create(
                model="larimar",
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function", "function": {"name": "f"}}],
            ),
            openai.BadRequestError,
            "tools",
        ),
        (
            lambda: client.completions.create(model="larimar", prompt="hi", max_tokens=1000),
            openai.APIStatusError,
            "max_tokens",
        ),
        (lambda: client.completions.create(model="larimar", prompt="word " * 100), openai.APIStatusError, "prompt"),
        (
            lambda: client.completions.create(model="larimar", prompt="hi", temperature=7),
            openai.UnprocessableEntityError,
            "temperature",
        ),
        (
            lambda: client.chat.completions.create(model="larimar", messages=[{"role": "system", "content": "x"}]),
            openai.UnprocessableEntityError,
            "messages",
        ),
        (
            lambda: openai.OpenAI(base_url=f"{URL}/v1", api_key="wrong", max_retries=0).models.list(),
            openai.AuthenticationError,
            None,
        ),
    ]
    for call, kind, param in cases:
        with pytest.raises(kind) as info:
            call()
        err = info.value.body
        assert set(err) >= {"message", "type", "param", "code"} and err["message"], err
        if param is not None:
            assert err["param"] == param, err
    assert info.value.status_code == 401
    big = requests.post(
        f"{URL}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "word " * 100, "model": "larimar"},
    )
    assert big.status_code == 413 and "48 tokens" in big.json()["error"]["message"]
    bad = requests.post(
        f"{URL}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "secret " * 50, "temperature": "hot"},
    )
    assert bad.status_code == 422 and "secret" not in bad.text  # names the field, never echoes the input
    assert bad.json()["error"]["param"] == "temperature"
    streamed_too_long = requests.post(
        f"{URL}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "word " * 100, "stream": True},
    )
    assert streamed_too_long.status_code == 413  # refused before the stream starts
