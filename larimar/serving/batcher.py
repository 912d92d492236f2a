"""The decoder deployment's scheduler: continuous batching on one decoding thread.

One thread owns a `completion.Batch` and runs it a token at a time. Jobs submitted from the
replica's event loop join the running rows before the next token (up to `max_rows` prompts in
all) and are answered through their own callbacks as soon as their rows end, so a request that
arrives mid-answer waits one token, not for the longest answer in flight.

Why not `serve.batch`: Ray's batch queue forms a batch as soon as its first request has waited
`batch_wait_timeout_s`, then queues that batch behind the one running (`_BatchQueue._process_batches`).
Requests reach the decoder a few to tens of milliseconds apart (each has been through the encoder
and the memory actor first), so on 2 cores every batch held one request and 8 clients were served
one after another (`jobs/bench_serve.py`: batches of 1, 1, 1, 1, 1, 1, 1, 2). The batcher before
this one formed a batch when the previous pass ended (2, then 6, for the same 8 clients), but a
request arriving mid-pass still waited for that whole pass: first token p50 0.92 s at 8 clients.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import torch

from larimar.model import LarimarModel
from larimar.serving.completion import Batch, Job


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
        self.model, self.max_rows, self.wait_s, self.on_step = model, max_rows, wait_s, on_step
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.batch = Batch(model)
        self.thread = threading.Thread(target=self._run, name="larimar-decode", daemon=True)
        self.thread.start()

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
