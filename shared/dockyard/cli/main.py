"""The `dockyard` command: one group, each subcommand a thin call into the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dockyard.cli import credentials, jobs, schedules
from dockyard.cli.common import fail, run_async, settings

__all__ = ["cli", "fail", "main", "run_async"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dockyard")
def cli() -> None:
    """Dockyard runs jobs in Docker containers, reliably, with live logs."""


@cli.group()
def db() -> None:
    """The PostgreSQL event store."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply the schema migrations not yet applied."""
    from dockyard.store.migrations import migrate

    applied = run_async(migrate(settings().database_url))
    click.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


@db.command("rebuild")
def db_rebuild() -> None:
    """Rebuild the jobs read model from the events, from scratch."""
    from dockyard.store.admin import db_rebuild as rebuild

    folded = run_async(rebuild(settings().database_url))
    click.echo(f"rebuilt the read model from {folded} events")


@cli.group()
def schemas() -> None:
    """The JSON Schema and OpenAPI documents under schemas/."""


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate the documents from the code."""
    from dockyard.scheduler import schema_files

    changed = schema_files.write()
    click.echo("written: " + ", ".join(changed) if changed else "schemas are current")


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the scheduler: the HTTP API, event recording, dispatch, retries and schedules."""
    from dockyard.scheduler.service import run_scheduler
    from dockyard.telemetry.logs import configure_logging

    configure_logging("scheduler")
    run_async(run_scheduler(settings()))


@cli.command("orchestrator")
def orchestrator_command() -> None:
    """Run an orchestrator: claim queued jobs and run them in Docker."""
    from dockyard.orchestrator.service import run_orchestrator
    from dockyard.telemetry.logs import configure_logging

    configure_logging("orchestrator")
    run_async(run_orchestrator(settings()))


@cli.command("janitor")
@click.option("--dry-run", is_flag=True, help="List what one sweep would do; change nothing.")
@click.option("--once", is_flag=True, help="One sweep, then exit.")
def janitor_command(dry_run: bool, once: bool) -> None:
    """Run the janitor: orphans, lost orchestrators, stuck jobs, retention."""
    from dockyard.janitor.service import run_janitor
    from dockyard.telemetry.logs import configure_logging

    configure_logging("janitor")
    run_async(run_janitor(settings(), dry_run=dry_run, once=once))


@cli.command("log-relay")
def log_relay_command() -> None:
    """Run the log relay: persist job logs and serve them over HTTP and WebSocket."""
    from dockyard.log_relay.service import run_log_relay
    from dockyard.telemetry.logs import configure_logging

    configure_logging("log-relay")
    run_async(run_log_relay(settings()))


@cli.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".dockyard"),
    show_default=True,
    help="Keeps NATS and PostgreSQL data (and the dev token) across restarts.",
)
@click.option(
    "--nats-port",
    type=click.IntRange(1, 65535),
    default=4222,
    show_default=True,
    help="Port of the embedded NATS (unless DOCKYARD_NATS_URL is set).",
)
@click.option(
    "--postgres-port",
    type=click.IntRange(1, 65535),
    default=5432,
    show_default=True,
    help="Port of the embedded PostgreSQL (unless DOCKYARD_DATABASE_URL is set).",
)
def up_command(data_dir: Path, nats_port: int, postgres_port: int) -> None:
    """The whole stack on this machine, in the foreground, until Ctrl-C."""
    from dockyard.embedded import EmbeddedServerError
    from dockyard.stack import StackError, UpOptions, run_up

    options = UpOptions(data_dir=data_dir, nats_port=nats_port, postgres_port=postgres_port)
    try:
        code = run_async(run_up(options))
    except (StackError, EmbeddedServerError) as error:
        fail(str(error).strip().replace("\n", " | "))
    sys.exit(code)


@cli.command("demo-image")
def demo_image_command() -> None:
    """Build the local demo image dockyard/busybox:latest (no registry needed).

    Made from this host's static busybox (Debian: `apt-get install busybox-static`);
    `dockyard submit` uses it by default.
    """
    from dockyard.stack.images import ImageBuildError, ensure_busybox_image

    async def build() -> str:
        try:
            return await ensure_busybox_image()
        except ImageBuildError as error:
            fail(str(error))
        except Exception as error:  # aiodocker's errors: no engine, engine refused
            reason = str(error).splitlines()[0] if str(error) else repr(error)
            fail(f"cannot build the demo image: {reason}")

    click.echo(run_async(build()))


for _command in (jobs.submit, jobs.status, jobs.ls, jobs.logs, jobs.cancel, jobs.events,
                 schedules.schedules, credentials.credentials):  # fmt: skip
    cli.add_command(_command)


def main() -> None:
    from dockyard.client.target import TokenError

    try:
        cli(prog_name="dockyard")
    except TokenError as error:  # the token is read as a command starts
        fail(str(error))
