"""Batching of concurrent calls in a Serve replica: `WhenFree` for calls answered in one go (the
encoder's passes, the memory actor's writes), `DecodeLoop` for generation (continuous batching).

Why not `serve.batch`: Ray's batch queue forms a batch as soon as its first request has waited
`batch_wait_timeout_s`, whether or not the batch before it is still running, then queues it
behind that one (`_BatchQueue.wait_for_batch`, `_process_batches`). Requests reach a deployment a
few to tens of milliseconds apart, so under load every batch held one or two requests and they
ran one after another: measured in the decoder, batches of 1, 1, 1, 1, 1, 1, 1, 2 for 8 clients.
`WhenFree` forms a batch when the one before it is done, from everything that arrived meanwhile.

`DecodeLoop`: one thread owns a `completion.Batch` and runs it a token at a time. Jobs submitted from the
replica's event loop join the running rows before the next token (up to `max_rows` prompts in
all) and are answered through their own callbacks as soon as their rows end, so a request that
arrives mid-answer waits one token, not for the longest answer in flight. Before it, `WhenFree`
scheduled the decoder as well (batches of 2, then 6, for the same 8 clients), but a generation
arriving mid-pass waited for that whole pass: first token p50 0.92 s at 8 clients, 0.26 s now.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from larimar.model import LarimarModel
from larimar.serving.completion import Batch, Job


class WhenFree:
    """``await batcher(item)``: `run(items)` on up to `max_batch` items at a time; its i-th result
    answers the i-th item. `run` is a coroutine function (awaited on the event loop: the memory
    actor's writes, which take its lock) or a plain one (run in a worker thread: model passes).
    `wait_s` is how long an idle batcher waits after the first item for others to join it (0: a
    lone request is not delayed).

    depth: batches in flight at once (default 1: a batch is formed when the one before it is done).
    A batch beyond the first is sent only once it is full (`max_batch` items), so pipelining never
    breaks the load into small batches. Why: the ingress's encoder stage (`app.Ingress`) waited
    for each answer before sending the next batch, and the encoder replica idled for that round
    trip between passes: 7-9 ms between passes of 51-66 ms at 32 writing clients, 1.5 ms with
    depth 2 (a scratch trace; README "Measured", session 16). With depth 2 the next full batch
    already waits at the replica, whose own batcher starts it when the pass before it ends. On
    2 shared cores that bought about 3% more edits/s on the mean of 9 pairs, within the noise: the
    CPU is the limit there. Where the encoder has cores of its own, the round trip is pure idle."""

    def __init__(
        self,
        run: Callable[[list], Any],
        max_batch: int,
        wait_s: float = 0.0,
        on_batch: Callable[[list], None] | None = None,
        depth: int = 1,
    ):
        """on_batch: called with each batch's items before it runs (metrics)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self.depth = depth
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.in_flight = 0
        self.unstarted = 0  # batches started that have not yet taken their items
        self.tasks: set[asyncio.Task] = set()  # the running batches: the loop keeps only weak references

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((item, future))
        self._launch(loop, idle=self.in_flight == 0)
        return await future

    def _launch(self, loop: asyncio.AbstractEventLoop, idle: bool = False) -> None:
        """Start the batches the waiting items make: the first whenever nothing is in flight,
        more (up to `depth`) only when full. A batch takes its items when its task first runs, so
        calls made in the same turn of the loop (the encoder replica's `gather` over a request
        list) share it. idle: nothing was in flight, so the first batch may wait `wait_s`."""
        while self.in_flight < self.depth:
            free = len(self.waiting) - self.unstarted * self.max_batch  # not yet claimed by a batch
            if free <= 0 or (self.in_flight and free < self.max_batch):
                return
            task = loop.create_task(self._batch(idle and self.in_flight == 0))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.in_flight += 1
            self.unstarted += 1

    async def _batch(self, wait: bool) -> None:
        """Take up to `max_batch` waiting items (after `wait_s` when `wait`) and run them; then
        start what waits."""
        started = False
        try:
            if wait and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            self.unstarted -= 1
            started = True
            batch = [(i, f) for i, f in self.waiting[: self.max_batch] if not f.cancelled()]
            del self.waiting[: self.max_batch]
            if batch:
                await self._answer(batch)
        finally:
            if not started:  # cancelled in its wait
                self.unstarted -= 1
            self.in_flight -= 1
            self._launch(asyncio.get_running_loop())

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        items = [i for i, _ in batch]
        try:
            if self.on_batch is not None:
                self.on_batch(items)
            if inspect.iscoroutinefunction(self.run):
                results = await self.run(items)
            else:
                results = await asyncio.to_thread(self.run, items)
            if len(results) != len(items):
                raise RuntimeError(f"a batch of {len(items)} items got {len(results)} results")
        except Exception as err:  # every caller of the batch gets the error; the next batches still run
            for _, f in batch:
                if not f.done():
                    f.set_exception(err)
            return
        for (_, f), result in zip(batch, results):
            if not f.done():
                f.set_result(result)


class DecodeLoop:
    """``submit(job)`` from any thread; the job's `on_done` (or `on_error`) answers it.

    max_rows: most prompts decoded together (a job with more is admitted alone); wait_s: how long
    an idle loop waits after a first job for others to be prefilled with it; on_step: called with
    the number of rows of each decoding step (metrics)."""

    def __init__(
        self,
        model: LarimarModel,
        max_rows: int,
        wait_s: float = 0.0,
        on_step: Callable[[int], None] | None = None,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.max_rows, self.wait_s, self.on_step = max_rows, wait_s, on_step
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.batch = Batch(model)
        self.thread = threading.Thread(target=self._run, name="larimar-decode", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        """Whether the decoding thread still runs (the decoder's health check: a replica whose
        thread died, which only an error outside `Exception` can do, is replaced by Serve)."""
        return self.thread.is_alive()

    def submit(self, job: Job) -> None:
        with self.wake:
            self.waiting.append(job)
            self.wake.notify()

    def _take(self) -> list[Job]:
        """Waiting jobs, first come first served, while their prompts fit next to the running rows."""
        taken, rows = [], len(self.batch)
        with self.wake:
            while self.waiting:
                n = len(self.waiting[0].ids)
                if rows + n > self.max_rows and (rows or taken):
                    break  # the head waits for room: nobody overtakes it
                taken.append(self.waiting.popleft())
                rows += n
        return taken

    @torch.no_grad()
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.waiting and not len(self.batch):
                    self.wake.wait()
            if not len(self.batch) and self.wait_s > 0:
                time.sleep(self.wait_s)  # idle: let requests arriving together share one prefill
            taken = self._take()
            try:
                if taken:
                    self.batch.admit(taken)
                if len(self.batch):
                    if self.on_step is not None:
                        self.on_step(len(self.batch))
                    self.batch.step()
            except Exception as err:  # every job in flight gets the error; the loop goes on
                for job in taken:
                    if job.on_error is not None and not job.reported:
                        job.reported = True
                        job.on_error(err)
                self.batch.fail(err)
