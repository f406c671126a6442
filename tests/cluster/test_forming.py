"""Streams, consumers and buckets made with three replicas on a cluster that is still forming:
the scheduler's start (`ensure_topology_when_up`) waits while the nodes have no meta leader,
instead of exiting, and makes everything R3 once they elect one."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dockyard.bus import connect, jetstream, names
from dockyard.bus.topology import ensure_topology_when_up
from tests.cluster.conftest import why_not
from tests.support.cluster import NODES, formed, nats_nodes_on_hosts

pytestmark = pytest.mark.timeout(180)


async def test_topology_waits_for_a_forming_cluster_then_is_made_with_three_replicas(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    caplog.set_level(logging.WARNING, logger="dockyard.bus.topology")
    async with nats_nodes_on_hosts() as nodes:
        first = nodes[NODES[0]]
        await first.start()  # alone: JetStream is on, but one node of three elects no leader
        nc = await connect(first.url, "test forming")
        try:
            js = jetstream(nc)
            making = asyncio.create_task(ensure_topology_when_up(js, replicas=3, lease_s=6.0))
            await asyncio.sleep(8)  # past one request's timeout (5 s): asked at least twice
            assert not making.done(), making
            assert any("topology.waiting" in r.getMessage() for r in caplog.records)
            await asyncio.gather(*(nodes[n].start() for n in NODES[1:]))
            await formed(nodes)
            deployment = await asyncio.wait_for(making, 60)
            assert deployment
            for stream in (names.EVENTS_STREAM, names.REPORTS_STREAM, names.LOGS_STREAM):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, stream
        finally:
            await nc.close()
