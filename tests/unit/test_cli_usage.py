"""`dockyard status` shows a job's usage and the limits it reached in words."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from dockyard.cli import output

SPEC = {"image": "busybox", "resources": {"cpus": 1.0, "memory_mb": 512, "pids": 256}}


def job(**fields: Any) -> dict[str, Any]:
    return {"id": "j", "status": "running", "attempt": 1, "max_attempts": 1, "spec": SPEC, **fields}


USAGE = {
    "cpu_s": 1.234,
    "memory_peak_mb": 48.3,
    "pids_peak": 13,
    "io_read_mb": 0.0,
    "io_write_mb": 0.0,
    "cpu_throttled_s": 0.0,
}


@pytest.mark.parametrize(
    ("usage", "words"),
    [
        (USAGE, "CPU 1.2 s · peak 48 MiB of 512 · 13 of 256 processes"),
        (
            {**USAGE, "cpu_s": 0.034, "io_read_mb": 2.5, "io_write_mb": 120, "cpu_throttled_s": 3},
            "CPU 0.034 s · peak 48 MiB of 512 · 13 of 256 processes · read 2.5 MiB, "
            "wrote 120 MiB · throttled 3.0 s",
        ),
        (None, None),  # not started yet
    ],
)
def test_usage_in_words(usage: dict[str, Any] | None, words: str | None) -> None:
    assert output.usage_words(job(usage=usage)) == words


def test_limits_hit_in_words() -> None:
    hits = ["memory", "pids", "cpu", "disk:/tmp"]
    assert output.limits_words(job(limits_hit=hits)) == (
        "memory, processes, CPU (throttled), /tmp full"
    )
    assert output.limits_words(job(limits_hit=[])) is None


def test_print_job_shows_both_lines() -> None:
    def show() -> None:
        output.print_job(job(usage=USAGE, limits_hit=["pids"]))

    result = CliRunner().invoke(_command(show))
    assert "usage:        CPU 1.2 s · peak 48 MiB of 512 · 13 of 256 processes" in result.output
    assert "limits hit:   processes" in result.output


def _command(body: Any) -> Any:
    @click.command()
    def command() -> None:
        body()

    return command
