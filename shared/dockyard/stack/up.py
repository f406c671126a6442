"""`dockyard up`: NATS and PostgreSQL (embedded unless given), migrations, then the four services
as child processes, until Ctrl-C or SIGTERM; a service that dies stops the stack, loudly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import asyncpg
import click
from msgspec import Struct

from dockyard import config
from dockyard.bus.connection import redact as redact_nats
from dockyard.bus.permissions import InvalidIdentityName, check_name
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError
from dockyard.stack.children import SERVICES, ServiceProcess, say
from dockyard.stack.claim_keys import ClaimKeyUnusable, claim_env
from dockyard.stack.layout import Layout, StackError
from dockyard.stack.nats_credentials import CredentialsError, NatsCredentials, credentials_dir
from dockyard.stack.secrets_key import SecretsKeyUnusable, secrets_key_env
from dockyard.store.pool import redact_dsn

# Files of `<data-dir>/credentials/`: the bootstrap superuser's password (migrations and the
# services' role only) and the password of the services' own role.
POSTGRES_SUPERUSER_PASSWORD = "postgres-superuser.password"
POSTGRES_APP_PASSWORD = "postgres-app.password"
# What no child inherits from our environment: each gets only the credentials it needs.
_CREDENTIAL_VARIABLES = frozenset(
    {
        "DOCKYARD_DATABASE_URL",
        "DOCKYARD_TOKENS",
        "DOCKYARD_TOKEN",
        "PGPASSWORD",
        "PGPASSFILE",
        "DOCKYARD_CLAIM_KEY",
        "DOCKYARD_SECRETS_KEY",
    }
)
# The services that use PostgreSQL (orchestrators never do) and the ones that check tokens.
_DATABASE_USERS = frozenset({"scheduler", "log-relay", "janitor"})
_TOKEN_USERS = frozenset({"scheduler", "log-relay"})

READY_WITHIN_S = 90.0
# The orchestrator's /metrics, next to the API's 8700 and the log relay's 8701.
ORCHESTRATOR_METRICS_PORT = 8702


class UpOptions(Struct, frozen=True, kw_only=True):
    data_dir: Path
    nats_port: int = 4222
    postgres_port: int = 5432


async def run_up(options: UpOptions) -> int:
    """Run the stack until a stop signal (0) or a service's death (1)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stop = asyncio.Event()
    started = False

    def on_signal() -> None:
        if started:
            stop.set()
        elif main is not None:
            main.cancel()  # still starting: unwind whatever is up so far

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with AsyncExitStack() as stack:
            children = await _start(options, stack)
            started = True
            return await _supervise(children, stop)
    except asyncio.CancelledError:
        say("up", "stopped before the stack was up", colour="white", err=True)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start(options: UpOptions, stack: AsyncExitStack) -> list[ServiceProcess]:
    env = dict(os.environ)
    settings = config.load(env)  # a malformed variable stops us before anything starts
    layout = Layout(options.data_dir)
    layout.open()  # an unsafe data dir stops us before anything is written to it
    await _check_docker()

    nats_url = env.get("DOCKYARD_NATS_URL")
    nats_env: dict[str, dict[str, str]] = {}  # each service's NATS identity
    if nats_url:
        say("nats", f"using {redact_nats(nats_url)} (DOCKYARD_NATS_URL)", colour="green")
    else:
        nats_url, nats_env = await _start_nats(layout, options.nats_port, stack, env, settings)
    database_url = await _database(env, layout, options.postgres_port, stack)

    tokens, token = layout.tokens(env)
    written = layout.write_token(token, env)
    child_env = {
        **{name: value for name, value in env.items() if name not in _CREDENTIAL_VARIABLES},
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }
    own_env = {name: _credentials_env(name, database_url, tokens) for name in SERVICES}
    own_env["orchestrator"] |= await _orchestrator_env(env)
    for name, identity in nats_env.items():
        own_env[name] |= identity
    for name, keys in _claim_keys(env, layout).items():
        own_env[name] |= keys
    for name, keys in _secrets_key(env, layout).items():
        own_env[name] |= keys
    children = [ServiceProcess(name, {**child_env, **own_env.get(name, {})}) for name in SERVICES]
    stack.push_async_callback(_stop_all, children)
    for child in children:
        await child.start()
        say(child.name, f"started (pid {child.pid})")

    api = _url(settings.api_listen)
    logs = _url(settings.logs_listen)
    await _wait_ready([f"{api}/readyz", f"{logs}/readyz"], children)
    _banner(api, logs, token, written, layout)
    return children


def _claim_keys(env: dict[str, str], layout: Layout) -> dict[str, dict[str, str]]:
    """The claim key for the scheduler and its public half for the orchestrator: made at the
    first start unless DOCKYARD_CLAIM_KEY names one."""
    try:
        keys = claim_env(env, layout.credentials)
    except ClaimKeyUnusable as error:
        raise StackError(str(error)) from None
    where = keys["scheduler"]["DOCKYARD_CLAIM_KEY"]
    say("up", f"claim answers are signed (key in {where})", colour="green")
    return keys


