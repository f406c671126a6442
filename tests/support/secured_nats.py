"""A NATS that requires credentials (decentralized JWT, as `dockyard up` runs it), and clients
that record the permission violations the server sends them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from dockyard.bus.connection import Security, connect_options
from dockyard.bus.permissions import Role
from dockyard.embedded.nats import EmbeddedNats, NatsTls
from dockyard.stack.nats_credentials import NatsCredentials


@dataclass
class SecuredNats:
    server: EmbeddedNats
    identities: NatsCredentials

    @property
    def url(self) -> str:
        return self.server.url

    def creds(
        self, role: Role, name: str | None = None, queues: Sequence[str] = ("default",)
    ) -> Path:
        return self.identities.mint(role, name, queues=queues)


@contextlib.asynccontextmanager
async def secured_nats(base: Path, tls: NatsTls | None = None) -> AsyncIterator[SecuredNats]:
    identities = NatsCredentials(base / "credentials")
    identities.ensure()
    server = EmbeddedNats(base / "nats", auth=identities.server_config(), tls=tls)
    await server.start()
    try:
        yield SecuredNats(server, identities)
    finally:
        await server.stop()


@dataclass
class Watched:
    """A raw nats-py client and the errors the server sent it."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    async def refused(self, subject: str, within_s: float = 3.0) -> bool:
        """Whether the server refused something on `subject` (a permissions violation)."""
        want = subject.lower()
        async with asyncio.timeout(within_s):
            while not any("permissions violation" in e and want in e for e in self.errors):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return True

    async def clean(self, settle_s: float = 0.3) -> bool:
        """No violation within `settle_s` after a round trip."""
        await self.nc.flush()
        await asyncio.sleep(settle_s)
        return not [e for e in self.errors if "permissions violation" in e]


@contextlib.asynccontextmanager
async def watched(url: str, creds: Path) -> AsyncIterator[Watched]:
    """A client connected as `creds`, with the inbox prefix its JWT allows (as bus.connect)."""
    options = connect_options(Security(creds=creds), [url])
    client = Watched(nc=NatsClient())

    async def on_error(exc: Exception) -> None:
        client.errors.append(str(exc).lower())

    await client.nc.connect(
        url, error_cb=on_error, allow_reconnect=False, connect_timeout=5, **options
    )
    try:
        yield client
    finally:
        await client.nc.close()


async def delete_streams(url: str, admin: Path) -> None:
    """Every stream (and so every bucket) gone, as the admin identity may."""
    nc = await nats.connect(url, user_credentials=str(admin), allow_reconnect=False)
    try:
        jsm = nc.jsm()
        for info in await jsm.streams_info():
            if info.config.name:
                await jsm.delete_stream(info.config.name)
    finally:
        await nc.close()
