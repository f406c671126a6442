"""`dockyard up`: NATS and PostgreSQL (embedded unless given), migrations, then the four services
as child processes, until Ctrl-C or SIGTERM; a service that dies stops the stack, loudly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import click
from msgspec import Struct

from dockyard import config
from dockyard.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError
from dockyard.stack.children import SERVICES, ServiceProcess, say
from dockyard.stack.layout import Layout, StackError

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
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    await _check_docker()

    nats_url = env.get("DOCKYARD_NATS_URL")
    if nats_url:
        say("nats", f"using {nats_url} (DOCKYARD_NATS_URL)", colour="green")
    else:
        nats_url = await _start_nats(layout, options.nats_port, stack)
    database_url = env.get("DOCKYARD_DATABASE_URL")
    if database_url:
        say("postgres", f"using {_redact(database_url)} (DOCKYARD_DATABASE_URL)", colour="green")
    else:
        database_url = await _start_postgres(layout, options.postgres_port, stack)

    from dockyard.store.migrations import migrate

    applied = await migrate(database_url)
    say("up", "migrations applied: " + ", ".join(applied) if applied else "schema is up to date",
        colour="white")  # fmt: skip

    tokens, token = layout.tokens(env)
    written = layout.write_token(token, env)
    child_env = {
        **env,
        "DOCKYARD_NATS_URL": nats_url,
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_TOKENS": tokens,
        "DOCKYARD_LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }
    own_env = {"orchestrator": await _orchestrator_env(env)}
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


async def _start_nats(layout: Layout, port: int, stack: AsyncExitStack) -> str:
    await _require_free("NATS", port, "DOCKYARD_NATS_URL", "--nats-port")
    server = EmbeddedNats(layout.nats_dir, port=port)
    try:
        await server.start()
    except EmbeddedServerError as error:
        raise StackError(f"NATS did not start: {error}") from None
    stack.push_async_callback(_stopped, "nats", server)
    say("nats", f"JetStream at {server.url}, data in {layout.nats_dir}", colour="green")
    return server.url


async def _start_postgres(layout: Layout, port: int, stack: AsyncExitStack) -> str:
    await _require_free("PostgreSQL", port, "DOCKYARD_DATABASE_URL", "--postgres-port")
    data = await asyncio.to_thread(layout.postgres_dir)
    if not data.is_relative_to(layout.data_dir):
        say("postgres", f"{layout.data_dir} is not reachable by PostgreSQL's own user; "
            f"its data is in {data} instead", colour="yellow")  # fmt: skip
    server = EmbeddedPostgres(data, port=port)
    try:
        await server.start()
    except EmbeddedServerError as error:
        raise StackError(f"PostgreSQL did not start: {error}") from None
    stack.push_async_callback(_stopped, "postgres", server)
    say("postgres", f"{server.url}, data in {data}", colour="green")
    return server.url


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


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
