"""larimar.serving.completion on the shipped SmolLM2 model: chat template, no silent truncation,
stop sequences, finish reasons, streaming equal to the whole answer, and an early close."""

import pytest
import torch

from larimar.serving.completion import StopScanner, chat_ids, check_length, complete, prompt_ids, stream
from larimar.serving.errors import ApiError

COUNT = "One, two, three, four, five,"


def test_stop_scanner_never_shows_part_of_a_stop_sequence():
    s = StopScanner(["END", "\n\n"])
    assert s.feed("abc E") == ("abc ", False)  # "E" could start "END": held back
    assert s.feed("N") == ("", False)
    assert s.feed("Dxyz") == ("", True)
    s = StopScanner(["END"])
    assert s.feed("abc E") == ("abc ", False) and s.feed("nd") == ("End", False) and s.flush() == ""
    assert StopScanner(None).feed("anything") == ("anything", False)


@pytest.fixture(scope="module")
def model():
    from larimar.model import LarimarModel

    m = LarimarModel.from_pretrained("larimar-smol-v2")
    m.eval()
    return m


@pytest.mark.slow
def test_chat_renders_the_whole_conversation_with_the_template(model):
    msgs = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    text = model.decoder_tokenizer.decode(chat_ids(model, msgs))
    assert text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")
    assert "Capital of France?" in text and "Paris." in text and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 5  # no second BOS in front of the template's own


@pytest.mark.slow
def test_long_prompts_keep_their_end_and_over_limit_is_refused(model):
    z = torch.zeros(1, model.cfg.memory.latent_dim)
    long = prompt_ids(model, "The weather was mild and the day went by slowly. " * 40 + COUNT)
    assert len(long) > 400  # the old path kept the first 62 tokens and never saw the count
    [short_out] = complete(model, [prompt_ids(model, COUNT)], z, 4)
    [long_out] = complete(model, [long], z, 4)
    assert short_out.text.startswith(" six") and long_out.text.startswith(" six")
    with pytest.raises(ApiError) as err:
        check_length(long, 256, "prompt")
    assert err.value.status == 413 and "256 tokens" in err.value.message


@pytest.mark.slow
def test_stream_matches_complete_and_stops_are_cut(model):
    z = torch.zeros(1, model.cfg.memory.latent_dim)
    ids = prompt_ids(model, COUNT)
    [whole] = complete(model, [ids], z, 8)
    *pieces, final = list(stream(model, ids, z, 8))
    assert "".join(pieces) == whole.text == final.text and len(pieces) > 2
    assert (final.completion_tokens, final.finish_reason) == (whole.completion_tokens, "length") == (8, "length")
    [cut] = complete(model, [ids], z, 8, stop=[" seven"])
    assert cut.text == " six," and cut.finish_reason == "stop"
    *pieces, final = list(stream(model, ids, z, 8, stop=[" seven"]))
    assert "".join(pieces) == " six," and final.finish_reason == "stop"
    # a greedy answer that ends on its own says "stop" and counts its end-of-sequence token
    [chat] = complete(model, [chat_ids(model, [{"role": "user", "content": "What is the capital of France?"}])], z, 32)
    assert chat.finish_reason == "stop" and "Paris" in chat.text and chat.completion_tokens < 32


@pytest.mark.slow
def test_closing_a_stream_early_stops_generation(model):
    import threading

    z = torch.zeros(1, model.cfg.memory.latent_dim)
    gen = stream(model, prompt_ids(model, COUNT), z, 200)
    next(gen)
    gen.close()
    for _ in range(100):  # the worker thread sees the cancel at its next token
        if not [t for t in threading.enumerate() if t.name == "larimar-stream"]:
            break
        threading.Event().wait(0.05)
    assert not [t for t in threading.enumerate() if t.name == "larimar-stream"]


@pytest.mark.slow
def test_one_batched_pass_answers_each_job_as_it_would_be_answered_alone(model):
    """What the decoder deployment does with concurrent requests (`run_jobs`): one left-padded
    generate over all their prompts, each row with its own read-out (conditioned or z = 0), its own
    max_tokens and stop sequences, streamed or not."""
    from larimar.serving.completion import Job, run_jobs

    V = model.cfg.memory.latent_dim
    torch.manual_seed(0)
    cond = torch.randn(1, V) * 0.5
    streamed: list[str] = []

    def jobs():
        streamed.clear()
        return [
            Job([prompt_ids(model, COUNT)], torch.zeros(1, V), 8),
            Job([prompt_ids(model, "The capital of France is")], cond, 12, stop=["."]),
            Job([prompt_ids(model, "Roses are red,")], torch.zeros(1, V), 5, on_text=streamed.append),
            Job(
                [prompt_ids(model, "A B C"), prompt_ids(model, "Monday, Tuesday,")],
                torch.cat([cond, torch.zeros(1, V)]),
                6,
            ),
        ]

    alone = [run_jobs(model, [j])[0] for j in jobs()]
    alone_stream = list(streamed)
    together = run_jobs(model, jobs())
    assert [[c.to_dict() for c in outs] for outs in together] == [[c.to_dict() for c in outs] for outs in alone]
    assert "".join(streamed) == "".join(alone_stream) == together[2][0].text and len(streamed) >= 2
    assert together[0][0].completion_tokens == 8 and together[2][0].completion_tokens == 5
    assert together[1][0].finish_reason == "stop" and "." not in together[1][0].text
