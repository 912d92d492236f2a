"""The ingress's calls to the other deployments: an answer, or a 503 with Retry-After, never a hang.

When a replica dies (a crash, an OOM kill, a node lost), Serve's controller starts a replacement,
which takes seconds (the decoder and encoder load their models, the memory actor restores its
store from the snapshot and the edit log). Meanwhile a call to that deployment either fails at
once (the request was on the dead replica: `RayActorError`; no replica to route to:
`DeploymentUnavailableError`; the queue is full: `BackPressureError`) or waits in the router's
queue. Without this module the first kind reached the client as a bare 500 with a Ray traceback
and the second as a hang. Here both become ``503 Service Unavailable`` with ``Retry-After`` and
the error code ``unavailable``: a client (the OpenAI SDK retries 503s on its own) comes back when
the replacement is up.

Writes stay exactly-once under retries: an edit is acknowledged only after its log entry is
durable, so a 503 means "not acknowledged"; the entry may still have reached the log, which is
why a retry should carry the same ``Idempotency-Key`` (the store then answers the first result
instead of writing the facts twice).

A call that raises anything else (a bug in a deployment: `RayTaskError`) is not masked: it is
answered 500 as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from larimar.serving.errors import ApiError
from larimar.serving.wire import pack, unpack

# A replica that died or is not (yet) there: retrying later can succeed.
UNAVAILABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)


def unavailable(name: str, why: str, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        f"the {name} is unavailable ({why}); retry after {retry_after_s} s"
        + (" with the same Idempotency-Key" if name == "memory actor" else ""),
        code="unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


class Dependency:
    """A Serve deployment handle whose calls answer within `timeout_s` or raise a 503 `ApiError`.

    ``await dep.method.remote(*args)`` reads as the handle's own call; `stream` wraps a streaming
    method (``handle.options(stream=True)``), each item under the same timeout. Tensors go out
    and come back as numpy arrays (`larimar.serving.wire`; the methods called unpack and pack
    them with `wire.arrays_in_and_out`).
    """

    def __init__(self, name: str, handle, timeout_s: float, retry_after_s: int):
        self.name, self.handle, self.timeout_s, self.retry_after_s = name, handle, timeout_s, retry_after_s

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    async def wait(self, response, timeout_s: float | None = None) -> Any:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return unpack(await asyncio.wait_for(_awaited(response), timeout_s))
        except TimeoutError:
            response.cancel()  # the replica stops working on it, if it ever got it
            raise unavailable(self.name, f"no answer within {timeout_s:g} s", self.retry_after_s) from None
        except UNAVAILABLE as err:
            raise unavailable(self.name, type(err).__name__, self.retry_after_s) from None

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """The items of a streaming method; a replica lost mid-stream raises the 503 `ApiError`."""
        gen = getattr(self.handle.options(stream=True), method).remote(*pack(args))
        while True:
            try:
                item = await asyncio.wait_for(gen.__anext__(), self.timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                gen.cancel()
                raise unavailable(self.name, f"no token within {self.timeout_s:g} s", self.retry_after_s) from None
            except UNAVAILABLE as err:
                raise unavailable(self.name, type(err).__name__, self.retry_after_s) from None
            yield unpack(item)


async def _awaited(response) -> Any:
    return await response


class _Method:
    def __init__(self, dep: Dependency, method: str):
        self.dep, self.method = dep, method

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        return await self.dep.wait(getattr(self.dep.handle, self.method).remote(*pack(args), **pack(kwargs)))
