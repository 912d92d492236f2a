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


@pytest.mark.slow
def test_a_job_joining_a_running_batch_mid_answer_gets_its_answer_alone(model):
    """Continuous batching (`Batch`): a job admitted after the running rows have made some tokens,
    and rows that end and leave while others go on, answer as each job does alone, which is also
    what transformers' `generate` answers."""
    from larimar.serving.completion import Batch, Job, run_jobs

    V = model.cfg.memory.latent_dim
    torch.manual_seed(0)
    cond = torch.randn(1, V) * 0.5

    def jobs():
        return [
            Job([prompt_ids(model, COUNT)], torch.zeros(1, V), 10),
            Job([prompt_ids(model, "The capital of France is")], cond, 6),
            Job(
                [prompt_ids(model, "Roses are red,"), prompt_ids(model, "A B C")],
                torch.cat([torch.zeros(1, V), cond]),
                3,
            ),
        ]

    alone = [run_jobs(model, [j])[0] for j in jobs()]
    first, *later = jobs()
    batch = Batch(model)
    batch.admit([first])
    for _ in range(4):
        batch.step()
    batch.admit(later)
    assert len(batch) == 4
    while len(batch):
        batch.step()
    assert [[c.to_dict() for c in [r.completion() for r in j.rows]] for j in [first, *later]] == [
        [c.to_dict() for c in outs] for outs in alone
    ]
    for ids, z, n, out in [
        (prompt_ids(model, COUNT), torch.zeros(1, V), 10, alone[0][0]),
        (prompt_ids(model, "The capital of France is"), cond, 6, alone[1][0]),
    ]:
        x = torch.tensor([ids])
        gen = model.decoder.generate(
            x, torch.ones_like(x), z, max_new_tokens=n, do_sample=False, eos_token_id=model.eos_id
        )
        assert model.decoder_tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True) == out.text


@pytest.mark.slow
def test_sampling_keeps_its_settings_per_row(model):
    """top_p keeps at least the most likely token, so a tiny top_p samples the greedy answer; a
    seeded sample is reproducible."""
    V = model.cfg.memory.latent_dim
    ids = [prompt_ids(model, "The capital of France is")]
    z = torch.zeros(1, V)
    [greedy] = complete(model, ids, z, 8)
    [narrow] = complete(model, ids, z, 8, temperature=0.9, top_p=1e-9)
    assert narrow.text == greedy.text
    torch.manual_seed(3)
    [a] = complete(model, ids, z, 8, temperature=1.5)
    torch.manual_seed(3)
    [b] = complete(model, ids, z, 8, temperature=1.5)
    assert a.text == b.text
