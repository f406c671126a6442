"""/v1/jobs: submit, read, list, cancel, history. Each handler: parse, one command, answer."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from dockyard.core import Metadata, RequestCancel, SubmitJob, uuid7
from dockyard.core.codec import encode
from dockyard.core.registries import check_images
from dockyard.core.spec import (
    JobSpec,
    LabelKey,
    LabelValue,
    QueueName,
    anchored,
    convert_spec,
    pattern_hint,
)
from dockyard.core.spec_bounds import check_maxima, left_out, with_defaults
from dockyard.core.state import STATUSES
from dockyard.core.tenant_limits import check_tenant_spec
from dockyard.core.view import masked_event
from dockyard.scheduler.context import Context, ctx_of
from dockyard.scheduler.secret_sealing import check_sealable, sealed_for_job
from dockyard.store.ports import DuplicateIdempotencyKey, InvalidCursor, JobView
from dockyard.store.read_model import job_view
from dockyard.telemetry import tracing
from dockyard.web.auth import ADMIN, can_see
from dockyard.web.errors import ApiError, invalid, not_found

MAX_BODY = 1024 * 1024
_STATUSES = frozenset(STATUSES)
_EVENT_COMMON = {"type", "job_id", "at"}
_to_builtins = msgspec.to_builtins
# The list cursor is urlsafe base64 (which, decoding, would skip a newline or a space).
CURSOR_PATTERN = anchored(r"[A-Za-z0-9_-]*={0,2}")
Cursor = Annotated[str, Meta(pattern=CURSOR_PATTERN)]
_BAD_CURSOR = "not a cursor this API gave out"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(data),
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _too_large()
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None


def _too_large() -> ApiError:
    return ApiError(413, "body_too_large", "the request body is over 1 MiB", {"limit": MAX_BODY})


def parse_json_object(body: bytes) -> dict[str, Any]:
    """400 for what is not JSON at all; field-level problems are 422s found later."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_body", f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "malformed_body", "the body must be a JSON object")
    if b"\\u0000" in body:
        field = _nul_path(value, "")
        if field is not None:
            raise invalid(field, "text may not contain NUL characters (\\u0000)")
    return value


def _nul_path(value: object, path: str) -> str | None:
    """Where a NUL character hides: PostgreSQL cannot store one in JSON text."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return child
            if (found := _nul_path(item, child)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_path(item, f"{path}[{index}]")) is not None:
                return found
    return None


async def submit(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    body = await read_body(request)
    written = parse_json_object(body)
    # The operator's defaults go into the stored spec: a later change never alters this job.
    spec = with_defaults(convert_spec(written), left_out(written), ctx.bounds)
    check_maxima(spec, ctx.bounds)
    check_images(spec, ctx.registries)
    check_tenant_spec(spec, ctx.tenants.of(tenant))
    check_sealable(spec, ctx.secrets)
    if spec.idempotency_key is not None:
        existing = await _idempotent(ctx, tenant, spec.idempotency_key)
        if existing is not None:
            return json_response(existing, 200)
    job_id = uuid7()
    spec = sealed_for_job(spec, ctx.secrets, job_id)  # before anything is stored or sent
    # The job's trace begins here (in the caller's, if it sent a traceparent); its events
    # carry it, so every service's spans for the job join it.
    with tracing.start_trace(
        tracing.SCHEDULER,
        "dockyard.submit",
        parent=tracing.message_metadata(request.headers),
        attributes={tracing.JOB: job_id, "dockyard.tenant": tenant},
    ) as span:
        return await _submit(ctx, tenant, job_id, spec, tracing.metadata_of(span))


async def _submit(
    ctx: Context, tenant: str, job_id: str, spec: JobSpec, meta: Metadata
) -> web.Response:
    try:
        outcome = await ctx.execute(job_id, SubmitJob(tenant=tenant, spec=spec), meta=meta)
    except DuplicateIdempotencyKey:
        assert spec.idempotency_key is not None
        existing = await _idempotent(ctx, tenant, spec.idempotency_key)
        if existing is None:
            raise
        return json_response(existing, 200)
    assert outcome.job is not None
    ctx.metrics.submitted(outcome.job.spec.queue)
    return json_response(job_view(outcome.job), 201, {"Location": f"/v1/jobs/{job_id}"})


async def _idempotent(ctx: Context, tenant: str, key: str) -> JobView | None:
    return await ctx.views.find_by_idempotency_key(tenant, key)


async def get_job(request: web.Request) -> web.Response:
    _, view = await visible_job(request)
    return json_response(view)


async def visible_job(request: web.Request) -> tuple[str, JobView]:
    """The caller's tenant and the job named in the path; 404 also for another tenant's."""
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    job_id = _job_id(request)
    view = await ctx.views.get_view(job_id)
    if view is None or not can_see(tenant, view["tenant"]):
        raise not_found("job", job_id)
    return tenant, view


def _job_id(request: web.Request) -> str:
    raw = request.match_info["job_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise not_found("job", raw) from None


async def list_jobs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    filters = _job_filter(request)
    try:
        page = await ctx.views.list_views(None if tenant == ADMIN else tenant, **filters)
    except InvalidCursor:
        raise invalid("cursor", _BAD_CURSOR) from None
    return json_response({"jobs": page.jobs, "next_cursor": page.next_cursor})


def _job_filter(request: web.Request) -> dict[str, Any]:
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in _STATUSES:
        raise invalid("status", f"must be one of {', '.join(sorted(_STATUSES))}")
    limit_text = q.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
        raise invalid("limit", "must be a whole number from 1 to 500")
    queue = q.get("queue") or None
    cursor = q.get("cursor") or None
    if queue is not None:
        _checked("queue", queue, QueueName, pattern_hint("queue", "not a queue name"))
    if cursor is not None:
        _checked("cursor", cursor, Cursor, _BAD_CURSOR)
    return {
        "status": status,
        "queue": queue,
        "labels": _label_filter(q.getall("label", [])),
        "limit": int(limit_text),
        "cursor": cursor,
    }


def _label_filter(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        if not item:
            continue  # `label=` filters nothing, as an empty `queue=` does
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise invalid("label", "labels filter as key=value")
        _checked("label", key, LabelKey, pattern_hint("labels", "not a label key"))
        _checked("label", value, LabelValue, pattern_hint("labels[...]", "not a label value"))
        labels[key] = value
    return labels


def _checked(field: str, value: str, kind: Any, hint: str) -> None:
    """A 422 naming `field` unless `value` is a `kind` (an annotated str of the spec): a query
    or path parameter obeys the grammar of what it stands for (`hint`: that, in words)."""
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as error:
        text = str(error)
        raise invalid(field, hint if "matching regex" in text else text) from None


async def cancel(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant, view = await visible_job(request)
    outcome = await ctx.execute(view["id"], RequestCancel(requested_by=tenant))
    job = outcome.job
    assert job is not None
    return json_response(job_view(job), 202)


async def job_events(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    _, view = await visible_job(request)
    history = await ctx.store.load(view["id"])
    events = []
    for recorded in history:
        data = msgspec.json.decode(encode(masked_event(recorded.event)))
        events.append(
            {
                "version": recorded.version,
                "type": data["type"],
                "at": data["at"],
                "data": {k: v for k, v in data.items() if k not in _EVENT_COMMON},
            }
        )
    return json_response({"events": events})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/jobs", submit),
        web.get("/v1/jobs", list_jobs),
        web.get("/v1/jobs/{job_id}", get_job),
        web.post("/v1/jobs/{job_id}/cancel", cancel),
        web.get("/v1/jobs/{job_id}/events", job_events),
    ]
