"""The cluster tests' one cluster (tests/support/cluster.py), shared by the module's tests:
each leaves it whole (every node and service running, every host plugged in, no rule), and
the fixture repairs what a failed test left before the next one uses it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.cluster import Cluster, running_cluster
from tests.support.hosts import namespaces


def why_not() -> str | None:
    """Why this machine cannot make hosts, or None: root and iproute2's `ip netns` needed."""
    if os.geteuid() != 0:
        return "the cluster tests make network namespaces, which takes root"
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        return "the cluster tests need iproute2 (ip netns) and iptables"
    try:
        namespaces()
    except Exception as error:  # no netns support in this kernel or container
        return f"ip netns does not work here: {error}"
    return None


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def whole_cluster() -> AsyncIterator[Cluster]:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    async with running_cluster() as cluster:
        yield cluster


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(whole_cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster, whole: what an earlier test left broken is put back first."""
    await whole_cluster.repair()
    yield whole_cluster
    await whole_cluster.repair()
