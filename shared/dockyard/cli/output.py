"""How jobs, events and log lines look: colour and tables on a terminal, plain text elsewhere."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dockyard.cli.terminal import for_stream, strip_controls

STATUS_COLOURS = {
    "scheduled": "blue",
    "queued": "cyan",
    "starting": "yellow",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "magenta",
}


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def coloured_status(status: str) -> str:
    return click.style(status, fg=STATUS_COLOURS.get(status), bold=True)


def outcome(job: dict[str, Any]) -> str:
    """`succeeded`, `failed (exit 3)`, `timed_out: <error>` …, for one line."""
    text = str(job.get("status"))
    if job.get("exit_code") is not None:
        text += f" (exit {job['exit_code']})"
    if job.get("status") != "succeeded" and job.get("error"):
        text += f": {job['error']}"
    elif job.get("reason") and job.get("reason") not in ("exit_code",):
        text += f" [{job['reason']}]"
    return text


def command_text(spec: dict[str, Any]) -> str:
    command = spec.get("command")
    return shlex.join(command) if command else "(image default)"


def print_job(job: dict[str, Any]) -> None:
    spec = job.get("spec") or {}
    rows = [
        ("id", job.get("id")),
        ("status", coloured_status(str(job.get("status")))),
        ("attempt", f"{job.get('attempt')} of {job.get('max_attempts')}"),
        ("exit code", job.get("exit_code")),
        ("reason", job.get("reason")),
        ("error", job.get("error")),
        ("image", spec.get("image")),
        ("command", command_text(spec)),
        ("queue", spec.get("queue")),
        ("orchestrator", job.get("orchestrator")),
        ("usage", usage_words(job)),
        ("limits hit", limits_words(job)),
        ("created", job.get("created_at")),
        ("queued", job.get("queued_at")),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
    ]
    for name, value in rows:
        if value is not None:
            click.echo(f"{name + ':':<14}{for_stream(str(value), sys.stdout)}")


def usage_words(job: dict[str, Any]) -> str | None:
    """'CPU 1.2 s · peak 48 MiB of 512 · 13 of 256 processes' (and I/O, throttling if any)."""
    usage = job.get("usage")
    if not isinstance(usage, dict):
        return None
    resources = (job.get("spec") or {}).get("resources") or {}
    memory = f"peak {_figure(usage.get('memory_peak_mb'))} MiB"
    if resources.get("memory_mb"):
        memory += f" of {resources['memory_mb']}"
    pids = f"{usage.get('pids_peak', 0)} processes"
    if resources.get("pids"):
        pids = f"{usage.get('pids_peak', 0)} of {resources['pids']} processes"
    parts = [f"CPU {_figure(usage.get('cpu_s'))} s", memory, pids]
    if usage.get("io_read_mb") or usage.get("io_write_mb"):
        read, wrote = _figure(usage.get("io_read_mb")), _figure(usage.get("io_write_mb"))
        parts.append(f"read {read} MiB, wrote {wrote} MiB")
    if usage.get("cpu_throttled_s"):
        parts.append(f"throttled {_figure(usage.get('cpu_throttled_s'))} s")
    return " · ".join(parts)


_LIMIT_NAMES = {"memory": "memory", "pids": "processes", "cpu": "CPU (throttled)"}


def limits_words(job: dict[str, Any]) -> str | None:
    """'processes, /tmp full', or None when no limit was reached."""
    hits = job.get("limits_hit") or []
    names = [
        f"{hit.removeprefix('disk:')} full"
        if hit.startswith("disk:")
        else _LIMIT_NAMES.get(hit, hit)
        for hit in hits
        if isinstance(hit, str)
    ]
    return ", ".join(names) or None


def _figure(value: Any) -> str:
    """1.2, 48, 0.03: as few digits as say it."""
    number = float(value or 0)
    if number >= 10:
        return f"{number:.0f}"
    return f"{number:.2g}" if number < 1 else f"{number:.1f}"


_JOB_COLUMNS = ("ID", "STATUS", "ATTEMPT", "EXIT", "QUEUE", "IMAGE", "COMMAND", "CREATED")


def job_row(job: dict[str, Any]) -> list[str]:
    spec = job.get("spec") or {}
    exit_code = job.get("exit_code")
    return [
        str(job.get("id")),
        str(job.get("status")),
        str(job.get("attempt")),
        "" if exit_code is None else str(exit_code),
        str(spec.get("queue", "")),
        str(spec.get("image", "")),
        command_text(spec),
        str(job.get("created_at") or ""),
    ]


def print_jobs(jobs: Sequence[dict[str, Any]]) -> None:
    rows = [job_row(job) for job in jobs]
    if sys.stdout.isatty():
        table = Table(*_JOB_COLUMNS, box=None, header_style="bold")
        for row in rows:
            # Text, not markup: a command or image is the tenant's, and must not style the table.
            cells: list[Text | str] = [Text(strip_controls(cell)) for cell in row]
            cells[1] = f"[{STATUS_COLOURS.get(row[1], 'white')}]{row[1]}[/]"
            table.add_row(*cells)
        Console().print(table)
    else:
        print_plain_table(_JOB_COLUMNS, rows)


def print_plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned by spaces, no colour and no truncation, for pipes and scripts."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_events(events: Sequence[dict[str, Any]]) -> None:
    for event in events:
        data = json.dumps(event.get("data"), sort_keys=True, separators=(",", ":"))
        kind = click.style(str(event.get("type")), bold=True)
        click.echo(f"{event.get('version'):>3}  {event.get('at')}  {kind}  {data}")


def print_line(line: dict[str, Any]) -> None:
    """A job's stdout to stdout; its stderr and Dockyard's own `system` lines to stderr.

    On a terminal without the job's escape sequences and control characters (terminal.py);
    piped, exactly as the job wrote it (color=True: click would strip colour codes).
    """
    text = str(line.get("text", ""))
    stream = line.get("stream")
    if stream == "stdout":
        click.echo(for_stream(text, sys.stdout), color=True)
    elif stream == "system":
        shown = for_stream(text, sys.stderr)
        click.secho(f"[dockyard] {shown}", err=True, fg="cyan", dim=True)
    elif sys.stderr.isatty():
        click.secho(for_stream(text, sys.stderr), err=True, fg="red")
    else:
        click.echo(text, err=True, color=True)
    sys.stdout.flush()


def print_end(job_id: str, status: str, exit_code: int | None, reason: str | None) -> None:
    text = f"job {job_id} {status}"
    if exit_code is not None:
        text += f" (exit {exit_code})"
    if reason and reason != "exit_code" and status != "succeeded":
        text += f" [{reason}]"
    click.secho(text, err=True, fg=STATUS_COLOURS.get(status), bold=True)