def _secrets_key(env: dict[str, str], layout: Layout) -> dict[str, dict[str, str]]:
    """The key that seals secret values, for the scheduler and the orchestrator only."""
    try:
        keys = secrets_key_env(env, layout.credentials)
    except SecretsKeyUnusable as error:
        raise StackError(str(error)) from None
    where = keys["scheduler"]["DOCKYARD_SECRETS_KEY"]
    say("up", f"secrets are sealed (key in {where})", colour="green")
    return keys


async def _supervise(children: list[ServiceProcess], stop: asyncio.Event) -> int:
    waits = {asyncio.create_task(child.wait()): child for child in children}
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*waits, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for task in waits:
            task.cancel()
    dead = [waits[task] for task in done if task in waits]
    if not dead:
        say("up", "stopping (signal received) …", colour="white", err=True)
        return 0
    for child in dead:
        code = child.proc.returncode if child.proc is not None else None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"code {code}"
        loud = click.style(f"EXITED ({how}); stopping the whole stack", bold=True)
        say(child.name, loud, colour="red", err=True)
    return 1


async def _stop_all(children: list[ServiceProcess]) -> None:
    running = [c for c in children if c.proc is not None]
    codes = await asyncio.gather(*(c.stop() for c in running), return_exceptions=True)
    for child, code in zip(running, codes, strict=True):
        say(
            child.name,
            f"stopped ({code})" if not isinstance(code, int) else f"stopped (exit {code})",
        )


async def _check_docker() -> None:
    import aiodocker

    try:
        docker = aiodocker.Docker()
    except Exception as error:
        raise StackError(_docker_hint(error)) from None
    try:
        version = await docker.version()
    except Exception as error:
        raise StackError(_docker_hint(error)) from None
    finally:
        await docker.close()
    say("docker", f"engine {version.get('Version', '?')} answers", colour="green")


def _docker_hint(error: BaseException) -> str:
    reason = (str(error) or type(error).__name__).splitlines()[0]
    return (
        f"no Docker engine answers ({reason}); start one with `sudo systemctl start docker` "
        "(or `scripts/bootstrap`, which installs and starts it), or set DOCKER_HOST"
    )


async def _start_nats(
    layout: Layout,
    port: int,
    stack: AsyncExitStack,
    env: dict[str, str],
    settings: config.Settings,
) -> tuple[str, dict[str, dict[str, str]]]:
    """Our NATS, requiring credentials: the URL, and each service's identity variables."""
    await _require_free("NATS", port, "DOCKYARD_NATS_URL", "--nats-port")
    identities = NatsCredentials(credentials_dir(layout.data_dir))
    try:
        if identities.ensure():
            say("nats", f"made the NATS operator, account and keys in {identities.directory}",
                colour="green")  # fmt: skip
        orchestrator = _orchestrator_id(env)
        nats_env = _identities(identities, orchestrator, settings.queues)
    except (CredentialsError, InvalidIdentityName) as error:
        raise StackError(f"NATS credentials: {error}") from None
    server = EmbeddedNats(layout.nats_dir, port=port, auth=identities.server_config())
    try:
        await server.start()
    except EmbeddedServerError as error:
        raise StackError(f"NATS did not start: {error}") from None
    stack.push_async_callback(_stopped, "nats", server)
    say("nats", f"JetStream at {server.url}, data in {layout.nats_dir}; every client needs "
        f"credentials (in {identities.directory})", colour="green")  # fmt: skip
    return server.url, nats_env


def _orchestrator_id(env: dict[str, str]) -> str:
    """The local orchestrator's id, stable across restarts (its NATS identity is named by it):
    DOCKYARD_ORCHESTRATOR_ID, else this host's name."""
    given = env.get("DOCKYARD_ORCHESTRATOR_ID")
    if given:
        return check_name(given)
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).strip("-_")[:64]
    return host or "local"


def _identities(
    identities: NatsCredentials, orchestrator: str, queues: tuple[str, ...]
) -> dict[str, dict[str, str]]:
    """A fresh user per service at every start (its permissions as this version's code needs
    them, bus/permissions.py), and the operator's own `admin.creds` beside them."""
    identities.mint("admin")
    nats_env = {
        name: {"DOCKYARD_NATS_CREDS": str(identities.mint(name))}
        for name in ("scheduler", "log-relay", "janitor")
    }
    nats_env["orchestrator"] = {
        "DOCKYARD_NATS_CREDS": str(identities.mint("orchestrator", orchestrator, queues=queues)),
        "DOCKYARD_ORCHESTRATOR_ID": orchestrator,
    }
    return nats_env


def _credentials_env(name: str, database_url: str, tokens: str) -> dict[str, str]:
    """The credential-bearing variables service `name` gets: only those it uses."""
    env = {}
    if name in _DATABASE_USERS:
        env["DOCKYARD_DATABASE_URL"] = database_url
    if name in _TOKEN_USERS:
        env["DOCKYARD_TOKENS"] = tokens
    return env


