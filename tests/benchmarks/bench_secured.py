"""What the trust boundary costs: the control-plane run of bench_control_plane.py against a
plain NATS and against one with JWT auth and TLS (as `dockyard up` and compose run it: each
service its own user, every connection TLS), interleaved in one run so both see the same
machine. Issue #19's target: within 10 % of plain on throughput and dispatch latency.

Run on demand: `scripts/test -m benchmark tests/benchmarks/bench_secured.py -s`.
Dispatch latency: submit->claimed of jobs submitted one at a time (nothing queued), p50.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.bus import outbox
from dockyard.bus.connection import Security
from dockyard.core import SubmitJob, uuid7
from dockyard.core.spec import JobSpec
from dockyard.embedded import EmbeddedNats
from dockyard.embedded.nats import NatsTls
from dockyard.scheduler import due
from tests.benchmarks.bench_control_plane import _pct, _run_jobs, _submit_to_claimed
from tests.benchmarks.cpu import cpu_seconds
from tests.support.orchestration import REPO, ControlPlane, new_orchestrator_id
from tests.support.secured_nats import SecuredNats, secured_nats
from tests.support.tls import Authority

JOBS = int(os.environ.get("BENCH_JOBS", "500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SINGLES = 30
WARM_UP = 50


@dataclass
class Setup:
    name: str
    url: str
    server_pid: int
    plane_security: Security | None = None
    orchestrator_env: Mapping[str, str] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)
    dispatch_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    # CPU ms per job of the scheduler side, the orchestrator and nats-server: steadier than
    # jobs/s on a machine others share, since it does not count waiting for a core.
    cpu_ms: list[tuple[float, float, float]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _servers(base: Path) -> AsyncIterator[list[Setup]]:
    """Plain and auth+TLS; with BENCH_SPLIT=1 also auth alone and TLS alone, to tell apart
    what each costs."""
    authority = Authority(base / "pki")
    pair = authority.server("nats")
    tls = NatsTls(pair.cert, pair.key)
    async with contextlib.AsyncExitStack() as stack:
        plain = await stack.enter_async_context(_embedded(EmbeddedNats(base / "plain")))
        setups = [Setup("plain", plain.url, _pid(plain), None, {})]
        secured = await stack.enter_async_context(secured_nats(base / "secured", tls=tls))
        setups.append(_with_identities("auth+TLS", secured, authority.ca))
        if os.environ.get("BENCH_SPLIT") == "1":
            auth = await stack.enter_async_context(secured_nats(base / "auth"))
            setups.append(_with_identities("auth", auth, None))
            only_tls = await stack.enter_async_context(
                _embedded(EmbeddedNats(base / "tls", tls=tls))
            )
            ca_env = {"DOCKYARD_NATS_TLS_CA": str(authority.ca)}
            setups.append(
                Setup("TLS", only_tls.url, _pid(only_tls), Security(tls_ca=authority.ca), ca_env)
            )
        yield setups


@contextlib.asynccontextmanager
async def _embedded(server: EmbeddedNats) -> AsyncIterator[EmbeddedNats]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _with_identities(name: str, server: SecuredNats, ca: Path | None) -> Setup:
    orchestrator = new_orchestrator_id()
    env = {
        "DOCKYARD_ORCHESTRATOR_ID": orchestrator,
        "DOCKYARD_NATS_CREDS": str(server.creds("orchestrator", orchestrator)),
    }
    if ca is not None:
        env["DOCKYARD_NATS_TLS_CA"] = str(ca)
    security = Security(creds=server.creds("scheduler"), tls_ca=ca)
    return Setup(name, server.url, _pid(server.server), security, env)


def _pid(server: EmbeddedNats) -> int:
    assert server.pid is not None
    return server.pid


async def _fake_orchestrator(setup: Setup) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DOCKYARD_NATS_URL": setup.url,
        "DOCKYARD_ORCHESTRATOR_ID": new_orchestrator_id(),
        "DOCKYARD_MAX_JOBS": "64",
        **setup.orchestrator_env,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.fake_orchestrator", env=env, cwd=REPO
    )


async def _singles(plane: ControlPlane, spec: JobSpec) -> list[float]:
    """Submit->claimed of jobs submitted one after another, each once the last succeeded."""
    ids = []
    for _ in range(SINGLES):
        job_id = uuid7()
        await plane.batcher.execute(job_id, SubmitJob(tenant="acme", spec=spec))
        await plane.wait_for(job_id, lambda job: job.status == "succeeded", timeout_s=30)
        ids.append(job_id)
    return await _submit_to_claimed(plane, ids)


async def _round(setup: Setup, database_url: str, spec: JobSpec) -> None:
    async with ControlPlane(
        setup.url,
        database_url,
        due_tick_s=due.TICK_S,
        relay_poll_s=outbox.POLL_INTERVAL_S,
        security=setup.plane_security,
    ) as plane:
        orchestrator = await _fake_orchestrator(setup)
        try:
            await _run_jobs(plane, spec, WARM_UP)
            pids = ("self", orchestrator.pid, setup.server_pid)
            before = [cpu_seconds(pid) for pid in pids]
            ids, _, elapsed = await _run_jobs(plane, spec, JOBS)
            used = [cpu_seconds(pid) - was for pid, was in zip(pids, before, strict=True)]
            setup.cpu_ms.append(
                (1000 * used[0] / JOBS, 1000 * used[1] / JOBS, 1000 * used[2] / JOBS)
            )
            setup.rates.append(JOBS / elapsed)
            setup.loaded_ms += await _submit_to_claimed(plane, ids)
            setup.dispatch_ms += await _singles(plane, spec)
        finally:
            orchestrator.terminate()
            await orchestrator.wait()


@pytest.mark.benchmark
@pytest.mark.timeout(900)
async def test_auth_and_tls_cost_against_plain_nats(database_url: str, tmp_path: Path) -> None:
    spec = JobSpec(image="busybox", command=["true"])
    started = time.monotonic()
    async with _servers(tmp_path) as setups:
        for round_number in range(ROUNDS):
            # Interleaved, so all see the machine as it is at the time; the order turns each
            # round, so none is always first (the database and the machine drift in a run).
            turn = round_number % len(setups)
            for setup in setups[turn:] + setups[:turn]:
                await _round(setup, database_url, spec)
    plain = setups[0]
    lines = [f"\nagainst plain NATS, {ROUNDS} rounds of {JOBS} jobs each, interleaved:"]
    for setup in setups:
        lines.append(
            f"  {setup.name:9} {statistics.median(setup.rates):6.0f} jobs/s (median of"
            f" {', '.join(f'{r:.0f}' for r in setup.rates)}); dispatch p50"
            f" {_pct(setup.dispatch_ms, 50):.1f} ms one at a time,"
            f" {_pct(setup.loaded_ms, 50):.1f} ms under load; CPU per job {_cpu(setup):.2f} ms"
            f" ({_cpu(setup, 0):.2f} scheduler side, {_cpu(setup, 1):.2f} orchestrator,"
            f" {_cpu(setup, 2):.2f} nats-server)"
        )
    for setup in setups[1:]:
        throughput = statistics.median(setup.rates) / statistics.median(plain.rates)
        dispatch = _pct(setup.dispatch_ms, 50) / _pct(plain.dispatch_ms, 50)
        lines.append(
            f"  ratio {setup.name}/plain: throughput {throughput:.2f}, dispatch p50"
            f" {dispatch:.2f}, CPU per job {_cpu(setup) / _cpu(plain):.2f}"
        )
    lines.append(
        "  (target for auth+TLS: throughput >= 0.90, dispatch <= 1.10);"
        f" {time.monotonic() - started:.0f} s"
    )
    print("\n".join(lines))


def _cpu(setup: Setup, part: int | None = None) -> float:
    """The median over rounds of CPU ms per job: of one part, or of all three."""
    return statistics.median(sum(c) if part is None else c[part] for c in setup.cpu_ms)
