"""Client commands about jobs: submit, status, ls, logs, cancel, events."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import click
import msgspec
from rich.console import Console

from dockyard.cli import output
from dockyard.cli.common import CommandLine, fail, run_async
from dockyard.client import ApiClient, Target, exit_code_for, follow_log, load_target
from dockyard.core.spec import EnvKey
from dockyard.stack.images import BUSYBOX_TAG

_JSON = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--env {pair!r} is not KEY=VALUE")
        env[key] = value
    return env


def parse_secrets(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, str]:
    """`--secret K=V`, or `--secret K` for the value of this shell's variable K, by K.

    Its errors name K, never a value (not even part of one).
    """
    secrets: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        _check_secret_name(key, param)
        if not sep:
            value = _from_environment(key, param)
        secrets[key] = value
    return secrets


def _check_secret_name(key: str, param: click.Parameter) -> None:
    if not key:
        raise click.BadParameter("a secret needs a name: K=V, or K to read $K", param=param)
    try:
        msgspec.convert(key, EnvKey)
    except msgspec.ValidationError:
        message = f"{key!r} is no environment variable name (letters, digits and _)"
        raise click.BadParameter(message, param=param) from None


def _from_environment(key: str, param: click.Parameter) -> str:
    value = os.environ.get(key)
    if value is None:
        raise click.BadParameter(f"{key} is not set in this shell's environment", param=param)
    return value


def build_spec(
    *,
    image: str,
    command: tuple[str, ...],
    timeout: float | None,
    cpus: float | None,
    memory: int | None,
    retries: int | None,
    env: tuple[str, ...],
    queue: str | None,
    pids: int | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The job spec the options describe; options left out keep the API's defaults."""
    spec: dict[str, Any] = {"image": image}
    if command:
        spec["command"] = list(command)
    spec.update(_environment(env, secrets or {}))
    if timeout is not None:
        spec["timeout_s"] = timeout
    limits = {"cpus": cpus, "memory_mb": memory, "pids": pids}
    if resources := {name: value for name, value in limits.items() if value is not None}:
        spec["resources"] = resources
    if retries is not None:
        spec["retry"] = {"max_attempts": retries + 1}
    if queue is not None:
        spec["queue"] = queue
    return spec


def _environment(pairs: tuple[str, ...], secrets: Mapping[str, str]) -> dict[str, Any]:
    """The spec's `env` and `secrets`: a key given both ways is a secret."""
    env = {**parse_env(pairs), **secrets}
    fields: dict[str, Any] = {"env": env} if env else {}
    if secrets:
        fields["secrets"] = list(secrets)
    return fields


_SECRET_HELP = (
    "Secret env K=V, masked wherever the job is shown; K alone takes the value of $K here, "
    "out of shell history and ps (repeat)."
)


def job_options(func: Any) -> Any:
    """The job-spec options `submit` and `schedules create` share."""
    options = [
        click.option("--image", default=BUSYBOX_TAG, show_default=True, help="Image to run."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds."),
        click.option("--cpus", type=click.FloatRange(min=0, min_open=True), help="CPU limit."),
        click.option("--memory", type=click.IntRange(min=1), help="Memory limit in MB."),
        click.option("--pids", type=click.IntRange(1, 65536), help="Process limit."),
        click.option("--retries", type=click.IntRange(min=0), help="Retries after a failure."),
        click.option("--env", "env", multiple=True, metavar="K=V", help="Environment (repeat)."),
        click.option(
            "--secret",
            "secrets",
            multiple=True,
            metavar="K[=V]",
            callback=parse_secrets,
            help=_SECRET_HELP,
        ),
        click.option("--queue", help="Queue (default: default)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("submit", cls=CommandLine)
@job_options
@click.option("--follow", "-f", is_flag=True, help="Stream the log; exit with the job's code.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    image: str,
    timeout: float | None,
    cpus: float | None,
    memory: int | None,
    pids: int | None,
    retries: int | None,
    env: tuple[str, ...],
    secrets: dict[str, str],
    queue: str | None,
    follow: bool,
    command: tuple[str, ...],
) -> None:
    """Submit a job: `dockyard submit [OPTIONS] -- CMD...`; prints its id.

    Options end at `--` (or at CMD's first word); everything after it is CMD.
    """
    spec = build_spec(
        image=image, command=command, timeout=timeout, cpus=cpus, memory=memory, pids=pids,
        retries=retries, env=env, secrets=secrets, queue=queue,
    )  # fmt: skip
    target = load_target()

    async def go() -> dict[str, Any]:
        async with ApiClient(target) as client:
            return await client.submit(spec)

    job = run_async(go())
    click.echo(job["id"])
    if follow:
        sys.exit(_follow(target, job["id"], after=0))


@click.command("status")
@click.argument("job_id")
@_JSON
def status(job_id: str, as_json: bool) -> None:
    """A job's status."""
    job = _call(lambda client: client.job(job_id))
    if as_json:
        output.print_json(job)
    else:
        output.print_job(job)


@click.command("ls")
@click.option("--status", "status_filter", help="Only jobs in this status.")
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--label", metavar="K=V", help="Only jobs with this label.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_JSON
def ls(
    status_filter: str | None, queue: str | None, label: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    params = {"limit": str(limit)}
    for name, value in (("status", status_filter), ("queue", queue), ("label", label)):
        if value:
            params[name] = value
    page = _call(lambda client: client.jobs(params))
    if as_json:
        output.print_json(page)
    else:
        output.print_jobs(page.get("jobs", []))


@click.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--after", type=click.IntRange(min=0), default=0, help="Only lines after seq N.")
def logs(job_id: str, follow: bool, after: int) -> None:
    """A job's log; with -f, live until the job ends (then exit with the job's code)."""
    target = load_target()
    if follow:
        sys.exit(_follow(target, job_id, after=after))

    async def go() -> None:
        position = after
        async with ApiClient(target) as client:
            while True:
                page = await client.log_page(job_id, position)
                for line in page.get("lines", []):
                    output.print_line(line)
                next_after = int(page.get("next_after", position))
                if not page.get("lines") or next_after <= position:
                    return
                position = next_after

    run_async(go())


@click.command("cancel")
@click.argument("job_id")
@_JSON
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job (its container is stopped; it ends `cancelled`)."""
    job = _call(lambda client: client.cancel(job_id))
    if as_json:
        output.print_json(job)
    else:
        click.echo(f"cancelling {job['id']} (status {output.coloured_status(job['status'])})")


@click.command("events")
@click.argument("job_id")
@_JSON
def events(job_id: str, as_json: bool) -> None:
    """A job's history, event by event."""
    page = _call(lambda client: client.events(job_id))
    if as_json:
        output.print_json(page)
    else:
        output.print_events(page.get("events", []))


def _call(request: Any) -> Any:
    async def go() -> Any:
        async with ApiClient(load_target()) as client:
            return await request(client)

    return run_async(go())


def _follow(target: Target, job_id: str, *, after: int) -> int:
    """Stream the log to the terminal; the process exit code for how the job ended."""
    spinner = (
        Console(stderr=True).status(f"waiting for job {job_id} …") if sys.stderr.isatty() else None
    )

    def on_line(line: dict[str, Any]) -> None:
        if spinner is not None:
            spinner.stop()
        output.print_line(line)

    async def go() -> int:
        if spinner is not None:
            spinner.start()
        try:
            end = await follow_log(target, job_id, on_line, after=after)
        finally:
            if spinner is not None:
                spinner.stop()
        output.print_end(job_id, end.status, end.exit_code, end.reason)
        return exit_code_for(end)

    code: int = run_async(go())
    return code
