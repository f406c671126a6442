"""`dockyard schedules`: list, create and delete cron and interval schedules."""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli import output
from dockyard.cli.common import CommandLine, fail, run_async
from dockyard.cli.jobs import build_spec, job_options
from dockyard.client import ApiClient, load_target


def _call(request: Any) -> Any:
    async def go() -> Any:
        async with ApiClient(load_target()) as client:
            return await request(client)

    return run_async(go())


@click.group("schedules", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """Cron and interval schedules; without a subcommand, list them."""
    if ctx.invoked_subcommand is None:
        _list(as_json)


@schedules.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def list_command(as_json: bool) -> None:
    """List schedules."""
    _list(as_json)


def _list(as_json: bool) -> None:
    page = _call(lambda client: client.schedules())
    if as_json:
        output.print_json(page)
        return
    rows = [
        [
            str(s.get("name")),
            str(s.get("cron") or f"every {s.get('interval_s')} s"),
            output.command_text(s.get("job") or {}),
            str(s.get("last_fire") or ""),
            str(s.get("next_fire") or ""),
        ]
        for s in page.get("schedules", [])
    ]
    output.print_plain_table(["NAME", "WHEN", "COMMAND", "LAST FIRE", "NEXT FIRE"], rows)


@schedules.command("create", cls=CommandLine)
@click.argument("name")
@click.option("--cron", help="5-field cron expression (UTC), e.g. '*/5 * * * *'.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), help="Every N seconds.")
@job_options
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def create(
    name: str,
    cron: str | None,
    interval: float | None,
    image: str,
    timeout: float | None,
    cpus: float | None,
    memory: int | None,
    pids: int | None,
    retries: int | None,
    env: tuple[str, ...],
    secrets: dict[str, str],
    queue: str | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Create a schedule: `dockyard schedules create NAME --cron|--interval -- CMD...`.

    Options end at `--` (or at CMD's first word after NAME); everything after it is CMD.
    """
    if (cron is None) == (interval is None):
        fail("give exactly one of --cron and --interval")
    body: dict[str, Any] = {
        "name": name,
        "job": build_spec(
            image=image,
            command=command,
            timeout=timeout,
            cpus=cpus,
            memory=memory,
            pids=pids,
            retries=retries,
            env=env,
            secrets=secrets,
            queue=queue,
        ),
    }
    if cron is not None:
        body["cron"] = cron
    else:
        body["interval_s"] = interval
    created = _call(lambda client: client.create_schedule(body))
    if as_json:
        output.print_json(created)
    else:
        click.echo(f"created schedule {name}, next fire {created.get('next_fire')}")


@schedules.command("delete")
@click.argument("name")
def delete(name: str) -> None:
    """Delete a schedule (jobs it already made are kept)."""
    _call(lambda client: client.delete_schedule(name))
    click.echo(f"deleted schedule {name}")
