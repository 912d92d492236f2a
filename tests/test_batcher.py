"""The decoder deployment's scheduler (larimar/serving/batcher.py): calls that arrive while a
batch runs share the next batch, each caller gets its own result, an error reaches every caller
of its batch and the worker carries on."""

import asyncio
import threading
import time

import pytest

from larimar.serving.batcher import WhenFree


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
