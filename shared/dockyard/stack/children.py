"""The four services as child processes, their output prefixed and coloured line by line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping

import click

SERVICES = ("scheduler", "orchestrator", "log-relay", "janitor")
_COLOURS = {
    "scheduler": "cyan",
    "orchestrator": "magenta",
    "log-relay": "blue",
    "janitor": "yellow",
}
_WIDTH = max(map(len, SERVICES))


def say(name: str, text: str, *, colour: str | None = None, err: bool = False) -> None:
    prefix = click.style(f"{name:<{_WIDTH}} |", fg=colour or _COLOURS.get(name, "white"))
    click.echo(f"{prefix} {text}", err=err)


class ServiceProcess:
    """`python -m dockyard.cli <service>` in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.env = dict(env)
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dockyard.cli", self.name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches `up` only, which stops us in order
            limit=1 << 20,
        )  # fmt: skip
        self._pump = asyncio.create_task(self._relay_output(), name=f"{self.name}-output")

    async def wait(self) -> int:
        """Wait until the process exits and its output is all printed; its exit code."""
        assert self.proc is not None
        code = await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, timeout=5)
        return code

    async def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL the whole group after `grace_s`; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
            except TimeoutError:
                say(self.name, f"did not stop within {grace_s:g} s; killing it", colour="red")
                self._signal(signal.SIGKILL)
                await self.proc.wait()
        # Anything the service left in its session (there should be nothing) goes too.
        self._signal(signal.SIGKILL)
        return await self.wait()

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def _relay_output(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line over the limit: show what we have
                raw = await self.proc.stdout.read(1 << 16)
            if not raw:
                return
            say(self.name, raw.decode(errors="replace").rstrip("\n"))
