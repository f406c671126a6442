"""/v1/schedules: create, list, delete. Another tenant's schedule is 404, as for jobs."""

from __future__ import annotations

import msgspec
from aiohttp import web

from dockyard.core.registries import check_images
from dockyard.core.tenant_limits import check_tenant_spec
from dockyard.scheduler.context import ctx_of
from dockyard.scheduler.jobs_api import json_response, parse_json_object, read_body
from dockyard.scheduler.schedule_store import ScheduleExists
from dockyard.scheduler.schedules import ScheduleName, parse_schedule, view
from dockyard.scheduler.secret_sealing import sealed_for_schedule
from dockyard.web.auth import ADMIN
from dockyard.web.errors import ApiError, not_found


async def create(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    body = await read_body(request)
    parse_json_object(body)
    schedule = parse_schedule(body, tenant, ctx.clock(), ctx.bounds)
    check_images(schedule.job, ctx.registries, prefix="job.")
    check_tenant_spec(schedule.job, ctx.tenants.of(tenant), prefix="job.")
    sealed = sealed_for_schedule(schedule.job, ctx.secrets, tenant, schedule.name)
    schedule = msgspec.structs.replace(schedule, job=sealed)
    try:
        await ctx.schedules.create(schedule)
    except ScheduleExists:
        raise ApiError(
            409,
            "schedule_exists",
            f"a schedule named {schedule.name!r} exists",
            {"name": schedule.name},
        ) from None
    return json_response(view(schedule), 201)


async def listing(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    schedules = await ctx.schedules.listing(None if tenant == ADMIN else tenant)
    return json_response({"schedules": [view(s) for s in schedules]})


async def delete(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = ctx.tokens.authenticate(request)
    name = request.match_info["name"]
    # A name no schedule can have is unknown, as a malformed job id is; never looked up.
    if not _is_schedule_name(name) or not await ctx.schedules.delete(tenant, name):
        raise not_found("schedule", name)
    return web.Response(status=204)


def _is_schedule_name(name: str) -> bool:
    try:
        msgspec.convert(name, ScheduleName)
    except msgspec.ValidationError:
        return False
    return True


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/schedules", create),
        web.get("/v1/schedules", listing),
        web.delete("/v1/schedules/{name}", delete),
    ]
