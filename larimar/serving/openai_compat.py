"""The OpenAI-compatible surface: request schemas, model names, response and stream-chunk bodies.

What a standard client sends is accepted or refused by name, never ignored: a parameter this
server does not implement (`logprobs`, `n` > 1, `tools`, ...) gets a 400 whose `param` names it.
Memories are addressable as models, like `ray.serve.llm`'s `base:adapter`: `larimar:<memory_id>`
reads that memory; plain `larimar` with Larimar's `memory_id` extension field does the same, and
plain `larimar` alone is the unconditioned decoder. Deviations from OpenAI, on purpose: the
default temperature is 0 (greedy: edits are checked by reading them back), and a stream carries
one prompt.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from larimar.serving.errors import ApiError
from larimar.serving.schemas import RequestBody


class StreamOptions(RequestBody):
    include_usage: bool = False


class _OpenAIRequest(RequestBody):
    """Fields both routes share. Unknown fields are kept (extra="allow") so `unsupported()` can
    name them in a 400, which is what OpenAI does too, instead of FastAPI's generic 422."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field("larimar", min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    user: str | None = Field(None, max_length=256)  # accepted like OpenAI's: an end-user id, not used
    memory_id: str | None = Field(None, min_length=1, max_length=128, description="Larimar: the memory to read")
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: no end of sequence before this many tokens")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop sequences must have 1 to 200 characters")
        return stops

    def unsupported(self) -> None:
        """400 for anything set that this server does not implement."""
        for name, value in (self.model_extra or {}).items():
            if value is not None:
                raise ApiError(
                    400, f"parameter {name!r} is not supported by this server", param=name, code="unsupported_parameter"
                )
        if self.n != 1:
            raise ApiError(
                400,
                "n must be 1: generate several completions with several requests",
                param="n",
                code="unsupported_parameter",
            )
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionIn(_OpenAIRequest):
    """OpenAI /v1/completions, plus `memory_id`."""

    prompt: str | list[str] = Field(description="one prompt, or a list (not with stream)")
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("at least one prompt")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionIn(_OpenAIRequest):
    """OpenAI /v1/chat/completions, plus `memory_id`. The whole conversation goes through the chat
    template; the memory is read with the last user turn (the question the facts should answer)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def template_messages(self) -> list[dict]:
        """Messages for the chat template; OpenAI's newer `developer` role is the system role."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in self.messages]

    def query(self) -> str:
        users = [m.text for m in self.messages if m.role == "user"]
        if not users:
            raise ApiError(422, "messages need at least one user message", param="messages")
        return users[-1]

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def memory_for(model: str, memory_id: str | None, base: str) -> str | None:
    """The memory a request reads: `base:<id>` or `memory_id`; None for the plain decoder."""
    if model == base:
        return memory_id
    if model.startswith(base + ":") and len(model) > len(base) + 1:
        named = model[len(base) + 1 :]
        if memory_id is not None and memory_id != named:
            raise ApiError(
                400, f"model {model!r} names memory {named!r} but memory_id is {memory_id!r}", param="memory_id"
            )
        return named
    raise ApiError(
        404,
        f"model {model!r} does not exist; GET /v1/models lists {base!r} and {base}:<memory_id>",
        param="model",
        code="model_not_found",
    )


def model_card(model_id: str, created: float) -> dict:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": "larimar"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(rid: str, model: str, outs: list[dict], larimar: dict) -> dict:
    choices = [
        {"index": i, "text": o["text"], "logprobs": None, "finish_reason": o["finish_reason"]}
        for i, o in enumerate(outs)
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(sum(o["prompt_tokens"] for o in outs), sum(o["completion_tokens"] for o in outs)),
        "larimar": larimar,
    }


def chat_body(rid: str, model: str, out: dict, larimar: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out["text"]},
                "logprobs": None,
                "finish_reason": out["finish_reason"],
            }
        ],
        "usage": usage(out["prompt_tokens"], out["completion_tokens"]),
        "larimar": larimar,
    }


def chunk(
    rid: str,
    model: str,
    chat: bool,
    *,
    text: str | None = None,
    finish: str | None = None,
    first: bool = False,
    usage_: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """One stream event. Chat chunks carry `delta`s (the first one the role), completion chunks
    `text`; a usage chunk (stream_options.include_usage) has no choices, as OpenAI sends it."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if usage_ is not None:
        body["choices"], body["usage"] = [], usage_
        return body
    if chat:
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    body["choices"] = [choice]
    if extra:
        body["larimar"] = extra
    return body


def sse(data: dict | str) -> str:
    """A server-sent event as OpenAI streams them: `data: <json>` and a blank line; `[DONE]` last."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"
