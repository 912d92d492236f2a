"""Larimar on Ray Serve: HTTP ingress, encoder, decoder and the single memory actor.

    serve run larimar.serving.app:build model=larimar-smol-v3 storage=runs/serve-store     # dev
    serve deploy serve/config.yaml                                                # from the built config

Request flow (generate): Ingress -> Encoder.encode_queries (latent + scope embeddings)
-> MemoryActor.read (consistent version; 0 latent when out of scope) -> Decoder.generate.
Writes: Ingress -> Encoder.encode_facts -> MemoryActor.write, where concurrent writes are batched
at every step (`larimar.serving.batcher.WhenFree`: each batch formed when the one before it is
done; at the ingress's encoder stage a second batch may wait at the encoder once it is full):
the ingress sends the requests that arrived meanwhile to the encoder in one call and to
the actor in one call, the encoder runs their facts in one pass, and the actor validates them,
logs them durably and applies them as one low-rank update per memory under one asyncio lock.
Only the actor touches memory state; it runs no network (latents arrive encoded), so edits stay
in the millisecond range. State logic: `larimar.serving.store`.
No `from __future__ import annotations` here: FastAPI must see the real types of the
class-based ingress methods to tell request bodies from query parameters.
"""

import asyncio
import time
from typing import Any

import torch
from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from larimar.model import LarimarModel
from larimar.precision import set_decoder_precision
from larimar.serving import completion, openai_compat as oai
from larimar.serving.auth import ApiKeys
from larimar.serving.availability import Dependency
from larimar.serving.batcher import DecodeLoop, WhenFree
from larimar.serving.encoding import TextEncoding
from larimar.serving.errors import ApiError, error_body, refusal, validation_error
from larimar.serving.guard import RequestGuard, TokenBucket
from larimar.serving.http_metrics import RequestMetrics
from larimar.serving.openai_compat import ChatCompletionIn, CompletionIn
from larimar.serving.stage_metrics import Durations
from larimar.serving.schemas import (
    CreateMemory,
    ForgetResult,
    GenerateIn,
    GenerateOut,
    Limits,
    Match,
    MemoryDetail,
    MemoryOut,
    ScoreIn,
    ScoreOut,
    ServeSettings,
    WriteFacts,
    WriteResult,
    load_settings,
)
from larimar.serving.store import Conflict, MemoryStore, StoreConfig, StoreError
from larimar.serving.wire import arrays_in_and_out

# -- model deployments ----------------------------------------------------------------------------


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Encoder:
    """Text -> Larimar latents, and sentence embeddings for the scope detector
    (`larimar.serving.encoding.TextEncoding`), for batches of requests."""

    def __init__(self, *args, **kwargs):
        """`TextEncoding`'s arguments (model_dir, scope_model, threads, precision, compiled, workers): the
        replica is that class behind Serve's batching, and the class owns what they mean."""
        self.encoding = TextEncoding(*args, **kwargs)
        self.passes = Durations(
            "larimar_encoder_pass",
            "one encoder pass over a batch of requests' texts, in the replica (kind: facts, queries)",
            ("kind",),
        )
        # concurrent requests share passes, formed when the pass before is done (larimar.serving.batcher)
        self._facts = WhenFree(self._timed("facts", self.encoding.facts), 32)
        self._queries = WhenFree(self._timed("queries", self.encoding.queries), 32)

    def _timed(self, kind: str, run):
        """`run` on a worker thread, its duration observed on the event loop, as Serve's metrics are."""

        async def timed(items: list) -> list:
            t0 = time.perf_counter()
            try:
                return await asyncio.to_thread(run, items)
            finally:
                self.passes.observe(time.perf_counter() - t0, tags={"kind": kind})

        return timed

    @arrays_in_and_out
    async def encode_facts(self, requests: list[list[dict]]) -> list[dict]:
        """The facts of several write requests (the ingress sends what arrived together) -> one
        encoding or error per request. Concurrent calls share one encoder pass (keys and values
        together) and one scope pass."""
        return list(await asyncio.gather(*(self._facts(r) for r in requests)))

    @arrays_in_and_out
    async def encode_queries(self, request: list[str]) -> dict:
        """Latents and scope vectors of one request's queries (`TextEncoding.queries`). Concurrent
        requests share one encoder pass: under generation load the encoder shares the cores with
        the decoder, and one pass per request let generations reach the decoder one at a time, too
        late to be batched there."""
        return await self._queries(request)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16)
