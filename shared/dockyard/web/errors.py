"""The contract's error shape, and the middleware that makes every failure one of them.

No traceback ever reaches a user: an unexpected error is logged with its trace and answered
as a 500 with a request id to quote.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from dockyard.core import AlreadyFinished, Rejected, SpecError, StaleAttempt, UnknownJob, uuid7
from dockyard.store.ports import StoreUnavailable

log = logging.getLogger("dockyard.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by a handler to answer with the contract's error document."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {ident!r}", {"id": ident})


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field or 'body'}: {message}", {"field": field})


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return web.Response(
        status=error.status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=headers,
    )


def _from_core(error: Exception) -> ApiError:
    if isinstance(error, SpecError):
        answer = invalid(error.field, error.message)
        answer.details = {**error.details, **answer.details}
        return answer
    if isinstance(error, UnknownJob):
        return not_found("job", error.job_id)
    if isinstance(error, AlreadyFinished):
        return ApiError(409, "already_finished", error.message, {"status": error.status})
    if isinstance(error, StaleAttempt | Rejected):
        return ApiError(409, error.code, error.message)
    raise error


# Headers an HTTP error must keep when it is re-rendered in the contract's shape.
_KEPT_HEADERS = ("Allow",)


def _http_message(http: web.HTTPException) -> str:
    if http.status == 405:
        return f"{http.reason}: this path answers {http.headers.get('Allow', 'other methods')}"
    return http.reason or "error"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except (SpecError, Rejected) as error:
        return error_response(_from_core(error))
    except StoreUnavailable:
        unavailable = ApiError(503, "unavailable", "the database is not answering; try again")
        return error_response(unavailable, {"Retry-After": "1"})
    except web.HTTPException as http:
        if http.status < 400:
            raise
        code = (http.reason or "error").lower().replace(" ", "_")
        kept = {k: v for k, v in http.headers.items() if k in _KEPT_HEADERS}
        return error_response(ApiError(http.status, code, _http_message(http)), kept)
    except Exception:
        ref = uuid7()
        log.exception("unhandled error", extra={"request_id": ref, "path": request.path})
        return error_response(
            ApiError(500, "internal", f"something went wrong on our side (ref {ref})", {"ref": ref})
        )
