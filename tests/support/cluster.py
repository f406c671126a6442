"""A whole Dockyard across hosts (tests/support/hosts.py): three NATS nodes clustered with
authenticated routes and JWT clients (as `dockyard up` runs NATS), PostgreSQL on a host of
its own, the scheduler, log relay and janitor on another, and orchestrators each on its own,
all sharing this machine's Docker engine through its socket.

    n1 n2 n3  .11-.13   nats-server, R3 streams and buckets, sync_interval: always
    db        .20       PostgreSQL (dockyard.embedded; runs as its own unprivileged user)
    cp        .21       scheduler :8700, log relay :8701, janitor
    o1 o2 o3  .31-.33   one orchestrator each

Every service is a real `dockyard <service>` process started with `ip netns exec`, so a
kill -9 of one is a kill of that service, and its view of the network is its host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dockyard.bus import names
from dockyard.bus.connection import Security, connect_options
from dockyard.client.target import Target
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres, NatsCluster
from dockyard.embedded._process import ServerProcess
from dockyard.stack.claim_keys import new_claim_seed, public_key_of
from dockyard.stack.nats_credentials import NatsCredentials
from tests.support.hosts import Host, Hosts
from tests.support.postgres import reachable_tmp_dir

NODES: Final = ("n1", "n2", "n3")
CLIENT_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222
API_PORT, LOGS_PORT = 8700, 8701
TENANT, TOKEN = "acme", "acme-token-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Tuning:
    """Settings turned down so that losses are noticed within a test's few minutes."""

    orchestrators: int = 3
    lease_s: float = 6.0
    max_jobs: int = 4
    janitor_interval_s: float = 2.0


