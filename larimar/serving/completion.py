"""Completions on a LarimarModel: prompt rendering, stop sequences, finish reasons, streaming.

The Serve decoder deployment and any Python caller share this code, so `/v1/completions`,
`/v1/chat/completions` and `/v1/memories/{id}/generate` answer alike. The latent `z` is read
once, before the first token (the caller does that), so an edit that lands while a stream is
running cannot change it half-way. Concurrent requests are decoded together by `Batch`
(continuous batching: rows join and leave between two tokens), and a lone call is a batch of one.

Prompts are not truncated: a prompt longer than the configured limit in *tokens* is refused
(413, `ApiError`) instead of silently losing its end. Chat requests are rendered with the
tokenizer's chat template (SmolLM2-Instruct ships one); a tokenizer without one (the tiny test
decoders) gets a plain "role: content" transcript ending in "assistant:".
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from transformers import TemperatureLogitsWarper, TextStreamer, TopPLogitsWarper

from larimar.decoder import ConditionedDecoder, Decoding
from larimar.model import LarimarModel, pad
from larimar.serving.errors import ApiError

GREEDY_BELOW = 1e-4  # temperatures under this decode greedily: dividing logits by 1e-300 gives NaN probabilities


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop sequence) or "length" (max_tokens reached)

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_ids(model: LarimarModel, prompt: str) -> list[int]:
    """ "<bos> prompt", as the model was trained and is evaluated (larimar.model), without truncation."""
    return [model.bos_id, *model.decoder_tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def chat_ids(model: LarimarModel, messages: list[dict]) -> list[int]:
    """The whole conversation through the tokenizer's chat template, ready for the assistant's turn."""
    tok = model.decoder_tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return prompt_ids(model, transcript)


def check_length(ids: list[int], limit: int, param: str) -> None:
    if len(ids) > limit:
        raise ApiError(
            413,
            f"{param} has {len(ids)} tokens; the limit is {limit} tokens",
            param=param,
            code="context_length_exceeded",
        )


class StopScanner:
    """Cuts a text stream at the first stop sequence (which OpenAI leaves out of the answer),
    holding back any tail that could still become one, so a stream never shows part of a stop."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self.buf = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop sequence was hit (then nothing more comes)."""
        self.buf += piece
        hits = [self.buf.find(s) for s in self.stops if s in self.buf]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        keep = max([k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])], default=0)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


@dataclass(eq=False)
class Job:
    """One request's share of the decoder's batch: its prompts (token ids), their read-outs z (one
    row each) and its settings; each prompt is a row of a `Batch` from its first token to its last.
    `on_text` receives a one-prompt job's text as it is generated, cut at its stop sequences;
    `on_done` its completions once its own rows end, `on_error` what broke the batch instead;
    setting `cancel` (a client that went away) ends its rows at the next token."""

    ids: list[list[int]]
    z: torch.Tensor
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    deadline_s: float | None = None
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    min_tokens: int = 0  # no end of sequence before this many tokens (vLLM's min_tokens; benchmarks)
    on_done: Callable[[list[Completion]], None] | None = None  # its completions, once its own rows end
    on_error: Callable[[BaseException], None] | None = None  # an error of a pass its rows were in

    def __post_init__(self) -> None:
        if self.min_tokens > self.max_tokens:
            raise ApiError(
                400, f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})", param="min_tokens"
            )
        self.stops = [s for s in (self.stop or []) if s]
        self.deadline = time.monotonic() + self.deadline_s if self.deadline_s else None
        self.timed_out, self.reported = False, False
        self.rows: list[_Row] = []  # one per prompt, once admitted to a `Batch`

    def parts(self) -> list[list[int]]:
        """Its prompts split into plain (z = 0) and conditioned ones: each kind is prefilled apart
        (and in bf16/int8 decoded apart, `Batch`), so an out-of-scope prompt answers as the plain
        decoder whatever it was batched with (`ConditionedDecoder._split_mixed`)."""
        cond = ConditionedDecoder.uses_latent(self.z.reshape(len(self.ids), -1)).bool().tolist()
        return [[i for i, c in enumerate(cond) if c == kind] for kind in (False, True)]

    def expired(self) -> bool:
        """Cancelled, or past its deadline (then `timed_out`, and cancelled)."""
        if not self.cancel.is_set() and self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            self.cancel.set()
        return self.cancel.is_set()