class Decoder:
    """The latent-conditioned decoder; `device="auto"` shards its layers over the replica's GPUs.

    Concurrent generations are decoded together, continuously batched: a request's prompts join
    the running rows before the next token (`larimar.serving.batcher.DecodeLoop`, up to
    `batch_size` prompts; an idle decoder waits `batch_wait_s` for company to prefill with), each
    with its own read-out, limits, stop sequences and sampling (`completion.Batch`), and leave when
    they end; streamed requests receive their text as it is generated. `precision` casts the
    decoder for inference (`larimar.precision`)."""

    def __init__(
        self,
        model_dir: str,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        batch_size: int = 8,
        batch_wait_s: float = 0.005,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.model = LarimarModel.from_pretrained(model_dir)
        if device == "cuda":
            self.model.to("cuda")
        elif device == "auto":  # accelerate's device_map: layers spread over the visible GPUs
            from accelerate import dispatch_model, infer_auto_device_map

            lm = self.model.decoder.lm
            dispatch_model(lm, device_map=infer_auto_device_map(lm))
            self.model.decoder.kv_proj.to(lm.device)
            if self.model.decoder.emb_proj is not None:
                self.model.decoder.emb_proj.to(lm.device)
        set_decoder_precision(self.model.decoder, precision)
        self.batch_rows = Histogram(
            "larimar_decoder_batch_rows",
            description="prompts decoded together, per decoding step",
            boundaries=[1, 2, 4, 8, 16, 32],
        )
        self._loop = DecodeLoop(self.model, batch_size, batch_wait_s, on_step=self.batch_rows.observe)

    def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`; a replica whose decoding thread died
        would take requests it never answers, so it reports itself unhealthy and is replaced."""
        if not self._loop.alive:
            raise RuntimeError("the decoding thread is not running")

    def _prompt_ids(self, req: dict) -> list[list[int]]:
        """Token ids of the request's prompts (or its chat), each checked against the token limit."""
        if "messages" in req:
            ids = [completion.chat_ids(self.model, req["messages"])]
            completion.check_length(ids[0], req["max_prompt_tokens"], "messages")
            return ids
        ids = [completion.prompt_ids(self.model, p) for p in req["prompts"]]
        for i, x in enumerate(ids):
            completion.check_length(x, req["max_prompt_tokens"], "prompt" if len(ids) == 1 else f"prompt[{i}]")
        return ids

    def _job(self, req: dict, ids: list[list[int]], on_text=None) -> completion.Job:
        """The request as rows of the running batch; chat turns read through `ConditionedDecoder.chat_read`."""
        z = self.model.decoder.chat_read(req["z"]) if "messages" in req else req["z"]
        return completion.Job(
            ids,
            z,
            req["max_tokens"],
            req["temperature"],
            req["top_p"],
            req["stop"],
            req.get("deadline_s"),
            on_text=on_text,
            min_tokens=req.get("min_tokens", 0),
        )

    async def _submit(self, job: completion.Job) -> list[completion.Completion]:
        """The job's completions, as soon as its own rows are done (or the error of its batch)."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def settle(how: str, value) -> None:
            if not answer.done():
                getattr(answer, how)(value)

        job.on_done = lambda outs: loop.call_soon_threadsafe(settle, "set_result", outs)
        job.on_error = lambda err: loop.call_soon_threadsafe(settle, "set_exception", err)
        self._loop.submit(job)
        return await answer

    @arrays_in_and_out
    async def complete(self, req: dict) -> dict:
        """{"prompts": [...]} or {"messages": [...]}, "z", "max_tokens", "temperature", "top_p", "stop"
        -> {"ok": [Completion dicts]} or {"error": ...} (a prompt over the token limit, the deadline)."""
        try:
            job = self._job(req, self._prompt_ids(req))
        except ApiError as err:
            return refusal(err)
        try:
            outs = await self._submit(job)
        finally:
            job.cancel.set()  # a caller that went away (cancelled) frees its rows of the pass
        if job.timed_out:
            return refusal(completion.timeout_error(job.deadline_s))
        return {"ok": [o.to_dict() for o in outs]}

    @arrays_in_and_out
    async def stream(self, req: dict):
        """Streamed `complete` of one prompt: {"ok": {"prompt_tokens"}} (or {"error"}) first, so the
        ingress can still answer a 4xx before the stream starts, then {"text"} pieces, then {"done"}.
        Past the deadline the stream ends with finish_reason "length"."""
        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
        try:
            ids = self._prompt_ids(req)
            job = self._job(req, ids, on_text=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece))
        except ApiError as err:
            yield refusal(err)
            return
        yield {"ok": {"prompt_tokens": len(ids[0])}}
        result = asyncio.ensure_future(self._submit(job))
        try:
            while not result.done():
                piece = asyncio.ensure_future(pieces.get())
                await asyncio.wait({piece, result}, return_when=asyncio.FIRST_COMPLETED)
                if piece.done():
                    yield {"text": piece.result()}
                else:
                    piece.cancel()
            while not pieces.empty():  # the pass's last pieces were queued before it returned
                yield {"text": pieces.get_nowait()}
            [done] = result.result()
            yield {"done": done.to_dict()}
        finally:
            job.cancel.set()  # a client that went away ends its row at the next token

    @arrays_in_and_out
    async def score(self, req: dict) -> dict:
        """{"prompt", "candidates", "z", limits} -> {"ok": [(logprob, mean NLL, tokens)]} or {"error"}."""
        try:
            return {
                "ok": await asyncio.to_thread(
                    completion.score,
                    self.model,
                    req["prompt"],
                    req["candidates"],
                    req["z"],
                    req["max_prompt_tokens"],
                    req["max_candidate_tokens"],
                    req["deadline_s"],
                )
            }
        except ApiError as err:
            return refusal(err)


# -- the memory actor -------------------------------------------------------------------------------


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=2000)
class MemoryActor:
    """Owns every memory. All state-touching methods are `async def` under one asyncio lock."""

    def __init__(self, store: dict):
        self.store = MemoryStore(StoreConfig(**store))
        self.lock = asyncio.Lock()
        self.snapshotting: asyncio.Task | None = None  # a snapshot being written, outside the lock
        self._writes = WhenFree(self._write_batch, 64)
        self.edits = Counter("larimar_memory_edits", description="acknowledged edits", tag_keys=("op",))
        self.facts_written = Counter("larimar_memory_facts_written", description="facts written")
        self.scope_checks = Counter(
            "larimar_scope_checks", description="memory reads by scope outcome", tag_keys=("outcome",)
        )
        self.memories = Gauge("larimar_memories", description="memories held")
        self.fill = Gauge(
            "larimar_memory_fill_ratio", description="facts / slots, summed over memories by stat", tag_keys=("stat",)
        )
        self.versions = Gauge("larimar_memory_version_max", description="highest memory version")
        self.snapshot_age = Gauge("larimar_memory_snapshot_age_seconds", description="seconds since the last snapshot")
        self.log_seq = Gauge("larimar_memory_log_sequence", description="last applied edit-log sequence number")
        self.damaged = Gauge(
            "larimar_memories_damaged",
            description="memories unavailable after a damaged log "
            "entry or snapshot file (python -m larimar.serving.repair)",
        )
        self.commit_steps = Durations(
            "larimar_memory_commit",
            "a log entry's commit: persist (entry written and fsynced), apply (the memory updated); "
            "op: the entry's (write, forget, create, delete, import)",
            ("step", "op"),
        )
        self.batch_size = Histogram(
            "larimar_memory_write_batch_size",
            description="write requests per batch",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        self._update_gauges()

    def _update_gauges(self) -> None:
        recs = list(self.store.records.values())
        self.memories.set(len(recs))
        fills = [len(r.memory) / r.info.slots for r in recs] or [0.0]
        self.fill.set(max(fills), tags={"stat": "max"})
        self.fill.set(sum(fills) / len(fills), tags={"stat": "mean"})
        self.versions.set(max([r.info.version for r in recs] or [0]))
        self.snapshot_age.set(time.time() - self.store.last_snapshot_time)
        self.log_seq.set(self.store.seq)
        self.damaged.set(len(self.store.damaged))

    async def _commit(self, entry: dict):
        t0 = time.perf_counter()
        entry = await asyncio.to_thread(self.store.persist, entry)  # durable before acknowledged
        t1 = time.perf_counter()
        result = self.store.apply(entry)  # synchronous: readers never see half of it
        self.commit_steps.observe(t1 - t0, tags={"step": "persist", "op": entry["op"]})
        self.commit_steps.observe(time.perf_counter() - t1, tags={"step": "apply", "op": entry["op"]})
        if self.store.snapshot_due() and self.snapshotting is None:
            # Serialised here, between two applied entries (consistent); written outside the lock.
            prepared = self.store.prepare_snapshot()
            self.snapshotting = asyncio.create_task(self._write_snapshot(prepared))
        return result

    async def _write_snapshot(self, prepared: dict) -> None:
        try:
            await asyncio.to_thread(self.store.write_snapshot, prepared)
        finally:
            self.snapshotting = None

    async def create(
        self,
        tenant: str,
        name: str,
        slots: int | None,
        keys: str = "linear",
        idempotency_key: str | None = None,
        seed: int = 0,
    ) -> dict:
        async with self.lock:
            try:
                slots = slots or self.store.cfg.default_slots  # hashed as prepare_create hashes it
                earlier = self.store.replay(tenant, idempotency_key, self.store.create_hash(name, slots, keys, seed))
                if earlier is not None and earlier in self.store.records:
                    return {"ok": self._summary(earlier)}
                info = await self._commit(self.store.prepare_create(tenant, name, slots, keys, idempotency_key, seed))
            except (StoreError, ValueError) as err:
                return refusal(err)
            self.edits.inc(tags={"op": "create"})
            self._update_gauges()
            return {"ok": self._summary(info.id)}

    async def import_memory(self, tenant: str, name: str, raw: bytes) -> dict:
        async with self.lock:
            try:
                info = await self._commit(await asyncio.to_thread(self.store.prepare_import, tenant, name, raw))
            except (StoreError, ValueError) as err:
                return refusal(err)
            self.edits.inc(tags={"op": "import"})
            self._update_gauges()
            return {"ok": self._summary(info.id)}

    async def export(self, tenant: str, memory_id: str) -> dict:
        """No lock: like `read`, it runs between two applied entries."""
        try:
            return {"ok": self.store.export(tenant, memory_id)}
        except StoreError as err:
            return refusal(err)

    async def delete(self, tenant: str, memory_id: str) -> dict:
        async with self.lock:
            try:
                await self._commit(self.store.prepare_delete(tenant, memory_id))
            except (StoreError, ValueError) as err:
                return refusal(err)
            self.edits.inc(tags={"op": "delete"})
            self._update_gauges()
            return {"ok": True}

    def _summary(self, memory_id: str) -> dict:
        r = self.store.records[memory_id]
        return {
            "id": r.info.id,
            "name": r.info.name,
            "slots": r.info.slots,
            "keys": r.memory.state.key_kind,
            "version": r.info.version,
            "facts": len(r.memory),
            "created": r.info.created,
        }

    async def health(self) -> dict:
        """What restore found: damaged memories (unavailable until repaired) and store-level problems."""
        return {"damaged": [d.message() for d in self.store.damaged.values()], "problems": list(self.store.problems)}

    async def list_memories(self, tenant: str) -> dict:
        return {"ok": [self._summary(i.id) for i in self.store.list(tenant)]}

    async def inspect(self, tenant: str, memory_id: str) -> dict:
        try:
            r = self.store.get(tenant, memory_id)
        except StoreError as err:
            return refusal(err)
        facts = [
            {"id": f.id, "text": f.text, "prompt": f.prompt, "target": f.target, "subject": f.subject}
            for f in r.memory.facts.values()
        ]
        return {
            "ok": {
                **self._summary(memory_id),
                "stored": facts,
                "log": list(r.events),
                "fill": len(r.memory) / r.info.slots,
            }
        }

    @arrays_in_and_out
    async def write(self, requests: list[tuple[str, str, list[dict], dict, str | None]]) -> list[dict]:
        """Write requests, each (tenant, memory id, facts, their encodings, Idempotency-Key) ->
        {"ok": ...} or {"error"} each, every answer given once its entry is durable. Concurrent
        writes are merged (`_write_batch`), a batch formed whenever the one before it is committed
        (`larimar.serving.batcher.WhenFree`)."""
        return list(await asyncio.gather(*(self._writes(r) for r in requests)))

    async def _write_batch(self, requests: list[tuple[str, str, list[dict], dict, str | None]]) -> list[dict]:
        """Concurrent writes: validated in arrival order, one log entry and one update per memory.
        A request whose Idempotency-Key was already applied gets that first answer back; two in
        one batch share the first's."""
        results: list[dict | None] = [None] * len(requests)
        async with self.lock:
            prepared, owners, pending, first_with_key = [], [], {}, {}
            for i, (tenant, memory_id, facts, enc, idem) in enumerate(requests):
                try:
                    earlier = self.store.replay(tenant, idem, self.store.request_hash(facts))
                    if earlier is not None:
                        results[i] = {"ok": earlier}
                        continue
                    if idem is not None and (tenant, idem) in first_with_key:
                        if first_with_key[(tenant, idem)][1] != self.store.request_hash(facts):
                            raise Conflict(f"Idempotency-Key {idem!r} was already used for a different request")
                        continue  # a retry racing its original: answered with it below
                    entry = self.store.prepare_write(
                        tenant,
                        memory_id,
                        facts,
                        enc["keys"],
                        enc["values"],
                        enc["scope"],
                        pending=pending.get(memory_id, 0),
                        idempotency_key=idem,
                    )
                except (StoreError, ValueError) as err:
                    results[i] = refusal(err)
                    continue
                if idem is not None:
                    first_with_key[(tenant, idem)] = (i, self.store.request_hash(facts))
                pending[memory_id] = pending.get(memory_id, 0) + len(facts)
                prepared.append(entry)
                owners.append(i)
            self.batch_size.observe(len(requests))
            for merged in self.store.merge_writes(prepared):
                mine = [i for i, e in zip(owners, prepared) if e["memory_id"] == merged["memory_id"]]
                for i, res in zip(mine, await self._commit(merged)):
                    results[i] = {"ok": res}
                    self.edits.inc(tags={"op": "write"})
                    self.facts_written.inc(len(res["ids"]))
            for i, (tenant, _, _, _, idem) in enumerate(requests):
                if results[i] is None:  # the racing retry
                    results[i] = results[first_with_key[(tenant, idem)][0]]
            self._update_gauges()
        return results

    async def forget(self, tenant: str, memory_id: str, fact_id: int) -> dict:
        async with self.lock:
            try:
                version = await self._commit(self.store.prepare_forget(tenant, memory_id, fact_id))
            except (StoreError, ValueError) as err:
                return refusal(err)
            self.edits.inc(tags={"op": "forget"})
            self._update_gauges()
            return {"ok": {"forgotten": fact_id, "version": version}}

    @arrays_in_and_out
    async def read(self, tenant: str, memory_id: str, queries: dict, use_scope: bool) -> dict:
        """No lock needed: `apply` runs without awaiting, so a read sees a whole version or the previous one."""
        try:
            z, matches, version = self.store.read(
                tenant,
                memory_id,
                queries["z"],
                queries["sentences"] if use_scope else None,  # None without a scope model: read every query
                queries["owners"],
                queries["texts"],
            )
        except StoreError as err:
            return refusal(err)
        if matches is not None:
            for m in matches:
                self.scope_checks.inc(tags={"outcome": "in_scope" if m.in_scope else "out_of_scope"})
        return {
            "ok": {
                "z": z,
                "version": version,
                "matches": [(m.fact_id, m.similarity, m.in_scope) for m in matches] if matches else None,
            }
        }

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`: it also re-sets the gauges, which Ray 2.60
        stops exporting when they are not set for two export intervals (2 x 10 s), even on an idle actor."""
        self._update_gauges()


# -- HTTP ingress ------------------------------------------------------------------------------------

api = FastAPI(title="Larimar", description="An LLM whose episodic memory you edit at serving time.", version="0.1.0")


def _error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, message, param, code), headers=headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError):
    return _error_response(err.status, err.message, err.param, err.code, headers=err.headers)


@api.exception_handler(StoreError)
async def _store_error(request: Request, err: StoreError):
    return _error_response(err.status, err.message, code=err.code)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException):  # routing: 404 unknown path, 405 wrong method
    return _error_response(err.status_code, str(err.detail), headers=getattr(err, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    e = validation_error(err.errors())
    return _error_response(e.status, e.message, e.param, e.code)


async def presented_key(authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> str | None:
    """The API key from `Authorization: Bearer <key>` (the scheme case-insensitive, as RFC 7235
    says) or `X-API-Key: <key>`; an Authorization header without the Bearer scheme presents none.

    `async def`, as `idempotency`, though neither awaits: FastAPI runs a plain `def` dependency in
    a worker thread (anyio's `run_sync`), and that hop per request (a queue, a condition, GIL
    hand-overs, now and then a new thread) was about a tenth of the ingress's CPU under 32
    writing clients (py-spy, jobs/diagnostics/profile_serve_writes.py)."""
    return x_api_key or bearer(authorization)


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def idempotency(idempotency_key: str | None = Header(None, max_length=255)) -> str | None:
    """The optional Idempotency-Key header of writes (durable with the edit log)."""
    return idempotency_key


def _unwrap(result: dict) -> Any:
    if "error" in result:
        e = result["error"]
        raise ApiError(e["status"], e["message"], e.get("param"), e.get("code"))
    return result["ok"]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(api)
class Ingress:
    def __init__(self, encoder, decoder, memory, settings: dict):
        self.settings = ServeSettings(**settings)
        self.limits: Limits = self.settings.limits
        # Every call to another deployment answers or becomes a 503 with Retry-After
        # (larimar.serving.availability); decoding may take its whole deadline on top.
        wait, retry = self.limits.unavailable_after_s, self.limits.retry_after_s
        self.encoder = Dependency("encoder", encoder, wait, retry)
        self.decoder = Dependency("decoder", decoder, wait + self.limits.deadline_s, retry)
        self.memory = Dependency("memory actor", memory, wait, retry)
        self.app_name = serve.get_replica_context().app_name
        self.keys = ApiKeys(self.settings.api_keys)
        # Concurrent writes make one call to the encoder and one to the memory actor per batch,
        # not one each per request: under load a Serve call cost the ingress, the encoder and the
        # actor more CPU than the encoder's pass over the fact. Two stages, so that the encoder
        # works on the next batch while the actor commits this one. The encoder stage takes at most
        # `write_batch_size` requests: with all 32 clients in one batch, the encoder idled while
        # the actor committed it (edits/s at 32 clients, 16 against 64: 131 vs 83, 93 vs 97, 119
        # vs 101 on the AVX2 machine; same-session pairs). `encode_batches_in_flight` (2) lets a
        # second full batch wait at the encoder, so its next pass does not wait for a round trip.
        self._encodes = WhenFree(
            self._send_encodes, self.settings.write_batch_size, depth=self.settings.encode_batches_in_flight
        )
        self._writes = WhenFree(self._send_writes, 64)
        self.started = time.time()
        self.requests = Counter("larimar_http_requests", description="HTTP requests", tag_keys=("endpoint", "status"))
        self.latency = Histogram(
            "larimar_http_latency_seconds",
            description="HTTP latency per endpoint",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            tag_keys=("endpoint",),
        )
        self.write_stages = Durations(
            "larimar_write_stage",
            "a write request's wait for its encoding (encode: batching, the encoder hop and pass) "
            "and then for its commit (commit: batching, the memory actor hop, persist and apply)",
            ("stage",),
        )
        limits = self.limits
        api.add_middleware(
            RequestGuard,
            tenant_for=self._tenant_from_headers,
            body_limit=lambda path: limits.max_import_bytes if path == "/v1/memories/import" else limits.max_body_bytes,
            bucket=TokenBucket(
                limits.requests_per_second,
                limits.burst,
                {
                    k.tenant: (k.requests_per_second or limits.requests_per_second, k.burst or limits.burst)
                    for k in self.settings.api_keys
                    if k.requests_per_second or k.burst
                },
            ),
        )
        # added last: outermost, so it also counts the guard's refusals
        api.add_middleware(RequestMetrics, requests=self.requests, latency=self.latency)

    def _tenant_from_headers(self, headers: dict[str, str]) -> str | None:
        return self.keys.tenant_for(headers.get("x-api-key") or bearer(headers.get("authorization")))

    def tenant(self, presented: str | None) -> str:
        tenant = self.keys.tenant_for(presented)
        if tenant is None:
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key")
        return tenant

    def _check_text(self, field: str, text: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise ApiError(413, f"{field} has {len(text)} characters; the limit is {self.limits.max_text_chars}", field)
        if not text.strip():
            raise ApiError(422, f"{field} must not be empty", field)

    def _check_tokens(self, max_tokens: int, param: str = "max_tokens") -> None:
        if max_tokens > self.limits.max_tokens:
            raise ApiError(413, f"{param} {max_tokens} exceeds the limit {self.limits.max_tokens}", param)

    # -- health ----------------------------------------------------------------------------------

    async def _deployments_down(self) -> list[str]:
        """This application's deployments with no RUNNING replica, from Serve's controller."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        if app is None:
            return ["the application"]
        down = []
        for name, d in app.deployments.items():
            states = {str(getattr(state, "value", state)): n for state, n in d.replica_states.items()}
            if states.get("RUNNING", 0) < 1:
                down.append(name)
        return sorted(down)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict:
        """ "ready", or "degraded" with the damaged memories (every other memory is served; a
        degraded store stays in rotation); 503 with Retry-After while a deployment has no running
        replica (one being replaced after a crash, as Serve's controller sees it) or the memory
        actor does not answer its lock-free health ping within `readiness_ping_s`. The
        controller's view, not a request through the encoder's and decoder's queues: under load
        such a ping would wait behind real work and flap readiness. The memory actor's ping is
        the exception: it waits behind nothing while the actor lives, and in Serve's queue for
        the whole restore of a replacement, which the controller may not have noticed yet."""
        try:
            down = await asyncio.wait_for(self._deployments_down(), self.limits.readiness_timeout_s)
        except TimeoutError:
            down = ["Serve's controller (no answer)"]
        if down:
            raise ApiError(
                503,
                f"not ready: no running replica of {', '.join(down)} (being replaced)",
                code="unavailable",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
        try:
            health = await self.memory.wait(self.memory.handle.health.remote(), self.limits.readiness_ping_s)
        except ApiError as err:
            raise ApiError(503, f"not ready: {err.message}", code="unavailable", headers=err.headers) from None
        if health["damaged"] or health["problems"]:
            return {"status": "degraded", **health}
        return {"status": "ready"}

    # -- memories --------------------------------------------------------------------------------

    @api.post("/v1/memories", status_code=201, response_model=MemoryOut)
    async def create_memory(
        self,
        body: CreateMemory,
        key: str | None = Depends(presented_key),
        idempotency_key: str | None = Depends(idempotency),
    ):
        tenant = self.tenant(key)
        slots = body.slots or self.settings.default_slots
        return _unwrap(await self.memory.create.remote(tenant, body.name, slots, body.keys, idempotency_key, body.seed))

    @api.post(
        "/v1/memories/import",
        status_code=201,
        response_model=MemoryOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def import_memory(self, request: Request, name: str = "", key: str | None = Depends(presented_key)):
        """A memory file (larimar.memory_file: `EditableMemory.save` in Python, or an export) as a
        new memory. The body is the file's bytes (Content-Type: application/octet-stream)."""
        tenant = self.tenant(key)
        if len(name) > 200:
            raise ApiError(422, "name has more than 200 characters", "name")
        raw = await request.body()  # capped at limits.max_import_bytes by the guard (larimar.serving.guard)
        if not raw:
            raise ApiError(422, "the body must be a memory file (larimar.memory_file)", "body")
        return _unwrap(await self.memory.import_memory.remote(tenant, name, bytes(raw)))

    @api.get(
        "/v1/memories/{memory_id}/export",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def export_memory(self, memory_id: str, key: str | None = Depends(presented_key)):
        """The memory as a memory file: `LarimarEditor.load_memory` or `POST /v1/memories/import` read it."""
        tenant = self.tenant(key)
        raw = _unwrap(await self.memory.export.remote(tenant, memory_id))
        return Response(
            raw,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{memory_id}.larimar.safetensors"'},
        )

    @api.get("/v1/memories", response_model=list[MemoryOut])
    async def list_memories(self, key: str | None = Depends(presented_key)):
        tenant = self.tenant(key)
        return _unwrap(await self.memory.list_memories.remote(tenant))

    @api.get("/v1/memories/{memory_id}", response_model=MemoryDetail)
    async def inspect_memory(self, memory_id: str, key: str | None = Depends(presented_key)):
        tenant = self.tenant(key)
        return _unwrap(await self.memory.inspect.remote(tenant, memory_id))

    @api.delete("/v1/memories/{memory_id}")
    async def delete_memory(self, memory_id: str, key: str | None = Depends(presented_key)) -> dict:
        tenant = self.tenant(key)
        _unwrap(await self.memory.delete.remote(tenant, memory_id))
        return {"deleted": memory_id}

    @api.post("/v1/memories/{memory_id}/facts", response_model=WriteResult)
    async def write_facts(
        self,
        memory_id: str,
        body: WriteFacts,
        key: str | None = Depends(presented_key),
        idempotency_key: str | None = Depends(idempotency),
    ):
        """Idempotency-Key (optional, up to 255 characters): a retry with the same key and body gets the
        first answer instead of writing the facts twice; the same key with another body is a 409."""
        tenant = self.tenant(key)
        if len(body.facts) > self.limits.max_facts_per_request:
            raise ApiError(
                413,
                f"{len(body.facts)} facts in one request; the limit is {self.limits.max_facts_per_request}",
                "facts",
            )
        facts = [f.model_dump() for f in body.facts]
        for i, f in enumerate(facts):
            for key in ("text", "prompt", "target", "subject"):
                if f[key] is not None:
                    self._check_text(f"facts[{i}].{key}", f[key])
        t0 = time.perf_counter()
        enc = await self._encodes(facts)
        t1 = time.perf_counter()
        self.write_stages.observe(t1 - t0, tags={"stage": "encode"})
        if "error" in enc:
            _unwrap(enc)
        written = await self._writes((tenant, memory_id, facts, enc, idempotency_key))
        self.write_stages.observe(time.perf_counter() - t1, tags={"stage": "commit"})
        return _unwrap(written)

    async def _send_encodes(self, requests: list[list[dict]]) -> list[dict]:
        return await self.encoder.encode_facts.remote(requests)

    async def _send_writes(self, requests: list[tuple[str, str, list[dict], dict, str | None]]) -> list[dict]:
        """Answered when every entry of the batch is durable (`MemoryActor.write`); a lost actor is
        a 503 for each request of the batch (`larimar.serving.availability`), none acknowledged."""
        return await self.memory.write.remote(requests)

    @api.delete("/v1/memories/{memory_id}/facts/{fact_id}", response_model=ForgetResult)
    async def forget_fact(
        self,
        memory_id: str,
        fact_id: str = Path(pattern=r"^[0-9]{1,18}$", description="a fact id"),
        key: str | None = Depends(presented_key),
    ):
        """Forget one fact. Its text leaves every response at once and storage at the next snapshot."""
        tenant = self.tenant(key)
        return _unwrap(await self.memory.forget.remote(tenant, memory_id, int(fact_id)))

    # -- queries ---------------------------------------------------------------------------------

    async def _read(self, tenant: str, memory_id: str | None, prompts: list[str], use_scope: bool) -> dict:
        if memory_id is None:  # the plain decoder: nothing to encode
            return {"z": torch.zeros(len(prompts), 1), "version": 0, "matches": None}
        enc = await self.encoder.encode_queries.remote(prompts)
        return _unwrap(await self.memory.read.remote(tenant, memory_id, enc, use_scope))

    @staticmethod
    def _matched(read: dict, i: int) -> tuple[bool, list[Match]]:
        used = bool(read["z"][i].abs().sum() > 0)
        if not read["matches"]:
            return used, []
        fact_id, sim, in_scope = read["matches"][i]
        return used, [Match(fact_id=fact_id, similarity=sim)] if in_scope and fact_id is not None else []

    @api.post("/v1/memories/{memory_id}/generate", response_model=GenerateOut)
    async def generate(self, memory_id: str, body: GenerateIn, key: str | None = Depends(presented_key)):
        tenant = self.tenant(key)
        self._check_text("prompt", body.prompt)
        self._check_tokens(body.max_tokens)
        read = await self._read(tenant, memory_id, [body.prompt], body.use_scope)
        [out] = _unwrap(
            await self.decoder.complete.remote(
                self._decode_request({"prompts": [body.prompt]}, read, body.max_tokens, body.temperature)
            )
        )
        used, matched = self._matched(read, 0)
        return GenerateOut(
            text=out["text"].strip(),
            used_memory=used,
            matched=matched,
            version=read["version"],
            tokens=out["completion_tokens"],
        )

    @api.post("/v1/memories/{memory_id}/score", response_model=ScoreOut)
    async def score(self, memory_id: str, body: ScoreIn, key: str | None = Depends(presented_key)):
        tenant = self.tenant(key)
        self._check_text("prompt", body.prompt)
        if len(body.candidates) > self.limits.max_prompts_per_request:
            raise ApiError(
                413,
                f"{len(body.candidates)} candidates; the limit is {self.limits.max_prompts_per_request}",
                "candidates",
            )
        for i, c in enumerate(body.candidates):
            self._check_text(f"candidates[{i}]", c)
        read = await self._read(tenant, memory_id, [body.prompt], body.use_scope)
        z = read["z"].expand(len(body.candidates), -1)  # scope is decided once per prompt (ROME protocol)
        scores = _unwrap(
            await self.decoder.score.remote(
                {
                    "prompt": body.prompt,
                    "candidates": body.candidates,
                    "z": z,
                    "deadline_s": self.limits.deadline_s,
                    "max_prompt_tokens": self.limits.max_prompt_tokens,
                    "max_candidate_tokens": self.limits.max_candidate_tokens,
                }
            )
        )
        return ScoreOut(
            logprobs=[s[0] for s in scores],
            mean_nll=[s[1] for s in scores],
            used_memory=self._matched(read, 0)[0],
            version=read["version"],
        )

    # -- OpenAI-compatible -----------------------------------------------------------------------

    def _decode_request(
        self,
        what: dict,
        read: dict,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> dict:
        return {
            **what,
            "z": read["z"],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": stop or [],
            "max_prompt_tokens": self.limits.max_prompt_tokens,
            "deadline_s": self.limits.deadline_s,
        }

    @api.get("/v1/models")
    async def list_models(self, key: str | None = Depends(presented_key)) -> dict:
        """The decoder, and each memory this key can read as `<model_name>:<memory_id>`."""
        tenant = self.tenant(key)
        base = self.settings.model_name
        mems = _unwrap(await self.memory.list_memories.remote(tenant))
        return {
            "object": "list",
            "data": [oai.model_card(base, self.started)]
            + [oai.model_card(f"{base}:{m['id']}", m["created"]) for m in mems],
        }

    @api.get("/v1/models/{model}")
    async def get_model(self, model: str, key: str | None = Depends(presented_key)) -> dict:
        tenant = self.tenant(key)
        memory_id = oai.memory_for(model, None, self.settings.model_name)
        if memory_id is None:
            return oai.model_card(model, self.started)
        m = await self.memory.list_memories.remote(tenant)
        created = {x["id"]: x["created"] for x in _unwrap(m)}
        if memory_id not in created:
            raise ApiError(404, f"model {model!r} does not exist", param="model", code="model_not_found")
        return oai.model_card(model, created[memory_id])

    async def _openai(self, body, tenant: str, query: str, what: dict, max_tokens: int, chat: bool):
        """Both OpenAI routes: checks, one memory read, then the whole answer or an SSE stream."""
        body.unsupported()
        memory_id = oai.memory_for(body.model, body.memory_id, self.settings.model_name)
        self._check_tokens(max_tokens, "max_completion_tokens" if chat and body.max_completion_tokens else "max_tokens")
        prompts = what.get("prompts", [query])
        if len(prompts) > self.limits.max_prompts_per_request:
            raise ApiError(413, f"{len(prompts)} prompts; the limit is {self.limits.max_prompts_per_request}", "prompt")
        if body.stream and len(prompts) > 1:
            raise ApiError(400, "stream: true takes one prompt", param="prompt", code="unsupported_parameter")
        read = await self._read(tenant, memory_id, prompts, True)  # once: a concurrent edit cannot change it
        if body.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens ({body.min_tokens}) exceeds max_tokens ({max_tokens})", "min_tokens")
        req = self._decode_request(what, read, max_tokens, body.temperature, body.top_p, body.stops)
        req["min_tokens"] = body.min_tokens
        larimar = {
            "memory_id": memory_id,
            "version": read["version"],
            "used_memory": [self._matched(read, i)[0] for i in range(len(prompts))],
        }
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        if not body.stream:
            outs = _unwrap(await self.decoder.complete.remote(req))
            if chat:
                return oai.chat_body(rid, body.model, outs[0], {**larimar, "used_memory": larimar["used_memory"][0]})
            return oai.completion_body(rid, body.model, outs, larimar)
        events = self.decoder.stream("stream", req)
        prompt_tokens = _unwrap(await events.__anext__())["prompt_tokens"]  # a 4xx or 503 can still be answered here

        async def sse():
            yield oai.sse(oai.chunk(rid, body.model, chat, first=True, extra=larimar))
            try:
                async for event in events:
                    if "text" in event:
                        yield oai.sse(oai.chunk(rid, body.model, chat, text=event["text"]))
                    else:
                        done = event["done"]
                        yield oai.sse(oai.chunk(rid, body.model, chat, finish=done["finish_reason"]))
                        if body.include_usage:
                            usage = oai.usage(prompt_tokens, done["completion_tokens"])
                            yield oai.sse(oai.chunk(rid, body.model, chat, usage_=usage))
            except ApiError as err:  # the decoder replica was lost mid-stream: say so, without [DONE]
                yield oai.sse(error_body(err.status, err.message, err.param, err.code))
                return
            yield oai.sse("[DONE]")

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @api.post("/v1/completions")
    async def completions(self, body: CompletionIn, key: str | None = Depends(presented_key)):
        tenant = self.tenant(key)
        for i, p in enumerate(body.prompts):
            self._check_text("prompt" if isinstance(body.prompt, str) else f"prompt[{i}]", p)
        return await self._openai(body, tenant, body.prompts[0], {"prompts": body.prompts}, body.max_tokens, chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionIn, key: str | None = Depends(presented_key)):
        """The conversation through the chat template; the memory is read with the last user turn."""
        tenant = self.tenant(key)
        for i, m in enumerate(body.messages):
            self._check_text(f"messages[{i}].content", m.text)
        query = body.query()
        return await self._openai(
            body, tenant, query, {"messages": body.template_messages()}, body.token_budget(16), chat=True
        )


# -- application builder -----------------------------------------------------------------------------


def build(args: dict):
    """`serve run larimar.serving.app:build model=... [storage=...] [config=settings.yaml]` or a Serve config's args."""
    settings = load_settings(args)
    cfg = LarimarModel.read_config(settings.model)
    store = StoreConfig(
        storage=settings.storage,
        latent_dim=cfg.memory.latent_dim,
        value_dim=LarimarModel.read_value_dim(settings.model),
        snapshot_every=settings.snapshot_every,
        default_slots=settings.default_slots or cfg.memory.slots,
        scope_threshold=settings.scope_threshold,
        subject_threshold=settings.subject_threshold,
        readout=cfg.readout,
        encoder=cfg.encoder,
        scope_model=settings.scope_model,
        max_bytes_per_tenant=settings.max_bytes_per_tenant,
        max_events=settings.max_events,
    )
    decoder = Decoder.options(
        autoscaling_config={
            "min_replicas": settings.decoder_replicas,
            "max_replicas": settings.decoder_max_replicas,
            "target_ongoing_requests": 2,
        },
        ray_actor_options={"num_cpus": 0.5, "num_gpus": settings.decoder_gpus},
        health_check_period_s=settings.health_check_period_s,
    ).bind(
        settings.model,
        settings.decoder_device,
        settings.torch_threads,
        settings.decoder_dtype,
        settings.decoder_batch_size,
        settings.decoder_batch_wait_s,
    )
    encoder = Encoder.options(
        autoscaling_config={
            "min_replicas": settings.encoder_replicas,
            "max_replicas": settings.encoder_max_replicas,
            "target_ongoing_requests": 8,
        },
        health_check_period_s=settings.health_check_period_s,
    ).bind(
        settings.model,
        settings.scope_model,
        settings.torch_threads,
        settings.encoder_precision,
        settings.encoder_compile,
        settings.encoder_workers,
    )
    memory = MemoryActor.options(health_check_period_s=settings.health_check_period_s)
    return Ingress.options(health_check_period_s=settings.health_check_period_s).bind(
        encoder,
        decoder,
        memory.bind({k: getattr(store, k) for k in store.__dataclass_fields__}),
        settings.model_dump(mode="json"),
    )