@dataclass
class Service:
    name: str
    command: str
    host: Host
    env: dict[str, str]
    process: ServerProcess

    def start(self) -> None:
        dockyard = str(Path(sys.executable).parent / "dockyard")
        self.process.spawn([dockyard, self.command], env=self.env, netns=self.host.netns)

    async def kill(self) -> None:
        await self.process.kill()

    async def stop(self) -> None:
        await self.process.terminate(signal.SIGTERM, 15.0)

    @property
    def running(self) -> bool:
        return self.process.running

    def log(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    hosts: Hosts
    base: Path
    tuning: Tuning
    identities: NatsCredentials
    nodes: dict[str, EmbeddedNats] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    pg: EmbeddedPostgres | None = None
    claim_seed: Path | None = None

    # --- addresses -----------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        return ",".join(f"nats://{self.hosts.hosts[n].address}:{CLIENT_PORT}" for n in NODES)

    @property
    def target(self) -> Target:
        cp = self.hosts.hosts["cp"].address
        return Target(
            api_url=f"http://{cp}:{API_PORT}", logs_url=f"http://{cp}:{LOGS_PORT}", token=TOKEN
        )

    def monitor(self, node: str) -> str:
        return f"http://{self.hosts.hosts[node].address}:{MONITOR_PORT}"

    def node_of(self, server_name: str) -> str:
        return server_name  # nodes are named as their hosts

    @property
    def orchestrators(self) -> list[str]:
        return [f"o{i + 1}" for i in range(self.tuning.orchestrators)]

    def orchestrator_id(self, host: str) -> str:
        return f"{self.hosts.tag}-{host}"

    # --- NATS ----------------------------------------------------------------------------

    def _node(self, name: str, route_password: str) -> EmbeddedNats:
        host = self.hosts.hosts[name]
        others = [self.hosts.hosts[n].address for n in NODES if n != name]
        cluster = NatsCluster(
            port=ROUTE_PORT,
            routes=tuple(f"nats-route://{a}:{ROUTE_PORT}" for a in others),
            user="route",
            password=route_password,
        )
        return EmbeddedNats(
            self.base / name,
            port=CLIENT_PORT,
            host=host.address,
            monitor_port=MONITOR_PORT,
            auth=self.identities.server_config(),
            server_name=name,
            cluster=cluster,
            netns=host.netns,
        )

    async def jsz(self, node: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.monitor(node)}/jsz") as response,
        ):
            result: dict[str, Any] = await response.json()
            return result

    async def meta_leader(self, nodes: tuple[str, ...] = NODES) -> str | None:
        """The JetStream meta leader that every one of `nodes` agrees on, or None."""
        leaders = set()
        for node in nodes:
            try:
                leaders.add((await self.jsz(node)).get("meta_cluster", {}).get("leader"))
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None
        return leaders.pop() if len(leaders) == 1 and None not in leaders else None

    async def leader_seen_by(self, node: str, stream: str) -> str | None:
        """The leader of `stream` as node `node` knows it (its monitoring port), or None."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"{self.monitor(node)}/jsz?streams=true") as response,
            ):
                jsz = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    leader = (detail.get("cluster") or {}).get("leader")
                    return str(leader) if leader else None
        return None

    async def wait_formed(self, within_s: float = 60.0, nodes: tuple[str, ...] = NODES) -> str:
        return await until(lambda: self.meta_leader(nodes), within_s, "the NATS cluster formed")

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
        """A client of the operator's own identity, from this machine's namespace."""
        creds = self.identities.mint("admin")
        urls = self.nats_url.split(",")
        options = connect_options(Security(creds=creds), urls)
        nc = await nats.connect(urls, connect_timeout=3, max_reconnect_attempts=-1, **options)
        try:
            yield nc, nc.jetstream(timeout=5)
        finally:
            await nc.close()

    async def stream_leader(self, stream: str, within_s: float = 30.0) -> str:
        """The node leading `stream`'s Raft group, once every replica is current."""

        async def leader() -> str | None:
            async with self.admin() as (_, js):
                try:
                    info = await js.stream_info(stream)
                except (TimeoutError, nats.errors.Error):
                    return None
            cluster = info.cluster
            if cluster is None or not cluster.leader:
                return None
            replicas = cluster.replicas or []
            if len(replicas) != len(NODES) - 1 or not all(r.current for r in replicas):
                return None
            return str(cluster.leader)

        return await until(leader, within_s, f"stream {stream} led with all replicas current")

    # --- services ------------------------------------------------------------------------

    def _service_env(self, name: str) -> dict[str, str]:
        cp = self.hosts.hosts["cp"].address
        assert self.pg is not None and self.claim_seed is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "PYTHONUNBUFFERED": "1",
            "DOCKYARD_LOG_FORMAT": "text",
            "DOCKYARD_NATS_URL": self.nats_url,
            "DOCKYARD_NATS_REPLICAS": "3",
            "DOCKYARD_LEASE_S": str(self.tuning.lease_s),
            "DOCKYARD_API_LISTEN": f"{cp}:{API_PORT}",
            "DOCKYARD_LOGS_LISTEN": f"{cp}:{LOGS_PORT}",
        }
        if name in ("scheduler", "log-relay", "janitor"):
            env["DOCKYARD_DATABASE_URL"] = self.pg.url
            env["DOCKYARD_NATS_CREDS"] = str(self.identities.mint(name))  # type: ignore[arg-type]
        if name in ("scheduler", "log-relay"):
            env["DOCKYARD_TOKENS"] = f"{TENANT}:{TOKEN}"
        if name == "scheduler":
            env["DOCKYARD_CLAIM_KEY"] = str(self.claim_seed)
        if name == "janitor":
            env["DOCKYARD_JANITOR_INTERVAL_S"] = str(self.tuning.janitor_interval_s)
        if name.startswith("o"):
            orchestrator = self.orchestrator_id(name)
            creds = self.identities.mint("orchestrator", orchestrator)
            env |= {
                "DOCKYARD_NATS_CREDS": str(creds),
                "DOCKYARD_ORCHESTRATOR_ID": orchestrator,
                "DOCKYARD_MAX_JOBS": str(self.tuning.max_jobs),
                "DOCKYARD_CLAIM_PUBLIC_KEY": public_key_of(self.claim_seed.read_text()),
            }
        return env

    def _service(self, name: str, command: str, host: str) -> Service:
        log = self.base / "logs" / f"{name}.log"
        service = Service(
            name, command, self.hosts.hosts[host], self._service_env(name), ServerProcess(name, log)
        )
        self.services[name] = service
        return service

    async def ready(self, within_s: float = 60.0) -> None:
        """The API and log relay answer /readyz, and every orchestrator heartbeats."""
        urls = [f"{self.target.api_url}/readyz", f"{self.target.logs_url}/readyz"]
        await until(lambda: _all_200(urls), within_s, "the scheduler and log relay ready")
        want = {self.orchestrator_id(o) for o in self.orchestrators}
        await until(
            lambda: self._heartbeats_include(want), within_s, "every orchestrator heartbeating"
        )

    async def heartbeats(self) -> set[str]:
        async with self.admin() as (_, js):
            bucket = await js.key_value(names.HEARTBEATS_BUCKET)
            try:
                return set(await bucket.keys())
            except nats.js.errors.NoKeysError:
                return set()

    async def _heartbeats_include(self, want: set[str]) -> bool:
        try:
            return want <= await self.heartbeats()
        except (TimeoutError, nats.errors.Error):
            return False

    async def deployment(self) -> str:
        async with self.admin() as (_, js):
            bucket = await js.key_value(names.META_BUCKET)
            entry = await bucket.get(names.DEPLOYMENT_KEY)
            return (entry.value or b"").decode()

    def dead(self) -> list[str]:
        """Services and nodes that are not running (a test left them so, or they crashed)."""
        down = [n for n, s in self.services.items() if not s.running]
        return down + [n for n, node in self.nodes.items() if node.pid is None]

    # --- faults and repair ---------------------------------------------------------------

    async def kill_node(self, name: str) -> None:
        await self.nodes[name]._process.kill()

    async def start_node(self, name: str) -> None:
        await self.nodes[name].start()

    def host_of(self, orchestrator_id: str) -> Host:
        return self.hosts.hosts[orchestrator_id.removeprefix(f"{self.hosts.tag}-")]

    async def restart_service(self, name: str) -> None:
        service = self.services[name]
        await service.stop()
        service.start()

    async def repair(self) -> None:
        """Undo whatever a test left: rules removed, hosts plugged in, nodes and services
        started; back once the cluster is formed and every service ready."""
        self.hosts.heal()
        for host in self.hosts.hosts.values():
            self.hosts.plug(host)
        dead = [n for n, node in self.nodes.items() if node.pid is None]
        await asyncio.gather(*(self.start_node(n) for n in dead))
        await self.wait_formed()
        for service in self.services.values():
            if not service.running:
                service.start()
        try:
            await self.ready(within_s=90)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs_tail()}") from None

    def logs_tail(self, lines: int = 30) -> str:
        parts = []
        for name, service in self.services.items():
            tail = "\n".join(service.log().splitlines()[-lines:])
            parts.append(f"--- {name} ---\n{tail}")
        return "\n".join(parts)


