"""Following a log over a WebSocket that drops: the client resumes with `after=<last seq>` and
shows every line once; a refused handshake is one clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dockyard.client import ClientError, Target, follow_log


def line(seq: int) -> dict[str, Any]:
    return {"seq": seq, "stream": "stdout", "text": f"line {seq}", "at": "t", "attempt": 1}


async def test_follow_resumes_after_a_dropped_connection_without_gap_or_repeat() -> None:
    seen_after: list[str] = []
    seen_auth: list[str | None] = []

    async def logs_ws(request: web.Request) -> web.WebSocketResponse:
        seen_after.append(request.query["after"])
        seen_auth.append(request.headers.get("Authorization"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if len(seen_after) == 1:
            await ws.send_str(json.dumps({"type": "lines", "lines": [line(1), line(2)]}))
            await ws.close(code=1013)  # "too slow": the client must resume
        else:
            # A server may repeat what the client already has; the client shows it once.
            await ws.send_str(json.dumps({"type": "lines", "lines": [line(2), line(3)]}))
            end = {"type": "end", "status": "failed", "exit_code": 4, "reason": "exit_code"}
            await ws.send_str(json.dumps(end))
            await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/logs/ws", logs_ws)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        target = Target(api_url=url, logs_url=url, token="tok")
        lines: list[dict[str, Any]] = []
        end = await follow_log(target, "job-1", lines.append)
    assert [entry["seq"] for entry in lines] == [1, 2, 3]
    assert seen_after == ["0", "2"]
    assert seen_auth == ["Bearer tok", "Bearer tok"]
    assert (end.status, end.exit_code) == ("failed", 4)


@pytest.mark.parametrize(("status", "words"), [(404, "no job job-1"), (401, "401")])
async def test_follow_refused_handshake_is_one_error(status: int, words: str) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=status)

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/logs/ws", refuse)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        with pytest.raises(ClientError, match=words):
            await follow_log(Target(api_url=url, logs_url=url, token=None), "job-1", print)
