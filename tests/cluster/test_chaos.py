"""Chaos on a cluster across hosts, under a steady run of short jobs and a few long ones
followed live over the WebSocket; after each fault nothing is lost (tests/support/chaos.py).

Issue #21's list, in order: (1) kill -9 the node leading the job-offer stream, back after
10 s; (2) the events stream's leader cut off from the other two nodes for 20 s; (3) an
orchestrator's host cut off from every node for longer than its lease with a job running
there; (4) a rolling restart of the three nodes; (5) kill -9 the scheduler and an
orchestrator at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dockyard.bus import names
from dockyard.client.api import ApiClient
from dockyard.stack.images import ensure_busybox_image
from tests.support.chaos import load_on, verify
from tests.support.cluster import NODES, Cluster, until
from tests.support.hosts import CUT_CHAIN

pytestmark = pytest.mark.timeout(240)

SHORT = 120  # jobs per test; a few hundred over the module
SHORT_OVER_S = 30.0


@pytest.fixture(scope="module")
async def image() -> str:
    return await ensure_busybox_image()


async def test_kill_9_of_the_offer_stream_leader_loses_no_job(cluster: Cluster, image: str) -> None:
    leader = await cluster.stream_leader(names.OFFERS_STREAM)
    async with load_on(cluster, image, "kill-leader") as load:
        await load.submit_long(2, lines=40, every_s=0.5)
        load.submit_short(SHORT, over_s=SHORT_OVER_S)
        await asyncio.sleep(5)
        await cluster.kill_node(leader)
        await asyncio.sleep(10)
        await cluster.start_node(leader)
        await load.wait_done(within_s=150)
        figures = await verify(load)
    new_leader = await cluster.stream_leader(names.OFFERS_STREAM)
    print(f"offers leader {leader} killed; now {new_leader}; {figures}")


@pytest.mark.xfail(
    strict=False,
    reason="known, open (docs/failures.md): after the bounded heartbeat put it passed 5 of 7 "
    "runs; the two failures were a short job's log (a gap in seqs once; once a requeued "
    "attempt's log held only its last line), not yet explained",
)
async def test_events_leader_cut_off_from_the_other_nodes_loses_no_job(
    cluster: Cluster, image: str
) -> None:
    leader = await cluster.stream_leader(names.EVENTS_STREAM)
    hosts = cluster.hosts.hosts
    others = [n for n in NODES if n != leader]
    async with load_on(cluster, image, "minority-leader") as load:
        await load.submit_long(2, lines=50, every_s=0.5)
        load.submit_short(SHORT, over_s=SHORT_OVER_S)
        await asyncio.sleep(5)
        cluster.hosts.cut(hosts[leader], [hosts[n] for n in others])
        cut_at = time.monotonic()
        rules = cluster.hosts.rules(hosts[leader])
        assert rules == [f"-A {CUT_CHAIN} -s {hosts[n].address}/32 -j DROP" for n in others]
        # The majority elects a leader of its own while the old one is cut off.
        elected = await until(
            lambda: _leader_among(cluster, others), 20, "a leader elected by the majority"
        )
        await asyncio.sleep(max(0.0, cut_at + 20 - time.monotonic()))  # cut off for 20 s
        cluster.hosts.heal()
        assert cluster.hosts.rules(hosts[leader]) == []
        await load.wait_done(within_s=150)
        figures = await verify(load)
    print(f"events leader {leader} cut off; the majority elected {elected}; {figures}")


async def _leader_among(cluster: Cluster, nodes: list[str]) -> str | None:
    seen = {await cluster.leader_seen_by(n, names.EVENTS_STREAM) for n in nodes}
    return seen.pop() if len(seen) == 1 and not seen & {None} and seen <= set(nodes) else None


async def test_orchestrator_cut_off_past_its_lease_is_fenced_and_its_job_runs_elsewhere_once(
    cluster: Cluster, image: str
) -> None:
    lease_s = cluster.tuning.lease_s
    async with load_on(cluster, image, "cut-orchestrator") as load:
        [job_id] = await load.submit_long(1, lines=60, every_s=0.5)  # 30 s of output
        load.submit_short(SHORT // 2, over_s=SHORT_OVER_S)
        async with ApiClient(cluster.target) as api:
            first = await until(lambda: _running(api, job_id, 1), 30, "the long job running")
            host = cluster.host_of(first["orchestrator"])
            await asyncio.sleep(2)
            cluster.hosts.unplug(host)
            assert not cluster.hosts.plugged(host)
            # Lost after a lease without heartbeats, requeued, run by another orchestrator.
            second = await until(
                lambda: _running(api, job_id, 2), lease_s + 30, "attempt 2 running elsewhere"
            )
            assert second["orchestrator"] != first["orchestrator"]
            cluster.hosts.plug(host)
            healed = time.monotonic()
            await load.wait_done(within_s=150)
            events = (await api.events(job_id))["events"]
        figures = await verify(load)
        assert load.docker is not None
        stale = load.docker.container_of[(job_id, 1)]
        # Stopped when its host came back, long before its 30 s of output were over.
        died = load.docker.died_at[stale]
        assert died - load.docker.started_at[stale] < 28, "the stale container ran to its end"
        assert died - healed < 20
    attempt_1 = [e["type"] for e in events if e["data"].get("attempt") == 1]
    assert "orchestrator_lost" in attempt_1 and "job_succeeded" not in attempt_1, attempt_1
    orchestrator_log = cluster.services[host.name].log()
    assert f"orchestrator.attempt_superseded job={job_id} attempt=1" in orchestrator_log
    print(f"{host.name} cut off, its job fenced; {figures}")


async def _running(api: ApiClient, job_id: str, attempt: int) -> dict[str, object] | None:
    view = await api.job(job_id)
    ok = view["status"] == "running" and view["attempt"] == attempt
    return view if ok else None


async def test_rolling_restart_of_every_node_loses_no_job(cluster: Cluster, image: str) -> None:
    async with load_on(cluster, image, "rolling") as load:
        await load.submit_long(2, lines=60, every_s=0.5)
        load.submit_short(SHORT, over_s=SHORT_OVER_S)
        for node in NODES:
            await cluster.nodes[node].stop()
            await cluster.start_node(node)
            await cluster.wait_formed()
            await cluster.stream_leader(names.EVENTS_STREAM)  # every replica current again
        await load.wait_done(within_s=150)
        figures = await verify(load)
    print(f"rolling restart; {figures}")


async def test_kill_9_of_the_scheduler_and_an_orchestrator_at_once_loses_no_job(
    cluster: Cluster, image: str
) -> None:
    async with load_on(cluster, image, "kill-services") as load:
        await load.submit_long(2, lines=40, every_s=0.5)
        load.submit_short(SHORT, over_s=SHORT_OVER_S)
        await asyncio.sleep(8)
        scheduler, orchestrator = cluster.services["scheduler"], cluster.services["o1"]
        await asyncio.gather(scheduler.kill(), orchestrator.kill())
        await asyncio.sleep(5)
        scheduler.start()
        orchestrator.start()
        await load.wait_done(within_s=150)
        figures = await verify(load)
    print(f"scheduler and o1 killed; {figures}")
