"""TLS to NATS (DOCKYARD_NATS_TLS_CA, tls:// URLs) and mutual TLS (_CERT, _KEY), with
certificates made here: the server is verified, a wrong CA is refused, a server that offers no
TLS is refused when TLS was asked for, and a client without a certificate is refused by a
server that verifies them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dockyard.bus import close, connect
from dockyard.bus.connection import CredentialsUnusable, Security
from dockyard.embedded import EmbeddedNats
from dockyard.embedded.nats import NatsTls
from tests.support.secured_nats import secured_nats
from tests.support.tls import Authority


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_nats(
    authority: Authority, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EmbeddedNats]:
    pair = authority.server("nats-tls")
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-tls"), tls=NatsTls(pair.cert, pair.key))
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mtls_nats(
    authority: Authority, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EmbeddedNats]:
    pair = authority.server("nats-mtls")
    tls = NatsTls(pair.cert, pair.key, ca=authority.ca, verify=True)
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-mtls"), tls=tls)
    await server.start()
    yield server
    await server.stop()


async def test_tls_with_our_ca_verifies_the_server(
    tls_nats: EmbeddedNats, authority: Authority
) -> None:
    nc = await connect(tls_nats.url, "tls", security=Security(tls_ca=authority.ca), timeout_s=10)
    try:
        await nc.flush()
        assert nc._server_info["tls_required"]
    finally:
        await close(nc)


async def test_a_ca_bundle_turns_tls_on_for_a_nats_url(
    tls_nats: EmbeddedNats, authority: Authority
) -> None:
    url = tls_nats.url.replace("tls://", "nats://")
    nc = await connect(url, "tls", security=Security(tls_ca=authority.ca), timeout_s=10)
    await close(nc)


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_nats: EmbeddedNats, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path / "other-ca", name="Someone else's CA")
    with pytest.raises(CredentialsUnusable, match="certificate"):
        await asyncio.wait_for(
            connect(tls_nats.url, "tls", security=Security(tls_ca=stranger.ca)), 15
        )


async def test_without_a_ca_the_system_store_does_not_trust_a_private_ca(
    tls_nats: EmbeddedNats,
) -> None:
    with pytest.raises(CredentialsUnusable):
        await asyncio.wait_for(connect(tls_nats.url, "tls"), 15)


async def test_asking_for_tls_from_a_server_without_it_is_refused(
    nats_url: str, authority: Authority
) -> None:
    with pytest.raises(CredentialsUnusable, match="does not offer TLS"):
        await asyncio.wait_for(connect(nats_url, "tls", security=Security(tls_ca=authority.ca)), 15)


async def test_mutual_tls_with_a_client_certificate(
    mtls_nats: EmbeddedNats, authority: Authority
) -> None:
    pair = authority.client("orchestrator-host")
    security = Security(tls_ca=authority.ca, tls_cert=pair.cert, tls_key=pair.key)
    nc = await connect(mtls_nats.url, "mtls", security=security, timeout_s=10)
    try:
        await nc.flush()
    finally:
        await close(nc)


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_nats: EmbeddedNats, authority: Authority
) -> None:
    with pytest.raises(CredentialsUnusable, match=r"(?i)certificate required"):
        await connect(mtls_nats.url, "mtls", security=Security(tls_ca=authority.ca), timeout_s=10)


async def test_tls_and_credentials_together(authority: Authority, tmp_path: Path) -> None:
    async with secured_nats(tmp_path) as plain:
        pass  # only for its credentials directory
    pair = authority.server("nats-both")
    server = EmbeddedNats(
        tmp_path / "both", tls=NatsTls(pair.cert, pair.key), auth=plain.identities.server_config()
    )
    async with server:
        creds = plain.identities.mint("scheduler")
        nc = await connect(
            server.url, "both", security=Security(creds=creds, tls_ca=authority.ca), timeout_s=10
        )
        await close(nc)
        with pytest.raises(CredentialsUnusable):
            await asyncio.wait_for(
                connect(server.url, "both", security=Security(tls_ca=authority.ca)), 15
            )
