"""Completions on a LarimarModel: prompt rendering, stop sequences, finish reasons, streaming.

The Serve decoder deployment and any Python caller share this code, so `/v1/completions`,
`/v1/chat/completions` and `/v1/memories/{id}/generate` answer alike. The latent `z` is read
once, before the first token (the caller does that), so an edit that lands while a stream is
running cannot change it half-way.

Prompts are not truncated: a prompt longer than the configured limit in *tokens* is refused
(413, `ApiError`) instead of silently losing its end. Chat requests are rendered with the
tokenizer's chat template (SmolLM2-Instruct ships one); a tokenizer without one (the tiny test
decoders) gets a plain "role: content" transcript ending in "assistant:".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

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


class _Until(StoppingCriteria):
    """Ends generation early: for every row once a stop sequence appears in its new text, for all
    rows once `cancel` is set (a client that went away) or the deadline has passed."""

    def __init__(self, tokenizer, start: int, stops: list[str], cancel: threading.Event, deadline: float | None):
        self.tokenizer, self.start, self.stops, self.cancel, self.deadline = tokenizer, start, stops, cancel, deadline

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.cancel.set()
        done = torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)
        if self.stops and not self.cancel.is_set():
            texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
            done = torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)
        return done


class _CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also keeps the generated token ids (for usage and finish_reason)."""

    def __init__(self, tokenizer, timeout: float | None):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.ids.extend(value.reshape(-1).tolist())
        super().put(value)


def _sampling(temperature: float, top_p: float) -> dict:
    if temperature < GREEDY_BELOW:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def _generate(
    model: LarimarModel,
    ids: list[list[int]],
    z: torch.Tensor,
    max_tokens: int,
    temperature: float,
    top_p: float,
    stops: list[str],
    cancel: threading.Event,
    streamer=None,
    deadline: float | None = None,
) -> torch.Tensor:
    """(B, new) generated ids; rows that ended early are padded with the pad (= eos for SmolLM2) id."""
    batch = pad(ids, model.decoder_tokenizer.pad_token_id, "left", model.device)
    T = batch["input_ids"].shape[1]
    start = model.decoder.generation_start(T, z)  # where new tokens begin in what generate() shows
    until = _Until(model.decoder_tokenizer, start, stops, cancel, deadline)
    out = model.decoder.generate(
        batch["input_ids"],
        batch["attention_mask"],
        z.to(model.device),
        max_new_tokens=max_tokens,
        eos_token_id=model.eos_id,
        stopping_criteria=StoppingCriteriaList([until]),
        streamer=streamer,
        **_sampling(temperature, top_p),
    )
    return out[:, T:]


def _finish(
    model: LarimarModel,
    new: list[int],
    prompt_len: int,
    max_tokens: int,
    stops: list[str],
    streamed: tuple[str, bool] | None = None,
) -> Completion:
    """Usage and finish reason of one row of generated ids. `streamed`: the text already cut at a
    stop sequence by the stream, and whether it was."""
    ends = [i for i, t in enumerate(new) if t in (model.eos_id, model.decoder_tokenizer.pad_token_id)]
    eos = ends[0] if ends else None  # rows that ended early continue as padding
    kept = new if eos is None else new[:eos]
    if streamed is None:
        scanner = StopScanner(stops)
        text, hit = scanner.feed(model.decoder_tokenizer.decode(kept, skip_special_tokens=True))
        text += "" if hit else scanner.flush()
    else:
        text, hit = streamed
    ended = eos is not None and new[eos] == model.eos_id
    reason = "stop" if (ended or hit) else "length"
    return Completion(text=text, prompt_tokens=prompt_len, completion_tokens=len(kept) + ended, finish_reason=reason)


@torch.no_grad()
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
    stops = [s for s in (stop or []) if s]
    cancel = threading.Event()
    deadline = time.monotonic() + deadline_s if deadline_s else None
    new = _generate(model, ids, z, max_tokens, temperature, top_p, stops, cancel, deadline=deadline).tolist()
    if cancel.is_set():
        raise ApiError(
            504,
            f"the completion took longer than the {deadline_s:g} s deadline; ask for fewer tokens",
            param="max_tokens",
            code="timeout",
        )
    return [_finish(model, row, len(p), max_tokens, stops) for row, p in zip(new, ids)]


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

    Generation runs in a thread feeding transformers' TextIteratorStreamer; closing the iterator
    early (a client that disconnected) stops the generation at the next token, and so does the
    deadline (the stream then ends with finish_reason "length")."""
    stops = [s for s in (stop or []) if s]
    timeout = deadline_s + 60 if deadline_s else 600.0  # the streamer's wait for a token, a backstop
    streamer, cancel, failure = _CountingStreamer(model.decoder_tokenizer, timeout), threading.Event(), []
    deadline = time.monotonic() + deadline_s if deadline_s else None

    def run() -> None:
        try:
            with torch.no_grad():
                _generate(
                    model,
                    [ids],
                    z.reshape(1, -1),
                    max_tokens,
                    temperature,
                    top_p,
                    stops,
                    cancel,
                    streamer,
                    deadline=deadline,
                )
        except BaseException as err:  # surfaced to the consumer below
            failure.append(err)
            streamer.end()

    worker = threading.Thread(target=run, name="larimar-stream", daemon=True)
    worker.start()
    scanner, text, hit = StopScanner(stops), "", False
    try:
        for piece in streamer:
            out, hit = scanner.feed(piece)
            if out:
                text += out
                yield out
            if hit:
                cancel.set()
                break
        if not hit and (rest := scanner.flush()):
            text += rest
            yield rest
    except BaseException:  # closed early (GeneratorExit) or the streamer timed out: stop generating
        cancel.set()
        raise
    worker.join()
    if failure:
        raise failure[0]
    yield _finish(model, streamer.ids, len(ids), max_tokens, stops, streamed=(text, hit))