class _RowText(TextStreamer):
    """transformers' incremental detokenizer for one row (it holds text back until a word is
    complete), its finished text passed through the row's stop scanner."""

    def __init__(self, tokenizer, row: "_Row"):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.row = row

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.row.take(text, stream_end)


class _Row:
    """What one prompt has generated so far, and whether it is finished (and why)."""

    def __init__(self, model: LarimarModel, job: Job, prompt: list[int]):
        self.job, self.prompt_tokens = job, len(prompt)
        self.end_ids = {model.eos_id, model.decoder_tokenizer.pad_token_id}
        self.eos_id = model.eos_id
        self.scanner, self.detok = StopScanner(job.stops), _RowText(model.decoder_tokenizer, self)
        self.tokens, self.text, self.done, self.ended, self.hit = 0, "", False, False, False

    def put(self, token: int) -> None:
        if self.done:
            return
        if token in self.end_ids:  # rows that end early continue as padding: not theirs
            self.ended, self.tokens = token == self.eos_id, self.tokens + (token == self.eos_id)
            self.finish()
            return
        self.tokens += 1
        self.detok.put(torch.tensor([token]))
        if not self.done and self.tokens >= self.job.max_tokens:
            self.finish()

    def take(self, piece: str, stream_end: bool) -> None:
        if self.hit:
            return
        out, self.hit = self.scanner.feed(piece)
        if stream_end and not self.hit:
            out += self.scanner.flush()
        if out:
            self.text += out
            if self.job.on_text is not None:
                self.job.on_text(out)
        if self.hit:
            self._ended()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.detok.end()  # the held-back tail, through the scanner
            self._ended()

    def _ended(self) -> None:
        """Done; the last of its job's rows to end hands the job its completions (`Job.on_done`),
        so a short answer does not wait for the longest row of the pass."""
        self.done = True
        job = self.job
        if job.on_done is not None and all(r.done for r in job.rows) and not job.reported:
            job.reported = True
            job.on_done([r.completion() for r in job.rows])

    def completion(self) -> Completion:
        reason = "stop" if (self.ended or self.hit) else "length"
        return Completion(self.text, self.prompt_tokens, self.tokens, reason)


