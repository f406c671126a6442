"""The embedded PostgreSQL asks every client for a password, and the services' own role can
do what the services do and nothing a superuser could (security review F7, F11)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dockyard.embedded import EmbeddedPostgres
from dockyard.embedded._pg_install import bin_dir_usable_by, ensure_os_user
from dockyard.store.migrations import migrate
from dockyard.store.pool import create_pool
from dockyard.store.rebuild import rebuild
from dockyard.store.roles import APP_PRIVILEGES, APP_ROLE
from tests.support.postgres import reachable_tmp_dir

DEBIAN_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


@pytest_asyncio.fixture(loop_scope="session")
async def own_pg() -> AsyncIterator[EmbeddedPostgres]:
    base = reachable_tmp_dir("dockyard-test-pg-auth-")
    server = EmbeddedPostgres(base / "data", fsync=False)
    await server.start()
    yield server
    await server.kill()
    shutil.rmtree(base, ignore_errors=True)


async def _refused(url: str) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(url, timeout=5)


async def test_a_client_without_the_password_is_refused(own_pg: EmbeddedPostgres) -> None:
    await _refused(own_pg.url_as("dockyard", None))
    await _refused(own_pg.url_as("dockyard", "not-the-password"))
    conn = await asyncpg.connect(own_pg.url)
    try:
        rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
        sockets = await conn.fetchval("SHOW unix_socket_directories")
    finally:
        await conn.close()
    assert {r["auth_method"] for r in rules} == {"scram-sha-256"}  # no trust, anywhere
    assert sockets == ""


async def test_a_trust_cluster_of_an_earlier_version_asks_for_the_password_once_started() -> None:
    base = reachable_tmp_dir("dockyard-test-pg-legacy-")
    data = base / "data"
    try:
        server = EmbeddedPostgres(data, fsync=False)
        run_as = await asyncio.to_thread(_initdb_as_before, server)
        await server.start()
        try:
            await _refused(server.url_as("dockyard", None))
            conn = await asyncpg.connect(server.url)
            await conn.close()
        finally:
            await server.stop()
        assert run_as is None or data.stat().st_uid == run_as[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _initdb_as_before(server: EmbeddedPostgres) -> tuple[int, int] | None:
    """What the earlier version made: initdb --auth=trust and a trust pg_hba.conf."""
    server.data_dir.mkdir(mode=0o700)
    run_as = ensure_os_user(server.os_user) if os.geteuid() == 0 else None
    bin_dir = server._bin_dir
    if run_as is not None:
        os.chown(server.data_dir, *run_as)
        bin_dir = bin_dir_usable_by(bin_dir, run_as)
    subprocess.run(
        [str(bin_dir / "initdb"), f"--pgdata={server.data_dir}", "--username=dockyard",
         "--auth=trust", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, cwd="/",
        user=run_as[0] if run_as else None, group=run_as[1] if run_as else None,
    )  # fmt: skip
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\n")
    if run_as is not None:
        os.chown(hba, *run_as)
    return run_as


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("COPY (SELECT 1) TO PROGRAM 'id'", asyncpg.InsufficientPrivilegeError),
        ("CREATE TEMP TABLE t (x text); COPY t FROM PROGRAM 'id'",
         asyncpg.InsufficientPrivilegeError),
        ("SELECT pg_read_file('/etc/passwd')", asyncpg.InsufficientPrivilegeError),
        ("CREATE ROLE intruder LOGIN SUPERUSER", asyncpg.InsufficientPrivilegeError),
        ("CREATE ROLE intruder LOGIN", asyncpg.InsufficientPrivilegeError),
        (f"ALTER ROLE {APP_ROLE} SUPERUSER", asyncpg.InsufficientPrivilegeError),
        ("ALTER TABLE events DISABLE TRIGGER events_append_only_rows",
         asyncpg.InsufficientPrivilegeError),
        ("DROP TRIGGER events_append_only_rows ON events", asyncpg.InsufficientPrivilegeError),
        ("ALTER TABLE events ADD COLUMN x int", asyncpg.InsufficientPrivilegeError),
        ("DROP TABLE events", asyncpg.InsufficientPrivilegeError),
        ("UPDATE events SET type = 'x'", asyncpg.InsufficientPrivilegeError),
        ("DELETE FROM events", asyncpg.InsufficientPrivilegeError),
        ("TRUNCATE events", asyncpg.InsufficientPrivilegeError),
        ("TRUNCATE jobs", asyncpg.InsufficientPrivilegeError),
        ("CREATE TRIGGER t BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION "
         "events_refuse_change()", asyncpg.InsufficientPrivilegeError),
        ("CREATE TABLE planted (x int)", asyncpg.InsufficientPrivilegeError),
        ("CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql "
         "AS $$ BEGIN RETURN NEW; END $$", asyncpg.InsufficientPrivilegeError),
        ("SET session_replication_role = replica", asyncpg.InsufficientPrivilegeError),
    ],
)  # fmt: skip
async def test_the_services_role_cannot_run_programs_make_roles_or_change_history(
    app_database_url: str, statement: str, refusal: type[BaseException]
) -> None:
    conn = await asyncpg.connect(app_database_url)
    try:
        role = await conn.fetchrow(
            "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
        assert tuple(role) == (APP_ROLE, False, False)
        with pytest.raises(refusal):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_every_table_of_the_schema_has_the_services_grants_listed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        granted = {
            (r["table_name"], r["privilege_type"])
            for r in await conn.fetch(
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = $1",
                APP_ROLE,
            )
        }
    finally:
        await conn.close()
    assert tables == set(APP_PRIVILEGES), "a new table: say in APP_PRIVILEGES what services do"
    assert granted == {(t, p) for t, privileges in APP_PRIVILEGES.items() for p in privileges}


async def test_the_services_role_waits_for_migrations_it_may_not_apply(
    app_database_url: str,
) -> None:
    assert await migrate(app_database_url) == []  # up to date: nothing to do, nothing tried


async def test_a_rebuild_keeps_the_services_grants_on_jobs(
    database_url: str, app_database_url: str
) -> None:
    pool = await create_pool(database_url, min_size=2, max_size=2)
    try:
        await rebuild(pool)
    finally:
        await pool.close()
    conn = await asyncpg.connect(app_database_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (id, tenant, status, queue, attempt, version, labels, created_at, "
            "view) VALUES ($1, 't', 'queued', 'default', 1, 1, '{}', now(), '{}')",
            uuid.uuid4(),
        )
        assert await conn.fetchval("DELETE FROM jobs RETURNING 1") == 1
    finally:
        await conn.close()


# -- TLS -----------------------------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.skipif(not DEBIAN_BIN, reason="needs a PostgreSQL built with OpenSSL (Debian's)")
async def test_sslmode_and_sslrootcert_in_the_url_reach_asyncpg(tmp_path: Path) -> None:
    # The pgserver wheel is built without OpenSSL; Debian's postgresql package has it.
    base = reachable_tmp_dir("dockyard-test-pg-tls-")
    cert, key = _certificate(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _ = _certificate(tmp_path / "other")
    server = EmbeddedPostgres(
        base / "data", fsync=False, tls_cert=cert, tls_key=key, bin_dir=DEBIAN_BIN[-1].parent
    )
    try:
        await server.start()
        verified = f"{server.url}?sslmode=verify-full&sslrootcert={cert}"
        conn = await asyncpg.connect(verified)
        try:
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await conn.close()
        pool = await create_pool(verified, min_size=1, max_size=1)  # the services' way in
        try:
            assert await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await pool.close()
        # A certificate from another CA is refused: the option is honoured, not ignored.
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await asyncpg.connect(f"{server.url}?sslmode=verify-full&sslrootcert={other_ca}")
    finally:
        await server.kill()
        shutil.rmtree(base, ignore_errors=True)
