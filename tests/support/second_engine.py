"""A Docker engine of the test's own, to stop and start under an orchestrator: never the
engine the rest of the suite uses.

A second `dockerd` with its own data root, exec root (so its own containerd), pid file and
unix socket, all under one short temporary directory (unix socket paths are capped at 108
bytes), and `--iptables=false --ip6tables=false --ip-masq=false`, so that it adds no rule:
its containers run with `network: none` only. Its default bridge is one of its own, made
here with an address from 198.18.0.0/15, not `--bridge=none`: a dockerd started with
`--bridge=none` deletes the host's `docker0` (Moby's configureNetworking calls
removeDefaultBridgeInterface), which broke the main engine's default network for every
later test. `close` stops it, unmounts whatever it left mounted under the directory,
removes the directory and its bridge, even after a failed test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiodocker

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class SecondEngine:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dyd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self._process: asyncio.subprocess.Process | None = None
        self.log_path = self.root / "dockerd.log"
        self.bridge = f"dyd{self.root.name[-8:].lower()}"[:15]
        self._bridge_made = False

    def _make_bridge(self) -> None:
        if self._bridge_made:
            return
        from tests.support.hosts import free_subnet  # 198.18.0.0/15, not in use here

        subnet = free_subnet()
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}",
             "dev", self.bridge],
        ):  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
        self._bridge_made = True

    def _remove_bridge(self) -> None:
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
            self._bridge_made = False

    def client(self) -> aiodocker.Docker:
        return aiodocker.Docker(url=self.url)

    async def start(self) -> None:
        """Start (or start again, on the same data) and wait until it answers."""
        await asyncio.to_thread(self._make_bridge)
        log = self.log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                "dockerd",
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                f"--host={self.url}",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of the test run is not its signal
            )
        finally:
            log.close()
        await self._until_it_answers()

    async def _until_it_answers(self) -> None:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.returncode is not None:
                raise AssertionError(f"dockerd exited at start: {self.log_tail()}")
            if self.socket.exists():
                async with self.client() as docker:
                    with contextlib.suppress(Exception):  # not up yet
                        await docker.version()
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"dockerd never answered: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def load(self, image: str) -> None:
        """Copy `image` from the suite's engine into this one (there is no registry)."""
        command = f"docker save {image} | docker -H {self.url} load"
        process = await asyncio.create_subprocess_shell(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode(errors="replace")

    async def stop(self) -> None:
        """SIGTERM and wait for it (its containers stop with it); SIGKILL if it hangs."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        # Its own session: whatever of it outlived dockerd (its containerd) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    async def close(self) -> None:
        await self.stop()
        await asyncio.to_thread(self._remove_root)
        await asyncio.to_thread(self._remove_bridge)

    def _remove_root(self) -> None:
        # Mounts it may leave after a kill (overlays, network namespaces), deepest first.
        for mount in sorted(self._mounts_under_root(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not self.root.exists(), f"{self.root} could not be removed"

    def _mounts_under_root(self) -> list[str]:
        prefix = f"{self.root}{os.sep}"
        with open("/proc/self/mountinfo") as table:
            points = [line.split()[4] for line in table]
        return [p for p in points if p.startswith(prefix)]

    def still_mounted(self) -> list[str]:
        return self._mounts_under_root() if self.root.exists() else []

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
