"""The OpenAPI 3.1 document of the scheduler's API, built from the same types the code decodes.

Kept in `schemas/openapi.json` too; a test fails when that copy is stale.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from msgspec import Struct

from dockyard.core.spec import LABEL_KEY, MAX_LABEL_VALUE, QUEUE, TEXT_CHAR, JobSpec, anchored
from dockyard.core.state import Status
from dockyard.core.view import JobView
from dockyard.scheduler.jobs_api import CURSOR_PATTERN
from dockyard.scheduler.schedules import CronText, IntervalS, ScheduleName, ScheduleView


class ErrorBody(Struct):
    code: str
    message: str
    details: dict[str, Any]


class Error(Struct):
    error: ErrorBody


class JobList(Struct):
    jobs: list[JobView]
    next_cursor: str | None


class ScheduleList(Struct):
    schedules: list[ScheduleView]


class ScheduleRequest(Struct):
    """Exactly one of `cron` (5 fields) and `interval_s`."""

    name: ScheduleName
    job: JobSpec
    cron: CronText | None = None
    interval_s: IntervalS | None = None


class HistoryEvent(Struct):
    version: int
    type: str
    at: str
    data: dict[str, Any]


class History(Struct):
    events: list[HistoryEvent]


_REF = "#/components/schemas/{name}"
_ERRORS = {
    "400": "malformed body",
    "401": "missing or bad token",
    "403": "a tenant's token where the admin token is needed",
    "404": "unknown id, or another tenant's",
    "409": "conflict",
    "413": "body over 1 MiB",
    "422": "invalid field (details.field names it)",
}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}}


def _answers(ok: dict[str, tuple[str, str]], errors: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        code: {"description": text, **_json(schema)} for code, (text, schema) in ok.items()
    }
    for code in errors:
        out[code] = {"description": _ERRORS[code], **_json("Error")}
    return out


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
# As the spec's fields, or empty: no filter. `label=key=value` is split at the first `=`.
_QUEUE_FILTER = anchored(f"(?:{QUEUE})?")
_LABEL_FILTER = anchored(f"(?:{LABEL_KEY}={TEXT_CHAR}{{0,{MAX_LABEL_VALUE}}})?")


def _query(name: str, schema: dict[str, Any], explode: bool = False) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if explode:
        param["style"] = "form"
        param["explode"] = True
    return param


def _paths() -> dict[str, Any]:
    statuses = list(get_args(Status))
    return {
        "/v1/jobs": {
            "post": {
                "summary": "Submit a job",
                "operationId": "submitJob",
                "requestBody": {"required": True, **_json("JobSpec")},
                "responses": _answers(
                    {
                        "201": ("created", "JobView"),
                        "200": ("the job with this idempotency key", "JobView"),
                    },
                    ("400", "401", "413", "422"),
                ),
            },
            "get": {
                "summary": "List jobs, newest first",
                "operationId": "listJobs",
                "parameters": [
                    _query("status", {"type": "string", "enum": statuses}),
                    _query("queue", {"type": "string", "pattern": _QUEUE_FILTER}),
                    _query(
                        "label",
                        {"type": "array", "items": {"type": "string", "pattern": _LABEL_FILTER}},
                        True,
                    ),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    _query("cursor", {"type": "string", "pattern": CURSOR_PATTERN}),
                ],
                "responses": _answers({"200": ("a page of jobs", "JobList")}, ("401", "422")),
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job",
                "operationId": "getJob",
                "parameters": [_JOB_ID],
                "responses": _answers({"200": ("the job", "JobView")}, ("401", "404")),
            }
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job",
                "operationId": "cancelJob",
                "parameters": [_JOB_ID],
                "responses": _answers({"202": ("cancelling", "JobView")}, ("401", "404", "409")),
            }
        },
        "/v1/jobs/{job_id}/events": {
            "get": {
                "summary": "A job's history",
                "operationId": "jobEvents",
                "parameters": [_JOB_ID],
                "responses": _answers({"200": ("versions 1..n", "History")}, ("401", "404")),
            }
        },
        "/v1/schedules": {
            "post": {
                "summary": "Create a schedule: one job labelled schedule=<name> per fire time",
                "operationId": "createSchedule",
                "requestBody": {"required": True, **_json("ScheduleRequest")},
                "responses": _answers(
                    {"201": ("created", "ScheduleView")}, ("400", "401", "409", "413", "422")
                ),
            },
            "get": {
                "summary": "List schedules",
                "operationId": "listSchedules",
                "responses": _answers({"200": ("the schedules", "ScheduleList")}, ("401",)),
            },
        },
        "/v1/schedules/{name}": {
            "delete": {
                "summary": "Delete a schedule",
                "operationId": "deleteSchedule",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": msgspec.json.schema(ScheduleName),
                    }
                ],
                "responses": {
                    "204": {"description": "deleted"},
                    **_answers({}, ("401", "404")),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Alive",
                "operationId": "healthz",
                "security": [],
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "NATS and PostgreSQL answer",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "not ready", **_json("Error")},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (the admin token)",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_answers({}, ("401", "403")),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [JobSpec, JobView, Error, JobList, History, ScheduleRequest, ScheduleView, ScheduleList],
        ref_template=_REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dockyard scheduler API", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
