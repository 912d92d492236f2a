"""Batches of concurrent calls, formed when the worker is free: the decoder deployment's scheduler.

Why not `serve.batch`: Ray's batch queue forms a batch as soon as its first request has waited
`batch_wait_timeout_s`, then queues that batch behind the one running and starts forming the next
(`_BatchQueue._process_batches`). Generation requests reach the decoder a few to tens of
milliseconds apart (each has been through the encoder and the memory actor first), so on 2 cores
every batch held one request and 8 clients were served one after another (measured with
`jobs/bench_serve.py`: batches of 1, 1, 1, 1, 1, 1, 1, 2). Here a batch is formed when the pass
before it is done, from everything that arrived meanwhile: requests that come in during a pass
share the next one. (Continuous batching, joining a pass between two tokens, needs a decoding
loop of our own instead of transformers' `generate`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class WhenFree:
    """``await batcher(item)``: `run(items)` (blocking, in a worker thread) on up to `max_batch`
    items at a time, one batch at a time; its i-th result answers the i-th item. `wait_s` is how
    long an idle worker waits after the first item for others to join it."""

    def __init__(
        self,
        run: Callable[[list], list],
        max_batch: int,
        wait_s: float,
        on_batch: Callable[[list], None] | None = None,
    ):
        """on_batch: called with each batch's items before it runs (metrics)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((item, future))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Runs batches until nothing is waiting; a new call starts it again."""
        if self.wait_s > 0:
            await asyncio.sleep(self.wait_s)
        while self.waiting:
            batch = [(i, f) for i, f in self.waiting[: self.max_batch] if not f.cancelled()]
            del self.waiting[: self.max_batch]
            if not batch:
                continue
            items = [i for i, _ in batch]
            try:
                if self.on_batch is not None:
                    self.on_batch(items)
                results = await asyncio.to_thread(self.run, items)
                if len(results) != len(items):
                    raise RuntimeError(f"a batch of {len(items)} items got {len(results)} results")
            except Exception as err:  # every caller of the batch gets the error; the worker goes on
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)
