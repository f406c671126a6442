"""One server child process: spawned in its own process group, output appended to a log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class EmbeddedServerError(RuntimeError):
    """Raised when an embedded server cannot be found, set up, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now; callers keep it so restarts reuse the same address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, for error messages; never raises."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


async def port_accepts(host: str, port: int) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


def in_netns(netns: str, argv: Sequence[str], run_as: tuple[int, int] | None) -> list[str]:
    """`argv` run inside network namespace `netns`. Entering it takes root, so a user to run
    as is switched to after (setpriv), not before; `ip netns exec` and setpriv both exec, so
    the server keeps the pid we started (a kill -9 of it is a kill of the server)."""
    prefix = [shutil.which("ip") or "ip", "netns", "exec", netns]
    if run_as is not None:
        uid, gid = run_as
        setpriv = shutil.which("setpriv") or "setpriv"
        prefix += [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return [*prefix, *argv]


class ServerProcess:
    """A long-running child that can be stopped politely, SIGKILLed, paused and resumed.

    The child leads a new process group, so a terminal's Ctrl-C reaches only our parent (which
    then stops the child in order) and kill() takes down helpers it forked (PostgreSQL backends)
    in one blow, like a crashed machine.
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        run_as: tuple[int, int] | None = None,
        netns: str | None = None,
    ) -> None:
        """Start `argv`; as `run_as` (uid, gid) if given; inside network namespace `netns`
        (as `ip netns exec` runs it) if given."""
        if self.running:
            raise EmbeddedServerError(f"{self.name} is already running (pid {self.pid})")
        if netns is not None:
            argv, run_as = in_netns(netns, argv, run_as), None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child gets its own copy of the descriptor; ours closes at once (no leaked file).
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd="/",  # a cwd the child's user can read; servers resolve their own paths
                start_new_session=True,
                # extra_groups=[] drops root's supplementary groups, else inherited.
                user=run_as[0] if run_as else None,
                group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
            )
        self._paused = False

    def signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing to signal
            os.killpg(self._proc.pid, sig)

    def pause(self) -> None:
        self._require_running()
        self.signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._require_running()
        self.signal_group(signal.SIGCONT)
        self._paused = False

    async def terminate(self, sig: signal.Signals, grace_s: float) -> None:
        """Ask the server to shut down with `sig`; SIGKILL it if not gone within `grace_s`."""
        if not self.running:
            self._reap()
            return
        self.signal_group(sig)
        if self._paused:
            # A stopped process only acts on the signal once it runs again.
            self.resume()
        if not await self._wait_exit(grace_s):
            await self.kill()
            return
        await self._wait_group_gone(5.0)
        self._reap()

    async def kill(self) -> None:
        """SIGKILL the whole group, as `kill -9` or a power cut would, and wait until it is gone."""
        if self._proc is None:
            return
        self.signal_group(signal.SIGKILL)
        if not await self._wait_exit(10.0):  # stuck in the kernel (D state): do not hang on it
            raise EmbeddedServerError(f"{self.name} (pid {self._proc.pid}) survived SIGKILL")
        await self._wait_group_gone(5.0)
        self._reap()

    async def wait_ready(
        self, check: Callable[[], Awaitable[bool]], *, within_s: float, what: str
    ) -> None:
        """Poll `check` until it holds; fail early with the log tail if the child exits."""
        deadline = time.monotonic() + within_s
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise self.failure(f"{self.name} exited with code {code} before {what}")
            if await check():
                return
            if time.monotonic() > deadline:
                raise self.failure(f"{self.name} did not reach {what} within {within_s:.0f}s")
            await asyncio.sleep(0.05)

    def failure(self, message: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"{message}\n--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    def _require_running(self) -> None:
        if not self.running:
            raise EmbeddedServerError(f"{self.name} is not running")

    async def _wait_exit(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while self._proc is not None and self._proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _wait_group_gone(self, within_s: float) -> None:
        # Children of a killed leader (PostgreSQL backends) must be gone before a restart,
        # or the new postmaster finds their shared memory still attached and refuses to start.
        if self._proc is None:
            return
        pgid, deadline = self._proc.pid, time.monotonic() + within_s
        while True:
            if not _group_has_live_members(pgid) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.02)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
        self._paused = False


def _group_has_live_members(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies hold no resources)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, counting zombies too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


class EmbeddedServer:
    """What the embedded servers share once started: the fault-injection verbs tests use and
    the async context manager. Subclasses define `start` and `stop` and set `_process`."""

    _process: ServerProcess

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self, grace_s: float = 10.0) -> None:
        raise NotImplementedError

    async def kill(self) -> None:
        """SIGKILL, like `kill -9`: nothing is flushed, recovery happens on the next start."""
        await self._process.kill()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def pause(self) -> None:
        """SIGSTOP: the server holds its sockets open but answers nothing, like a hung host."""
        self._process.pause()

    async def resume(self) -> None:
        self._process.resume()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
