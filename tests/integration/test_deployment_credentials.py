"""`dockyard credentials init`, compose's credentials: one directory per service with only what
it needs, kept across runs; and the servers and clients compose.yaml wires up with them really
talk — NATS with deploy/nats/secured.conf (JWT auth and TLS), PostgreSQL with verify-full."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from dockyard.bus import close, connect
from dockyard.bus.connection import CredentialsUnusable, Security
from dockyard.embedded import nats_server_binary
from dockyard.embedded.postgres import DEFAULT_OS_USER, EmbeddedPostgres
from dockyard.stack.deployment_credentials import DeploymentCredentials, Layout
from tests.support.postgres import reachable_tmp_dir

ROOT = Path(__file__).resolve().parents[2]
SECURED_CONF = ROOT / "deploy" / "nats" / "secured.conf"
DEBIAN_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))

SERVICES = {
    "nats": {"auth.conf", "tls.conf", "server.pem", "server-key.pem"},
    "postgres": {"server.pem", "server-key.pem"},
    "migrate": {"ca.pem"},
    "scheduler": {"scheduler.creds", "ca.pem", "claim.seed", "secrets.key"},
    "log-relay": {"log-relay.creds", "ca.pem"},
    "janitor": {"janitor.creds", "ca.pem"},
    "orchestrator-compose-1": {
        "orchestrator-compose-1.creds", "ca.pem", "claim.pub", "secrets.key",
    },
    "orchestrator-compose-2": {
        "orchestrator-compose-2.creds", "ca.pem", "claim.pub", "secrets.key",
    },
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_each_service_gets_a_directory_of_its_own_with_only_what_it_needs(tmp_path: Path) -> None:
    written = DeploymentCredentials(tmp_path, Layout()).ensure()
    assert set(written) == set(SERVICES)
    for service, files in SERVICES.items():
        directory = tmp_path / service
        assert {p.name for p in directory.iterdir()} == files, service
        assert directory.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in directory.iterdir()), service
    # The keys to everything stay in trust/, which no service mounts.
    for secret in ("operator.nk", "account.nk", "ca-key.pem"):
        assert (tmp_path / "trust" / secret).is_file()
        assert not any((tmp_path / service / secret).exists() for service in SERVICES)
    assert "SN" not in (tmp_path / "orchestrator-compose-1" / "claim.pub").read_text()[:2]


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="handing files to others takes root")
def test_each_directory_belongs_to_the_user_that_reads_it(tmp_path: Path) -> None:
    DeploymentCredentials(tmp_path, Layout()).ensure()
    owners = {service: (tmp_path / service).stat().st_uid for service in SERVICES}
    assert owners["scheduler"] == owners["log-relay"] == owners["migrate"] == 10001
    assert owners["postgres"] == 999
    # Root without CAP_DAC_OVERRIDE (compose drops it) reads only what root owns.
    assert owners["janitor"] == owners["nats"] == owners["orchestrator-compose-1"] == 0


def test_a_second_run_keeps_keys_and_certificates_and_adds_orchestrators(tmp_path: Path) -> None:
    DeploymentCredentials(tmp_path, Layout()).ensure()
    kept = ("trust/account.nk", "trust/ca.pem", "scheduler/claim.seed", "scheduler/secrets.key")
    before = {name: (tmp_path / name).read_bytes() for name in kept}
    creds_before = (tmp_path / "scheduler" / "scheduler.creds").read_bytes()
    written = DeploymentCredentials(tmp_path, Layout(orchestrators=3)).ensure()
    assert "orchestrator-compose-3" in written
    assert {name: (tmp_path / name).read_bytes() for name in kept} == before
    # A fresh user, its permissions as this version's code has them; the same account signs.
    assert (tmp_path / "scheduler" / "scheduler.creds").read_bytes() != creds_before
    secrets = {(tmp_path / d / "secrets.key").read_bytes() for d in ("scheduler",
               "orchestrator-compose-1", "orchestrator-compose-3")}  # fmt: skip
    assert len(secrets) == 1


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nats-server on deploy/nats/secured.conf, laid out as compose mounts it: a nats.conf of
    ours beside it (loopback, a temporary store), credentials/ made by the init."""
    etc = tmp_path / "etc"
    layout = Layout(nats_mount=str(etc / "credentials"))
    DeploymentCredentials(tmp_path / "credentials", layout).ensure()
    etc.mkdir()
    shutil.copy(SECURED_CONF, etc / "secured.conf")
    (etc / "credentials").symlink_to(tmp_path / "credentials" / "nats")
    port = free_port()
    (etc / "nats.conf").write_text(
        f"listen: 127.0.0.1:{port}\nmax_payload: 8MB\n"
        f'jetstream {{\n  store_dir: "{tmp_path / "store"}"\n  sync_interval: always\n}}\n'
    )
    checked = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(etc / "secured.conf")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(etc / "secured.conf")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"tls://localhost:{port}", tmp_path / "credentials"
    finally:
        server.kill()
        server.wait()
        log.close()


@pytest.mark.integration
async def test_compose_nats_takes_each_services_user_over_tls_and_nothing_else(
    secured_nats: tuple[str, Path],
) -> None:
    url, creds = secured_nats
    ca = creds / "scheduler" / "ca.pem"
    for service, file in (
        ("scheduler", "scheduler.creds"),
        ("log-relay", "log-relay.creds"),
        ("janitor", "janitor.creds"),
        ("orchestrator-compose-2", "orchestrator-compose-2.creds"),
    ):
        security = Security(creds=creds / service / file, tls_ca=creds / service / "ca.pem")
        nc = await connect(url, service, security=security, timeout_s=15)
        try:
            await nc.flush()
            assert nc._server_info["tls_required"], service
        finally:
            await close(nc)
    with pytest.raises(CredentialsUnusable):  # TLS but no user
        await asyncio.wait_for(connect(url, "anyone", security=Security(tls_ca=ca)), 15)
    scheduler = creds / "scheduler" / "scheduler.creds"
    plain = url.replace("tls://", "nats://")
    with pytest.raises(CredentialsUnusable):  # a user, without TLS: the server requires it
        await asyncio.wait_for(connect(plain, "plain", security=Security(creds=scheduler)), 15)


@pytest.mark.integration
@pytest.mark.skipif(not DEBIAN_BIN, reason="needs a PostgreSQL built with OpenSSL (Debian's)")
async def test_compose_postgres_certificate_is_verified_full_with_the_services_ca() -> None:
    base = reachable_tmp_dir("dockyard-test-compose-pg-")
    pg_user = pwd.getpwnam(DEFAULT_OS_USER)
    layout = Layout(postgres_owner=(pg_user.pw_uid, pg_user.pw_gid))
    try:
        DeploymentCredentials(base / "credentials", layout).ensure()
        (base / "credentials").chmod(0o755)  # the server's user walks to its own directory
        own = base / "credentials" / "postgres"
        server = EmbeddedPostgres(
            base / "data", fsync=False, tls_cert=own / "server.pem",
            tls_key=own / "server-key.pem", bin_dir=DEBIAN_BIN[-1].parent,
        )  # fmt: skip
        try:
            await server.start()
            url = server.url.replace("127.0.0.1", "localhost")
            ca = base / "credentials" / "migrate" / "ca.pem"
            conn = await asyncpg.connect(f"{url}?sslmode=verify-full&sslrootcert={ca}")
            try:
                ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                assert await conn.fetchval(ssl)
            finally:
                await conn.close()
        finally:
            await server.kill()
    finally:
        shutil.rmtree(base, ignore_errors=True)
