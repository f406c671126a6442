"""Keeping the egress deny list enforced while this orchestrator runs (DOCKYARD_EGRESS_DENY).

At start the guard writes its chains (egress_rules.py) and hooks them into DOCKER-USER and
INPUT; `run` checks every `period_s` that they are still there as written (Docker restarting,
or a firewall reload, can flush them) and writes them again if not; `remove` takes them out at
shutdown. An orchestrator that cannot write them (no privilege, a rootless engine, no
iptables) says so in its log and on /readyz, and takes no `egress` job: `allows_egress` is
what the claimers ask. The operator's `DOCKYARD_EGRESS_DENY=none` turns all of it off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import subprocess
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit

from dockyard.orchestrator.egress_rules import (
    METADATA,
    EgressChains,
    chain_rules,
    jump_rule,
    restore_input,
)
from dockyard.process.cancelling import raise_if_cancelled

log = logging.getLogger("dockyard.orchestrator.egress")

COMMAND_TIMEOUT_S: Final = 10.0
MAX_HOOKS: Final = 16
PERIOD_S: Final = 10.0
# The keyword of DOCKYARD_EGRESS_DENY that stands for the contract's default list.
DEFAULT: Final = "default"


class EgressUnenforced(Exception):
    """Raised when iptables could not write, read or remove the rules; says why."""


class EgressGuard:
    """The rules of one orchestrator; `deny` None: the operator turned the list off."""

    def __init__(
        self,
        chains: EgressChains,
        deny: Sequence[str] | None,
        *,
        servers: Sequence[str] = (),
        iptables: str = "iptables",
        period_s: float = PERIOD_S,
    ) -> None:
        """`deny`: DOCKYARD_EGRESS_DENY's entries, `default` among them expanded at each
        install (this host's addresses, and those `servers`' URLs name, as they are then)."""
        self.chains = chains
        self.entries = None if deny is None else tuple(deny)
        self.deny: tuple[str, ...] | None = None if deny is None else ()
        self._servers = tuple(servers)
        self._iptables = iptables
        self._period_s = period_s
        self.error: str | None = None  # why the list is not enforced now; None while it is
        self.installs = 0
        self._lock = asyncio.Lock()

    @property
    def off(self) -> bool:
        return self.entries is None

    @property
    def allows_egress(self) -> bool:
        """Whether an `egress` job may be claimed: the list is enforced, or turned off."""
        return self.off or self.error is None

    async def install(self) -> None:
        """Write both chains and hook them in; on failure record why (never raises)."""
        if self.entries is None:
            return
        async with self._lock:
            try:
                self.deny = await asyncio.to_thread(expand_deny, self.entries, self._servers)
                await self._write(self.deny)
            except (EgressUnenforced, ValueError) as exc:
                self._failed(str(exc))
            else:
                self.installs += 1
                self._enforced()

    async def check(self) -> None:
        """Write the rules again if anything took them (or a hook) away, or they failed."""
        if self.entries is None:
            return
        try:
            # Expanded again: the host's addresses and the servers' may have changed.
            deny = await asyncio.to_thread(expand_deny, self.entries, self._servers)
            intact = self.error is None and await self._intact(deny)
        except (EgressUnenforced, ValueError) as exc:
            self._failed(str(exc))
            intact = False
        if not intact:
            if self.error is None:
                log.warning(
                    "orchestrator.egress_rules_missing: the egress rules were changed or "
                    "removed (the engine restarted?); writing them again",
                    extra={"event": "orchestrator.egress_rules_missing"},
                )
            await self.install()

    async def run(self) -> None:
        """Check every period until cancelled."""
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self._period_s)
            await self.check()

    async def remove(self) -> None:
        """Unhook and delete both chains; what is already gone is fine."""
        if self.entries is None:
            return
        async with self._lock:
            for hook, chain in self.chains.hooks():
                for _ in range(MAX_HOOKS):  # a hook added twice by hand goes too
                    if not await self._ok("-D", hook, "-j", chain):
                        break
                await self._ok("-F", chain)
                await self._ok("-X", chain)
        log.info("orchestrator.egress_removed", extra={"event": "orchestrator.egress_removed"})

    async def _write(self, deny: Sequence[str]) -> None:
        await self._run(
            self._iptables + "-restore", "--noflush", stdin=restore_input(self.chains, deny)
        )
        for hook, chain in self.chains.hooks():
            if not await self._ok("-C", hook, "-j", chain):
                await self._run(self._iptables, "-I", hook, "1", "-j", chain)

    async def _intact(self, deny: Sequence[str]) -> bool:
        """Whether both chains hold the rules and both hooks are there; a chain that is gone
        (flushed with the rest) is simply not intact."""
        for chain, rules in chain_rules(self.chains, deny).items():
            try:
                listed = (await self._run(self._iptables, "-S", chain)).splitlines()
            except EgressUnenforced:
                return False
            if tuple(listed[1:]) != rules:  # the first line is `-N chain`
                return False
        for hook, chain in self.chains.hooks():
            listed = (await self._run(self._iptables, "-S", hook)).splitlines()
            if jump_rule(hook, chain) not in listed:
                return False
        return True

    async def _ok(self, *args: str) -> bool:
        try:
            await self._run(self._iptables, *args)
        except EgressUnenforced:
            return False
        return True

    async def _run(self, program: str, *args: str, stdin: str | None = None) -> str:
        """One iptables command's output; EgressUnenforced with its error otherwise."""
        try:
            process = await asyncio.create_subprocess_exec(
                program,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise EgressUnenforced(f"{program} cannot be run: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                out, err = await process.communicate(None if stdin is None else stdin.encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise EgressUnenforced(f"{program} {' '.join(args)}: no answer in time") from None
        if process.returncode != 0:
            text = err.decode(errors="replace").strip().splitlines()
            why = text[-1] if text else f"exit status {process.returncode}"
            raise EgressUnenforced(f"{program} {' '.join(args)}: {why}")
        return out.decode(errors="replace")

    def _failed(self, error: str) -> None:
        if self.error is None:
            log.warning(
                "orchestrator.egress_unenforced: the egress deny list cannot be enforced, so "
                "this orchestrator takes no `egress` job (DOCKYARD_EGRESS_DENY=none turns the "
                "list off): %s",
                error,
                extra={"event": "orchestrator.egress_unenforced"},
            )
        self.error = f"egress deny list not enforced: {error}"

    def _enforced(self) -> None:
        if self.error is not None:
            log.warning(
                "orchestrator.egress_enforced: the egress rules are in place; egress jobs are "
                "taken again",
                extra={"event": "orchestrator.egress_enforced"},
            )
        self.error = None
        log.info(
            "orchestrator.egress_installed chains=%s,%s",
            self.chains.forward,
            self.chains.input,
            extra={"event": "orchestrator.egress_installed"},
        )


def expand_deny(entries: Iterable[str], known_servers: Iterable[str] = ()) -> tuple[str, ...]:
    """DOCKYARD_EGRESS_DENY with `default` replaced by the contract's list: the link-local
    range, this host's own addresses and those of the servers it knows (NATS, PostgreSQL)."""
    found: list[str] = []
    for entry in entries:
        if entry == DEFAULT:
            found += [METADATA, *host_addresses(), *server_addresses(known_servers)]
        else:
            found.append(entry)
    return tuple(found)


def host_addresses() -> list[str]:
    """Every IPv4 address on this host's interfaces (`ip -j addr`), as /32s."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, check=True, timeout=10
        ).stdout
        interfaces = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("orchestrator.host_addresses_unknown error=%s", exc)
        return []
    return [
        f"{info['local']}/32"
        for interface in interfaces
        for info in interface.get("addr_info", [])
        if info.get("family") == "inet" and "local" in info
    ]


def server_addresses(urls: Iterable[str]) -> list[str]:
    """The IPv4 addresses the hosts of these URLs resolve to now (a name that does not
    resolve is skipped: the host's own addresses still cover a local server)."""
    found: list[str] = []
    for url in urls:
        for part in url.split(","):
            host = urlsplit(part.strip()).hostname
            if not host:
                continue
            try:
                infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                continue
            found += [f"{ipaddress.IPv4Address(info[4][0])}/32" for info in infos]
    return found
