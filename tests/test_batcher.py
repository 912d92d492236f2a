"""The replicas' schedulers (larimar/serving/batcher.py).

`WhenFree` (the encoder's passes, the memory actor's writes): calls that arrive while a batch runs
share the next batch, each caller gets its own result, an error reaches every caller of its batch
and the worker carries on; a coroutine `run` is awaited on the loop; with `depth` 2 a second batch
runs beside the first only when full.
`DecodeLoop` (the decoder), on a tiny random model: jobs submitted while others decode join them
before the next token and answer as they would alone, the row cap holds (first come, first
served), a job cancelled while waiting costs no pass, and a failing pass reaches every job in it
while the loop carries on."""

import asyncio
import threading
import time

import pytest
import torch

from larimar.serving.batcher import DecodeLoop, WhenFree
from larimar.serving.completion import Job, prompt_ids, run_jobs
from tests.test_model import tiny_config

from larimar.model import LarimarModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LarimarModel(tiny_config()).eval()


def submit(loop: DecodeLoop, job: Job) -> threading.Event:
    done = threading.Event()
    job.on_done = lambda outs: (setattr(job, "outs", outs), done.set())
    job.on_error = lambda err: (setattr(job, "err", err), done.set())
    loop.submit(job)
    return done


def jobs(model: LarimarModel) -> list[Job]:
    V = model.value_dim
    torch.manual_seed(1)
    texts = ["the capital of vorland is", "mira teaches", "the comet returns every", "a", "the red fox"]
    return [
        Job([prompt_ids(model, t)], torch.randn(1, V) if i % 2 else torch.zeros(1, V), 6 + i, min_tokens=6 + i)
        for i, t in enumerate(texts)
    ]


def test_jobs_arriving_mid_answer_join_before_the_next_token_and_answer_as_alone(model):
    alone = [[c.to_dict() for c in run_jobs(model, [j])[0]] for j in jobs(model)]
    steps: list[int] = []
    gate = threading.Event()
    loop = DecodeLoop(model, max_rows=3, on_step=lambda n: (steps.append(n), gate.wait(5)))
    first, *rest = jobs(model)
    waits = [submit(loop, first)]
    while not steps:  # the first job is decoding (held at its first step) ...
        threading.Event().wait(0.01)
    waits += [submit(loop, j) for j in rest]  # ... when the others arrive
    gate.set()
    assert all(w.wait(60) for w in waits)
    assert [[c.to_dict() for c in j.outs] for j in [first, *rest]] == alone
    assert steps[0] == 1 and max(steps) == 3  # they joined it, never more than max_rows at once
    assert steps[1] == 3  # the next step already had company


def test_a_job_cancelled_while_waiting_is_answered_without_a_pass(model):
    loop = DecodeLoop(model, max_rows=1)
    gate = threading.Event()
    busy, other = jobs(model)[:2]
    busy.on_text = lambda piece: gate.wait(5)  # holds the loop inside the first job's rows
    w1 = submit(loop, busy)
    other.cancel.set()
    w2 = submit(loop, other)
    gate.set()
    assert w1.wait(60) and w2.wait(60)
    assert [c.completion_tokens for c in other.outs] == [0] and busy.outs[0].completion_tokens == 6


def test_a_failing_pass_reaches_every_job_in_it_and_the_loop_goes_on(model):
    loop = DecodeLoop(model, max_rows=8, wait_s=0.05)  # the wait lets both jobs share one pass
    good, after = jobs(model)[1:3]
    want = [c.to_dict() for c in run_jobs(model, [jobs(model)[2]])[0]]
    bad = Job([prompt_ids(model, "x")], torch.randn(1, model.value_dim + 3), 4)  # a read-out of the wrong width
    assert all(w.wait(60) for w in [submit(loop, bad), submit(loop, good)])
    assert isinstance(bad.err, RuntimeError) and good.err is bad.err
    assert submit(loop, after).wait(60) and not hasattr(after, "err")
    assert [c.to_dict() for c in after.outs] == want
    with pytest.raises(ValueError, match="max_rows"):
        DecodeLoop(model, max_rows=0)


