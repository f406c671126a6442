"""The `dockyard` command: one group, each subcommand a thin call into the library."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from dockyard import config

_NOT_YET = {
    "up": "the whole stack on one machine",
    "orchestrator": "the container runner",
    "log-relay": "the log service",
    "janitor": "the cleanup service",
    "submit": "submitting a job",
    "status": "a job's status",
    "ls": "listing jobs",
    "logs": "a job's log",
    "cancel": "cancelling a job",
    "events": "a job's history",
    "schedules": "cron and interval schedules",
}


def fail(message: str, code: int = 1) -> NoReturn:
    """Every error the user sees is one line on stderr and a non-zero exit."""
    click.secho(f"dockyard: {message}", err=True, fg="red")
    sys.exit(code)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)
    except config.ConfigError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot connect: {error}")


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

    applied = run_async(migrate(config.load().database_url))
    click.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


@db.command("rebuild")
def db_rebuild() -> None:
    """Rebuild the jobs read model from the events, from scratch."""
    from dockyard.store.admin import db_rebuild as rebuild

    folded = run_async(rebuild(config.load().database_url))
    click.echo(f"rebuilt the read model from {folded} events")


@cli.group()
def schemas() -> None:
    """The JSON Schema and OpenAPI documents under schemas/."""


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate the documents from the code."""
    from dockyard import schema_files

    changed = schema_files.write()
    click.echo("written: " + ", ".join(changed) if changed else "schemas are current")


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the scheduler: the HTTP API, event recording, dispatch, retries and schedules."""
    from dockyard.scheduler.service import run_scheduler
    from dockyard.telemetry.logs import configure_logging

    configure_logging("scheduler")
    run_async(run_scheduler(config.load()))


def _not_yet(name: str, what: str) -> Callable[..., None]:
    @cli.command(
        name,
        help=f"{what[0].upper()}{what[1:]} (not yet available).",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        fail(f"`{name}` ({what}) is not yet available in this build", code=2)

    return command


for _name, _what in _NOT_YET.items():
    _not_yet(_name, _what)


def main() -> None:
    cli(prog_name="dockyard")
