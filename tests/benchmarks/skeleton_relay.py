"""The least any relay of this architecture must do, for bench_log_relay.py's lower bound.

`python -m tests.benchmarks.skeleton_relay relay NATS_URL SUBJECT` serves one WebSocket
endpoint (it prints `ready PORT`) and forwards every message of SUBJECT, from the start of the
stream, to the connected client as a binary frame, bytes untouched, until an empty message.
`python -m tests.benchmarks.skeleton_relay client WS_URL raw|json` counts the lines it receives
(newlines, or the contract's line objects) and prints one JSON line: lines, and the wall time
of the last frame.

No JSON, no checks, no persistence, no rooms: raw nats-py and raw aiohttp. What this moves per
second through JetStream (the server's own fsync policy) and one WebSocket hop bounds what
any implementation of the log path can reach on the machine.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import msgspec
import nats
from aiohttp import web
from nats.js.api import DeliverPolicy

from dockyard.process import event_loop


async def relay(nats_url: str, subject: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    done = asyncio.Event()

    async def follow(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        while True:
            msg = await sub.next_msg(timeout=60)
            if not msg.data:
                break
            await ws.send_bytes(msg.data)
        await sub.unsubscribe()
        await ws.close()
        done.set()
        return ws

    app = web.Application()
    app.router.add_get("/", follow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"ready {port}", flush=True)
    await done.wait()
    await runner.cleanup()
    await nc.close()


async def client(url: str, form: str) -> None:
    # Raw output ends each line with a newline; contract JSON starts each with its seq.
    marker = b"\n" if form == "raw" else b'{"seq":'
    lines = 0
    last_at = 0.0
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, max_msg_size=64 * 1024 * 1024) as ws,
    ):
        print("ready", flush=True)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
            lines += msg.data.count(marker)
            last_at = time.time()
    print(msgspec.json.encode({"lines": lines, "last_at": last_at}).decode(), flush=True)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "relay":
        event_loop.run(relay(*args))
    else:
        event_loop.run(client(*args))


if __name__ == "__main__":
    main()