async def until(
    check: Callable[[], Awaitable[Any]], within_s: float, what: str, every_s: float = 0.25
) -> Any:
    """The first truthy result of `check`, polled; AssertionError naming `what` after
    `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s:.0f} s: {what}")
        await asyncio.sleep(every_s)


async def _all_200(urls: list[str]) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in urls:
                async with session.get(url) as response:
                    if response.status != 200:
                        return False
    except (aiohttp.ClientError, TimeoutError):
        return False
    return True


@contextlib.asynccontextmanager
async def running_cluster(tuning: Tuning | None = None) -> AsyncIterator[Cluster]:
    """The whole stack up across hosts; everything stopped and removed after, even on a
    failure (processes killed, namespaces deleted, the data dir removed)."""
    tuning = tuning or Tuning()
    hosts = Hosts.make()
    base = reachable_tmp_dir("dockyard-cluster-")
    cluster: Cluster | None = None
    try:
        for i, node in enumerate(NODES):
            hosts.add(node, 11 + i)
        hosts.add("db", 20)
        hosts.add("cp", 21)
        for i in range(tuning.orchestrators):
            hosts.add(f"o{i + 1}", 31 + i)
        identities = NatsCredentials(base / "credentials")
        identities.ensure()
        cluster = Cluster(hosts, base, tuning, identities)
        await _start(cluster)
        yield cluster
    finally:
        if cluster is not None:
            await _stop(cluster)
        hosts.close()
        keep = os.environ.get("DOCKYARD_TEST_CLUSTER_LOGS")  # where to copy the logs to
        if keep:
            shutil.copytree(base / "logs", Path(keep), dirs_exist_ok=True)
            for node in NODES:
                with contextlib.suppress(OSError):
                    shutil.copy(base / node / "nats-server.log", Path(keep) / f"{node}.log")
        shutil.rmtree(base, ignore_errors=True)


async def _start(cluster: Cluster) -> None:
    route_password = secrets.token_urlsafe(16)
    for name in NODES:
        cluster.nodes[name] = cluster._node(name, route_password)
    # All three at once: a node's JetStream waits for its peers before it is ready.
    await asyncio.gather(*(node.start() for node in cluster.nodes.values()))
    await cluster.wait_formed()
    db = cluster.hosts.hosts["db"]
    cluster.pg = EmbeddedPostgres(
        cluster.base / "pg", port=5432, host=db.address, netns=db.netns, fsync=False
    )
    await cluster.pg.start()
    seed = cluster.base / "claim.seed"
    seed.write_text(new_claim_seed())
    seed.chmod(0o600)
    cluster.claim_seed = seed
    cluster._service("scheduler", "scheduler", "cp").start()
    cluster._service("log-relay", "log-relay", "cp").start()
    cluster._service("janitor", "janitor", "cp").start()
    for host in cluster.orchestrators:
        cluster._service(host, "orchestrator", host).start()
    try:
        await cluster.ready(within_s=90)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.logs_tail()}") from None


async def _stop(cluster: Cluster) -> None:
    # Orchestrators first, so that they stop their containers while NATS is still there.
    order = [*cluster.orchestrators, "scheduler", "log-relay", "janitor"]
    for name in order:
        service = cluster.services.get(name)
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()
    for node in cluster.nodes.values():
        with contextlib.suppress(Exception):
            await node.stop()
    if cluster.pg is not None:
        with contextlib.suppress(Exception):
            await cluster.pg.stop()
        await cluster.pg.kill()


@contextlib.asynccontextmanager
async def nats_nodes_on_hosts() -> AsyncIterator[dict[str, EmbeddedNats]]:
    """The three NATS nodes, each on a host of its own, routes between them and no client
    auth (as the single test server runs), not started yet; stopped and removed after."""
    hosts = Hosts.make()
    base = reachable_tmp_dir("dockyard-nats-cluster-")
    nodes: dict[str, EmbeddedNats] = {}
    try:
        for i, node in enumerate(NODES):
            hosts.add(node, 11 + i)
        password = secrets.token_urlsafe(16)
        for name in NODES:
            host = hosts.hosts[name]
            others = [hosts.hosts[n].address for n in NODES if n != name]
            routes = tuple(f"nats-route://{a}:{ROUTE_PORT}" for a in others)
            nodes[name] = EmbeddedNats(
                base / name,
                port=CLIENT_PORT,
                host=host.address,
                monitor_port=MONITOR_PORT,
                server_name=name,
                cluster=NatsCluster(ROUTE_PORT, routes, "route", password),
                netns=host.netns,
            )
        yield nodes
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                await node.stop()
        hosts.close()
        shutil.rmtree(base, ignore_errors=True)


async def formed(nodes: dict[str, EmbeddedNats], within_s: float = 60.0) -> None:
    monitors = [node.monitor_url for node in nodes.values()]
    await until(lambda: _one_meta_leader(monitors), within_s, "the NATS cluster formed")


def urls_of(nodes: dict[str, EmbeddedNats]) -> str:
    return ",".join(node.url for node in nodes.values())


@contextlib.asynccontextmanager
async def nats_cluster_on_hosts() -> AsyncIterator[str]:
    """The three nodes started and formed: their URLs, comma-separated. For the benchmark
    that compares the cluster with one node in the same run."""
    async with nats_nodes_on_hosts() as nodes:
        # All three at once: a node's JetStream waits for its peers before it is ready.
        await asyncio.gather(*(node.start() for node in nodes.values()))
        await formed(nodes)
        yield urls_of(nodes)


async def _one_meta_leader(monitors: list[str]) -> bool:
    leaders = set()
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in monitors:
                async with session.get(f"{url}/jsz") as response:
                    leaders.add((await response.json()).get("meta_cluster", {}).get("leader"))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return len(leaders) == 1 and None not in leaders


def dump(value: object) -> str:
    return json.dumps(value, indent=1, default=str)[:4000]