def _choose(rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
    """(B,) each row's next token from its (B, vocab) logits, with its job's settings: greedy below
    `GREEDY_BELOW`, else temperature then top-p (transformers' warpers, in `generate`'s order);
    no end of sequence before the job's `min_tokens`."""
    logits = logits.float()
    tokens = logits.argmax(-1)
    for i, row in enumerate(rows):
        job = row.job
        if job.temperature < GREEDY_BELOW and row.tokens >= job.min_tokens:
            continue
        scores = logits[i : i + 1].clone()
        if row.tokens < job.min_tokens:
            scores[:, row.eos_id] = -float("inf")
        if job.temperature < GREEDY_BELOW:
            tokens[i] = scores.argmax(-1)[0]
            continue
        if job.temperature != 1.0:
            scores = TemperatureLogitsWarper(job.temperature)(None, scores)
        if job.top_p < 1.0:
            scores = TopPLogitsWarper(job.top_p)(None, scores)
        tokens[i] = torch.multinomial(scores.softmax(-1), 1)[0, 0]
    return tokens


class _Group:
    """Rows decoded in one forward pass per token: their `Decoding` and the token each chose last."""

    def __init__(self, rows: list[_Row], state: Decoding, last: torch.Tensor):
        self.rows, self.state, self.last = rows, state, last


class Batch:
    """Continuous batching: the rows of many jobs decoded together one token at a time, each with its
    own read-out, limits, stop sequences and sampling settings. Jobs join (`admit`: their prompts
    are prefilled, then merged into the running rows) and rows leave (when done) between two
    tokens, so a request that arrives mid-answer starts at the next token instead of waiting for
    the longest answer in the batch to end (vLLM's scheduling, on transformers' cache objects).

    Plain and conditioned prompts are prefilled apart; in bf16/int8 they are also decoded apart
    (two groups), because there a plain row's logits shift by tenths when it shares a pass with
    conditioned rows (`ConditionedDecoder._split_mixed`); in float32 all rows are one group."""

    def __init__(self, model: LarimarModel):
        self.model = model
        self.apart = model.decoder.lm.get_input_embeddings().weight.dtype != torch.float32
        self.groups: dict[int, _Group] = {}

    def __len__(self) -> int:
        return sum(len(g.rows) for g in self.groups.values())

    def jobs(self) -> list[Job]:
        return list({id(r.job): r.job for g in self.groups.values() for r in g.rows}.values())

    @torch.no_grad()
    def admit(self, jobs: list[Job]) -> None:
        """Prefill the jobs' prompts (one pass per kind) and add them to the running rows. A job
        already cancelled or past its deadline is finished without running."""
        model = self.model
        new: dict[int, list[tuple[Job, _Row, int]]] = {}
        for job in jobs:
            job.rows = rows = [_Row(model, job, p) for p in job.ids]
            if job.expired():
                for row in rows:
                    row.finish()
                continue
            for kind, idx in enumerate(job.parts()):
                for i in idx:
                    new.setdefault(kind, []).append((job, rows[i], i))
        for kind, group in new.items():
            if kind:
                z = torch.stack([j.z.reshape(len(j.ids), -1)[i] for j, _, i in group]).to(model.device)
            else:  # z = 0 of any width (a request read without a memory has the encoder's latent width)
                z = torch.zeros(len(group), model.value_dim, device=model.device)
            batch = pad([j.ids[i] for j, _, i in group], model.decoder_tokenizer.pad_token_id, "left", model.device)
            logits, state = model.decoder.prefill(batch["input_ids"], batch["attention_mask"], z)
            rows = [r for _, r, _ in group]
            last = self._put(rows, logits)
            key = kind if self.apart else 0
            if key in self.groups:
                running = self.groups[key]
                state = Decoding.concat([running.state, state], model.decoder.lm.config)
                rows, last = running.rows + rows, torch.cat([running.last, last])
            self.groups[key] = _Group(rows, state, last)
        self._drop_done()

    @torch.no_grad()
    def step(self) -> None:
        """One more token for every running row (a forward pass per group); finished rows leave."""
        for group in self.groups.values():
            for row in group.rows:
                if row.job.expired():
                    row.finish()
        self._drop_done()
        for group in self.groups.values():
            logits = self.model.decoder.decode(group.last, group.state)
            group.last = self._put(group.rows, logits)
        self._drop_done()

    @staticmethod
    def _put(rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        tokens = _choose(rows, logits)
        for row, token in zip(rows, tokens.tolist()):
            row.put(token)
        return tokens

    def _drop_done(self) -> None:
        config = self.model.decoder.lm.config
        for key, group in list(self.groups.items()):
            keep = [i for i, r in enumerate(group.rows) if not r.done]
            if not keep:
                del self.groups[key]
            elif len(keep) < len(group.rows):
                idx = torch.tensor(keep, device=group.last.device)
                self.groups[key] = _Group(
                    [group.rows[i] for i in keep], group.state.select(keep, config), group.last[idx]
                )

    def fail(self, err: BaseException) -> None:
        """Every running job gets `err` (`Job.on_error`) and the batch is emptied."""
        for job in self.jobs():
            if job.on_error is not None and not job.reported:
                job.reported = True
                job.on_error(err)
        self.groups.clear()


@torch.no_grad()
def run_jobs(model: LarimarModel, jobs: list[Job]) -> list[list[Completion]]:
    """Every job's completions from one `Batch` that starts with all of them: `complete` and
    `stream` are one-job calls of this; the Serve decoder deployment keeps a `Batch` running and
    admits jobs as they arrive (`larimar.serving.batcher.DecodeLoop`). A job whose deadline passed
    comes back with `timed_out` set (its rows end with finish_reason "length")."""
    batch = Batch(model)
    batch.admit(jobs)
    while len(batch):
        batch.step()
    return [[r.completion() for r in job.rows] for job in jobs]


def timeout_error(deadline_s: float | None) -> ApiError:
    return ApiError(
        504,
        f"the completion took longer than the {deadline_s:g} s deadline; ask for fewer tokens",
        param="max_tokens",
        code="timeout",
    )


def complete(
    model: LarimarModel,
    ids: list[list[int]],
    z: torch.Tensor,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    deadline_s: float | None = None,
) -> list[Completion]:
    """Complete each prompt (token ids from `prompt_ids`/`chat_ids`) conditioned on its row of z.
    Past `deadline_s` seconds the generation stops and ApiError 504 is raised."""
    job = Job(ids, z, max_tokens, temperature, top_p, stop, deadline_s)
    [outs] = run_jobs(model, [job])
    if job.timed_out:
        raise timeout_error(deadline_s)
    return outs


@torch.no_grad()
def score(
    model: LarimarModel,
    prompt: str,
    candidates: list[str],
    z: torch.Tensor,
    max_prompt_tokens: int,
    max_candidate_tokens: int,
    deadline_s: float | None = None,
    chunk: int = 4,
) -> list[tuple[float, float, int]]:
    """log p(" " + candidate | prompt, z) per candidate (`LarimarModel.score_continuations`), with
    the limits counted in tokens and the work cut into chunks so a deadline really stops it."""
    tok = model.decoder_tokenizer
    check_length(tok(prompt, add_special_tokens=False)["input_ids"], max_prompt_tokens, "prompt")
    for i, c in enumerate(candidates):
        check_length(
            tok(" " + c.strip(), add_special_tokens=False)["input_ids"], max_candidate_tokens, f"candidates[{i}]"
        )
    deadline = time.monotonic() + deadline_s if deadline_s else None
    out = []
    for s in range(0, len(candidates), chunk):
        if deadline is not None and time.monotonic() > deadline:
            raise ApiError(
                504,
                f"scoring took longer than the {deadline_s:g} s deadline; send fewer or shorter candidates",
                param="candidates",
                code="timeout",
            )
        part = candidates[s : s + chunk]
        out += model.score_continuations([prompt] * len(part), part, z[s : s + chunk])
    return out


def stream(
    model: LarimarModel,
    ids: list[int],
    z: torch.Tensor,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    deadline_s: float | None = None,
) -> Iterator[str | Completion]:
    """Text pieces as they are generated, then one `Completion` (the whole text, usage, reason).

    Generation runs in a thread (`run_jobs` with a one-prompt job); closing the iterator early (a
    client that disconnected) stops the generation at the next token, and so does the deadline
    (the stream then ends with finish_reason "length")."""
    pieces: queue.Queue = queue.Queue()
    job = Job([ids], z.reshape(1, -1), max_tokens, temperature, top_p, stop, deadline_s, on_text=pieces.put)
    result: list = []

    def run() -> None:
        try:
            result.append(run_jobs(model, [job])[0][0])
        except BaseException as err:  # surfaced to the consumer below
            result.append(err)
        pieces.put(_END)

    worker = threading.Thread(target=run, name="larimar-stream", daemon=True)
    worker.start()
    try:
        while (piece := pieces.get()) is not _END:
            yield piece
    except BaseException:  # closed early (GeneratorExit): stop generating
        job.cancel.set()
        raise
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    yield result[0]


_END = object()