def test_calls_arriving_during_a_batch_share_the_next_one():
    sizes, busy = [], threading.Lock()

    def run(items):
        assert busy.acquire(blocking=False), "two batches ran at once"
        try:
            time.sleep(0.05)  # a pass long enough for the others to arrive
            return [x * 10 for x in items]
        finally:
            busy.release()

    async def main():
        batcher = WhenFree(run, max_batch=4, wait_s=0, on_batch=lambda items: sizes.append(len(items)))

        async def call(x, delay):
            await asyncio.sleep(delay)
            return await batcher(x)

        # one first, then six a few ms apart: Ray's serve.batch made six batches of one of these
        return await asyncio.gather(call(0, 0), *(call(x, 0.005 * x) for x in range(1, 7)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50, 60]
    assert sizes == [1, 4, 2]  # max_batch caps a batch; the rest go into the one after


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs():
    def run(items):
        time.sleep(0.02)
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def main():
        batcher = WhenFree(run, max_batch=8, wait_s=0.01)
        first = await asyncio.gather(batcher("bad"), batcher("good"), return_exceptions=True)
        second = await batcher("again")
        return first, second

    (a, b), second = asyncio.run(main())
    assert isinstance(a, ValueError) and isinstance(b, ValueError) and second == "AGAIN"


def test_a_wrong_number_of_results_is_an_error_not_a_hang():
    async def main():
        return await asyncio.wait_for(WhenFree(lambda items: [], max_batch=2, wait_s=0)("x"), 5)

    with pytest.raises(RuntimeError, match="1 items got 0 results"):
        asyncio.run(main())
    with pytest.raises(ValueError, match="max_batch"):
        WhenFree(lambda items: items, max_batch=0, wait_s=0)


def test_a_coroutine_run_is_awaited_on_the_loop_one_batch_at_a_time():
    """The memory actor's writes: `run` takes an asyncio lock, so it must run on the caller's loop."""
    sizes, lock = [], asyncio.Lock()

    async def run(items):
        assert not lock.locked(), "two batches ran at once"
        async with lock:
            sizes.append(len(items))
            await asyncio.sleep(0.05)
            return [x + 1 for x in items]

    async def main():
        batcher = WhenFree(run, max_batch=64)

        async def call(x, delay):
            await asyncio.sleep(delay)
            return await batcher(x)

        return await asyncio.gather(call(0, 0), *(call(x, 0.002 * x) for x in range(1, 10)))

    assert asyncio.run(main()) == list(range(1, 11))
    assert sizes == [1, 9]  # serve.batch formed a batch per 1 ms wait here, run one after another


class _Batches:
    """A coroutine `run` for WhenFree that logs each batch's items and counts the batches running at once."""

    def __init__(self, pause_s: float):
        self.pause_s, self.log, self.running, self.most = pause_s, [], 0, 0

    async def run(self, items: list) -> list:
        self.running += 1
        self.most = max(self.most, self.running)
        self.log.append(list(items))
        await asyncio.sleep(self.pause_s)
        self.running -= 1
        return [x * 2 for x in items]


def test_depth_two_sends_a_second_batch_only_when_it_is_full():
    """The ingress's encoder stage (`WhenFree(depth=2)`): while one batch runs, a second starts as
    soon as `max_batch` items wait (it would wait at the encoder replica), never a partial one;
    partial batches still start whenever nothing is in flight, and answers stay per item."""
    batches = _Batches(0.05)

    async def main():
        batcher = WhenFree(batches.run, max_batch=3, depth=2)

        async def call(x, delay):
            await asyncio.sleep(delay)
            return await batcher(x)

        # 0 alone; 1-3 arrive while it runs and fill a batch: it starts at once (two in flight);
        # 4 and 5 arrive while two run: a partial batch waits until one of them is done
        delays = [0, 0.005, 0.01, 0.015, 0.02, 0.025]
        return await asyncio.gather(*(call(x, d) for x, d in enumerate(delays)))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]
    assert batches.log == [[0], [1, 2, 3], [4, 5]]
    assert batches.most == 2  # the full batch ran beside the first; [4, 5] waited for a free place
    with pytest.raises(ValueError, match="depth"):
        WhenFree(batches.run, max_batch=3, depth=0)


def test_depth_one_runs_one_batch_at_a_time_even_when_full():
    batches = _Batches(0.03)

    async def main():
        batcher = WhenFree(batches.run, max_batch=2)
        return await asyncio.gather(*(batcher(x) for x in range(5)))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert batches.most == 1 and batches.log == [[0, 1], [2, 3], [4]]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death, on purpose
def test_a_dead_decoding_thread_is_reported_for_the_health_check(model):
    def die(rows: int) -> None:
        raise SystemExit  # not an Exception: it ends the thread, as an interpreter shutdown would

    loop = DecodeLoop(model, max_rows=2, on_step=die)
    assert loop.alive
    loop.submit(jobs(model)[0])
    loop.thread.join(30)
    assert not loop.alive
