"""HTTP request and response bodies (pydantic), shared by the Serve ingress and its clients.

Hard shape checks live here (types, non-empty text: 422 from FastAPI); the configurable limits
(text length, batch size, max_tokens) are checked by the ingress against `ServeSettings.limits`
and answered with 413 or 422 and a message naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from larimar.facts import make_fact
from larimar.serving.auth import ApiKey


def valid_unicode(value):
    """Strings, also inside lists, must encode as UTF-8: a lone surrogate ("\\ud800", which JSON
    allows) would otherwise reach the tokenizer and fail there with a 500."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains invalid Unicode (a lone surrogate)") from None
    elif isinstance(value, (list, tuple)):
        for v in value:
            valid_unicode(v)
    return value


class RequestBody(BaseModel):
    """Base of every request body: strict types (`true` is not 1, "1" is not 1), no unknown
    fields, valid Unicode in every string."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, value):
        return valid_unicode(value)


class Limits(BaseModel):
    model_config = {"extra": "forbid"}  # a misspelt limit must not silently keep its default

    max_text_chars: int = Field(2000, ge=1)
    max_facts_per_request: int = Field(64, ge=1)
    max_tokens: int = Field(256, ge=1)
    max_prompts_per_request: int = Field(16, ge=1)
    max_candidate_tokens: int = Field(64, ge=1, description="longest score candidate, in decoder tokens")
    max_body_bytes: int = Field(2**20, ge=1, description="largest request body (the import route: max_import_bytes)")
    deadline_s: float = Field(60.0, gt=0, description="decoder work per request stops after this many seconds (504)")
    requests_per_second: float = Field(50.0, gt=0, description="per API key; bursts up to burst")
    burst: int = Field(100, ge=1)
    max_import_bytes: int = Field(64 * 2**20, ge=1, description="largest memory file POST /v1/memories/import takes")
    unavailable_after_s: float = Field(
        30.0,
        gt=0,
        description="a deployment that does not answer within this many seconds (the decoder: deadline_s more) "
        "gets its request a 503 with Retry-After (larimar.serving.availability)",
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 503 while a replica is being replaced")
    readiness_timeout_s: float = Field(5.0, gt=0, description="/readyz: Serve's controller must answer within this")
    readiness_ping_s: float = Field(
        1.0,
        gt=0,
        description="/readyz: the memory actor's health ping must answer within this. Its `health` takes no "
        "lock, so a live actor answers in milliseconds even under load; a replica being replaced holds the "
        "ping in Serve's queue for its whole restore, which must read as not ready, not as a late 200",
    )
    max_prompt_tokens: int = Field(
        1024,
        ge=1,
        description="longest prompt (a chat: the rendered conversation) "
        "in decoder tokens; longer ones get 413, never a silent cut",
    )


class ServeSettings(BaseModel):
    """Arguments of the Serve application builder (`larimar/serving/app.py:build`), from YAML or the CLI."""

    model: str = Field(description="trained Larimar model directory (LarimarModel.save_pretrained) or bundled name")
    model_name: str = Field(
        "larimar",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the model id of the OpenAI routes; memories are <model_name>:<memory_id>",
    )
    storage: str = Field("runs/serve-store", description="edit log and snapshots: a directory or s3:// URI")
    api_keys: list[ApiKey] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    scope_model: str | None = "minilm-l6"
    scope_threshold: float = Field(0.7, ge=-1, le=1)
    subject_threshold: float = Field(0.3, ge=-1, le=1, description="cosine a query naming a fact's subject needs")
    default_slots: int | None = Field(None, ge=1, description="K of new memories; default: the model's K")
    snapshot_every: int = Field(200, ge=1)
    max_bytes_per_tenant: int = Field(
        4 * 2**30,
        ge=1,
        description="memory budget per tenant in bytes (RLS state, "
        "latents, texts; a 4,096-slot memory is about 160 MB); over it: 429",
    )
    max_events: int = Field(1000, ge=1, description="history entries kept per memory")
    decoder_device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: shard layers over the replica's GPUs
    decoder_replicas: int = Field(1, ge=1)
    decoder_max_replicas: int = Field(1, ge=1)
    decoder_gpus: float = Field(0, ge=0)
    # the names of larimar.precision.PRECISIONS, spelled out: this module does not load torch
    decoder_precision: Literal["fp32", "bf16", "int8"] | None = Field(
        None,
        description="the decoder's weights at inference (larimar.precision); None: int8 on CPU "
        "(3x the tokens/s of fp32, the same dev CounterFact scores), fp32 as trained on GPUs",
    )
    encoder_precision: Literal["fp32", "bf16"] | None = Field(
        None,
        description="the encoder backbone at inference (larimar.precision.set_encoder_precision); None: bf16 "
        "where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX: 32 edits' encoder pass 2.1x faster, the "
        "same dev scores), else fp32",
    )
    encoder_compile: bool = Field(
        False,
        description=(
            "compile the encoder backbone (torch.compile, Inductor freezing; larimar.precision.compile_encoder):"
            " with one encoder worker, an edit's p50 over HTTP at one client 0.5-6 ms lower on 2 cores (median"
            " 27.9 -> 22.5 ms); beside encoder_workers: 2 no steady gain at 1 client and 16-26 edits/s fewer at"
            " 32; a compile of 25-40 s when an encoder replica starts; keys equal eager's to about 1e-5"
        ),
    )
    decoder_batch_size: int = Field(
        8, ge=1, description="most prompts a decoder replica decodes together (continuous batching)"
    )
    decoder_batch_wait_s: float = Field(
        0.005, ge=0, description="how long an idle decoder waits after a request for others to prefill with it"
    )
    write_batch_size: int = Field(
        16,
        ge=1,
        description=(
            "most concurrent write requests the ingress sends the encoder in one call; 16 keeps two"
            " batches in flight at 32 clients, one encoding while the memory actor commits the other"
        ),
    )
    encode_batches_in_flight: int = Field(
        2,
        ge=1,
        description=(
            "write batches the ingress may have at the encoder at once; one beyond the first is sent"
            " only when full (write_batch_size requests), so that it waits at the encoder instead of"
            " the encoder waiting a round trip for it (larimar.serving.batcher.WhenFree's depth)"
        ),
    )
    encoder_workers: int = Field(
        2,
        ge=1,
        description=(
            "threads an encoder replica runs a batch's length-sorted chunks of 16 texts on (one torch"
            " thread each; larimar.model.LarimarModel.encode_pooled), bit for bit as on one: 32"
            " clients' edits/s higher in 5 of 7 alternating rounds on 2 cores (median +21); a lone"
            " edit is one chunk and unchanged"
        ),
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads of the encoder and decoder replicas; None: torch's default (all cores)",
    )
    health_check_period_s: float = Field(
        2.0,
        gt=0,
        description="Serve's health check of every replica; a dead replica is replaced within about this",
    )
    encoder_replicas: int = Field(1, ge=1)
    encoder_max_replicas: int = Field(1, ge=1)

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _int8_on_cpu(self) -> "ServeSettings":
        if self.decoder_precision == "int8" and self.decoder_device != "cpu":
            raise ValueError("decoder_precision int8 runs on CPU only; use bf16 with decoder_device cuda or auto")
        return self

    @property
    def decoder_dtype(self) -> str:
        """`decoder_precision` with its default resolved for `decoder_device`."""
        if self.decoder_precision is not None:
            return self.decoder_precision
        return "int8" if self.decoder_device == "cpu" else "fp32"


def load_settings(args: dict, defaults: dict | None = None) -> ServeSettings:
    """ServeSettings from a Serve config's ``args`` (or ``larimar serve``'s): an optional ``config``
    YAML file, then the other arguments over it; ``key=value`` strings in ``overrides`` last.

    The file and the overrides go through `larimar.config` like every other config of the project;
    the fields are pydantic's (the HTTP schemas are), and a bad one is a ConfigError naming it.
    `defaults` lie under everything (``larimar serve`` passes the bundled default model)."""
    from pydantic import ValidationError

    from larimar.config import ConfigError, apply_overrides, load_yaml

    args = dict(args)
    overrides = args.pop("overrides", [])
    config = args.pop("config", None)
    data = load_yaml(config) if config else {}
    data = apply_overrides({**(defaults or {}), **data, **args}, list(overrides))
    try:
        return ServeSettings(**data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"]) or "settings"
        raise ConfigError(f"{key}: {first['msg']} (got {first.get('input')!r})") from None


class FactIn(RequestBody):
    text: str | None = Field(None, description="a free-text fact")
    prompt: str | None = Field(None, description="an edit: the prompt ...")
    target: str | None = Field(None, description="... and the continuation it should get")
    subject: str | None = Field(
        None,
        min_length=1,
        description="what the fact is about (EasyEdit's subject): "
        "the scope detector then consults it only for queries that name the subject",
    )

    @model_validator(mode="after")
    def _is_a_fact(self):
        make_fact(self.text, self.prompt, self.target, self.subject)  # ValueError -> 422 naming the fact
        return self


class CreateMemory(RequestBody):
    name: str = Field("", max_length=200)
    slots: int | None = Field(None, ge=1, description="memory size K")
    keys: Literal["linear", "relu"] = Field(
        "linear",
        description="addressing: linear (the paper) or relu "
        "(random features: up to K facts kept apart; larimar.memory)",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="seed of the fixed reference memory (larimar.facts.MemorySpec);"
        " the same seed as a Python memory's gives the same memory",
    )


class MemoryOut(BaseModel):
    id: str
    name: str
    slots: int
    keys: str
    version: int
    facts: int
    created: float


class FactOut(BaseModel):
    id: int
    text: str
    prompt: str | None = None
    target: str | None = None
    subject: str | None = None


class MemoryDetail(MemoryOut):
    stored: list[FactOut]
    log: list[dict]  # {"version", "op": "write"|"forget", "fact_id", "text"}
    fill: float  # facts / slots


class WriteFacts(RequestBody):
    facts: list[FactIn] = Field(min_length=1)


class WriteResult(BaseModel):
    ids: list[int]
    version: int


class ForgetResult(BaseModel):
    forgotten: int
    version: int


class GenerateIn(RequestBody):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    use_scope: bool = True


class Match(BaseModel):
    fact_id: int
    similarity: float


class GenerateOut(BaseModel):
    text: str
    used_memory: bool
    matched: list[Match]
    version: int
    tokens: int


class ScoreIn(RequestBody):
    prompt: str = Field(min_length=1)
    candidates: list[str] = Field(min_length=1)
    use_scope: bool = True


class ScoreOut(BaseModel):
    logprobs: list[float]  # sum of token log-probabilities of " " + candidate
    mean_nll: list[float]
    used_memory: bool
    version: int
