"""A log client in a process of its own, for bench_log_relay.py.

`python -m tests.benchmarks.log_relay_client WS_BASE JOB_ID TOKEN [--latency]` follows the
job's log over WebSocket from the start to the `end` frame, resuming with `after=` when the
relay closes it as too slow (1013), as the contract asks of clients; it checks that every seq
follows the previous one and prints one JSON line: lines, the wall time of the first and last
line received, how often it resumed, and with --latency the percentiles of receipt time minus
each line's `at` (when the pump read it). It prints `ready` once connected.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from operator import attrgetter

import aiohttp
import msgspec

from dockyard.process import event_loop


# gc=False: millions of these are made; none can be part of a cycle.
class _Seq(msgspec.Struct, gc=False):
    seq: int


class _Timed(msgspec.Struct, gc=False):
    seq: int
    at: datetime


class _Frame(msgspec.Struct, gc=False):
    type: str
    lines: list[_Seq] = []


class _TimedFrame(msgspec.Struct, gc=False):
    type: str
    lines: list[_Timed] = []


_seq_of = attrgetter("seq")


async def follow(base: str, job_id: str, token: str, latency: bool) -> dict[str, object]:
    decode = msgspec.json.Decoder(_TimedFrame if latency else _Frame).decode
    last = 0
    first_at: float | None = None
    last_at = 0.0
    resumed = 0
    latencies: list[float] = []
    timeout = aiohttp.ClientWSTimeout(ws_close=10)
    headers = {"Authorization": f"Bearer {token}"}
    ended = False
    async with aiohttp.ClientSession() as session:
        while not ended:
            url = f"{base}/v1/jobs/{job_id}/logs/ws?after={last}"
            async with session.ws_connect(
                url,
                headers=headers,
                max_msg_size=64 * 1024 * 1024,
                timeout=timeout,
                decode_text=False,  # msgspec reads the UTF-8 bytes as they came
            ) as ws:
                if not resumed and first_at is None:
                    print("ready", flush=True)
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    now = time.time()
                    frame = decode(msg.data)
                    if frame.type == "end":
                        ended = True
                        break
                    # Every seq follows the previous one (compared in C, not line by line).
                    seqs = list(map(_seq_of, frame.lines))
                    if seqs != list(range(last + 1, last + 1 + len(seqs))):
                        i = next(i for i, seq in enumerate(seqs) if seq != last + 1 + i)
                        raise SystemExit(f"after {last + i} came {seqs[i]}")
                    if seqs:
                        last = seqs[-1]
                        first_at = first_at or now
                        last_at = now
                        if latency:
                            latencies.extend(now - x.at.timestamp() for x in frame.lines)
            if not ended:
                if ws.close_code != 1013:
                    raise SystemExit(f"closed with {ws.close_code} after {last}")
                resumed += 1
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {
        "lines": last,
        "first_at": first_at,
        "last_at": last_at,
        "resumed": resumed,
        "p50_ms": pct(0.50) * 1000,
        "p99_ms": pct(0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else 0.0,
    }


def main() -> None:
    base, job_id, token = sys.argv[1:4]
    result = event_loop.run(follow(base, job_id, token, "--latency" in sys.argv[4:]))
    print(msgspec.json.encode(result).decode(), flush=True)


if __name__ == "__main__":
    main()
