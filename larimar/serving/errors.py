"""The API's one error shape: OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Every route answers errors this way (the memory routes too), so an OpenAI client raises its typed
exceptions (`openai.NotFoundError`, `openai.BadRequestError`, ...) with our message, and a curl
user sees the field that is wrong in `param`. Validation errors name the field and never echo the
request body back (a 2,000-character fact or a 100 kB prompt would come back in the 422).
"""

from __future__ import annotations

from typing import Any

# OpenAI's `type` per status class; the client maps statuses to exception classes itself.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error the API answers with `status`; `param` is the offending field, `code` a stable id."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers if headers is not None else ({"Retry-After": "60"} if status == 429 else None)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def refusal(err: Exception) -> dict:
    """A refusal as plain data: deployments answer it instead of raising (it crosses Serve calls as
    a dict), the ingress turns it back into an `ApiError`. An error with an HTTP `status` (an
    `ApiError`, the store's errors) keeps it; any other (a `ValueError` from a check) is a 422."""
    status = getattr(err, "status", None)
    return {
        "error": {
            "status": status if isinstance(status, int) else 422,
            "message": getattr(err, "message", str(err)),
            "param": getattr(err, "param", None),
            "code": getattr(err, "code", None),
        }
    }


def _loc(loc: tuple | list) -> str:
    """pydantic's ('body', 'facts', 0, 'text') -> 'facts[0].text'."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's RequestValidationError list -> one 422 naming every field, without the input values."""
    parts, params = [], []
    for e in errors[:10]:
        where = _loc(e.get("loc", ()))
        msg = str(e.get("msg", "invalid value"))
        if e.get("type") == "json_invalid":
            where, msg = "body", "the request body is not valid JSON"
        params.append(where)
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return ApiError(422, "; ".join(parts) + more, param=params[0] if params else None, code="invalid_value")