async def _database(env: dict[str, str], layout: Layout, port: int, stack: AsyncExitStack) -> str:
    """PostgreSQL migrated; the URL the services use (for our own server: its services'
    role, never the superuser)."""
    from dockyard.store.migrations import migrate

    given = env.get("DOCKYARD_DATABASE_URL")
    if given:
        say("postgres", f"using {redact_dsn(given)} (DOCKYARD_DATABASE_URL)", colour="green")
        superuser_url = services_url = given
    else:
        server = await _start_postgres(layout, port, stack)
        superuser_url = server.url
        services_url = await _app_role_url(layout, server)
    try:
        applied = await migrate(superuser_url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise StackError(f"PostgreSQL: cannot migrate the schema: {error}") from None
    say("up", "migrations applied: " + ", ".join(applied) if applied else "schema is up to date",
        colour="white")  # fmt: skip
    if not given:
        await _grant_app_role(layout, superuser_url)
    return services_url


async def _start_postgres(layout: Layout, port: int, stack: AsyncExitStack) -> EmbeddedPostgres:
    await _require_free("PostgreSQL", port, "DOCKYARD_DATABASE_URL", "--postgres-port")
    data = await asyncio.to_thread(layout.postgres_dir)
    if not data.is_relative_to(layout.data_dir):
        say("postgres", f"{layout.data_dir} is not reachable by PostgreSQL's own user; "
            f"its data is in {data} instead", colour="yellow")  # fmt: skip
    credentials = layout.credentials
    password = credentials.get_or_create(POSTGRES_SUPERUSER_PASSWORD)
    server = EmbeddedPostgres(data, port=port, password=password)
    try:
        await server.start()
    except EmbeddedServerError as error:
        raise StackError(f"PostgreSQL did not start: {error}") from None
    stack.push_async_callback(_stopped, "postgres", server)
    say("postgres", f"{redact_dsn(server.url)} (password in {credentials.path}), "
        f"data in {data}", colour="green")  # fmt: skip
    return server


async def _app_role_url(layout: Layout, server: EmbeddedPostgres) -> str:
    from dockyard.store.roles import APP_ROLE

    password = layout.credentials.get_or_create(POSTGRES_APP_PASSWORD)
    return server.url_as(APP_ROLE, password)


async def _grant_app_role(layout: Layout, superuser_url: str) -> None:
    """The services' role, with its password and exactly the grants it needs (made again at
    every start, so a changed schema or a reset password is caught up)."""
    from dockyard.store.roles import APP_ROLE, ensure_app_role

    password = layout.credentials.get_or_create(POSTGRES_APP_PASSWORD)
    conn = await asyncpg.connect(superuser_url)
    try:
        await ensure_app_role(conn, password)
    finally:
        await conn.close()
    say("postgres", f"the services connect as {APP_ROLE} (no superuser)", colour="green")


async def _stopped(name: str, server: EmbeddedNats | EmbeddedPostgres) -> None:
    await server.stop()
    say(name, "stopped", colour="green")


async def _require_free(what: str, port: int, variable: str, option: str) -> None:
    if await _taken(port):
        raise StackError(
            f"port {port} is taken, so {what} cannot start there: stop what holds it, "
            f"pick another with {option}, or use that server with {variable}"
        )


async def _taken(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        writer.close()
        return True
    return False


async def _orchestrator_env(env: dict[str, str]) -> dict[str, str]:
    """The orchestrator's metrics port: DOCKYARD_METRICS_LISTEN if set, else 8702 if free
    (a convenience, so a taken port only means no metrics)."""
    if "DOCKYARD_METRICS_LISTEN" in env:
        return {}
    port = ORCHESTRATOR_METRICS_PORT
    if await _taken(port):
        say("orchestrator", f"port {port} is taken: no metrics port (DOCKYARD_METRICS_LISTEN)")
        return {}
    return {"DOCKYARD_METRICS_LISTEN": f"127.0.0.1:{port}"}


async def _wait_ready(urls: list[str], children: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    pending = list(urls)
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while pending:
            for child in children:
                if child.proc is not None and child.proc.returncode is not None:
                    raise StackError(
                        f"{child.name} exited with code {child.proc.returncode} while starting "
                        "(its output is above)"
                    )
            for url in list(pending):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            pending.remove(url)
            if time.monotonic() > deadline:
                raise StackError(f"not ready within {READY_WITHIN_S:g} s: {', '.join(pending)}")
            if pending:
                await asyncio.sleep(0.3)


def _banner(api: str, logs: str, token: str, written: list[Path], layout: Layout) -> None:
    lines = [
        "",
        click.style("Dockyard is up.", fg="green", bold=True),
        f"  API       {api}",
        f"  logs      {logs}",
        f"  web page  {api}/",
        f"  token     {token}",
        f"  data      {layout.data_dir}",
    ]
    if written:
        lines.append(f"  (token written to {', '.join(map(str, written))}; the CLI reads it)")
    lines += [
        "Try:  dockyard submit --follow -- sh -c 'echo hello'",
        "Stop: Ctrl-C",
        "",
    ]
    click.echo("\n".join(lines))


def _url(listen: tuple[str, int]) -> str:
    host, port = listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
