"""web.access: the access record of a request whose client went away, or that was redirected."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dockyard.web.access import CLIENT_GONE, access_middleware

pytestmark = pytest.mark.unit


async def _run(
    handler: object, raised: type[BaseException], caplog: pytest.LogCaptureFixture
) -> logging.LogRecord:
    middleware = access_middleware()
    request = make_mocked_request("GET", "/v1/jobs?token=abc&after=2")
    with caplog.at_level(logging.DEBUG, "dockyard.access"), pytest.raises(raised):
        await middleware(request, handler)  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.name == "dockyard.access"]
    return record


async def test_a_client_gone_before_the_answer_is_recorded_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise asyncio.CancelledError

    record = await _run(handler, asyncio.CancelledError, caplog)
    assert record.status == CLIENT_GONE  # type: ignore[attr-defined]
    assert record.query == "token=***&after=2"  # type: ignore[attr-defined]
    assert "abc" not in record.getMessage()


async def test_a_redirect_raised_past_the_error_middleware_keeps_its_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    record = await _run(handler, web.HTTPFound, caplog)
    assert record.status == 302  # type: ignore[attr-defined]
