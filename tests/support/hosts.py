"""Hosts for tests: Linux network namespaces on a switch of their own.

Each host is a namespace with one interface, `eth0`, addressed from 198.18.0.0/15 (the range
set aside for network tests), plugged by a veth pair into a bridge that lives in a namespace
of its own (the switch). This machine's own namespace is one more port of that switch (the
uplink, `.1`), so the test process reaches every host; because the bridge is not in this
machine's namespace, Docker's FORWARD policy (DROP) never sees the traffic and no rule of
ours is needed there. Everything made lives in namespaces named `<prefix><pid>-…`: deleting
them removes every link, address and iptables rule with them; `sweep` deletes what a run
that died left behind (its pid is gone).

Faults: `cut` drops, in both hosts' own INPUT (chain DKH-CUT), what one receives from the other (a
black hole, as a partition looks to TCP: no reset, no error, silence); `unplug` sets a host's
switch port down. `rules` reads the rules back so that a test can prove them. (`tc netem`
is not available on this machine's kernel: no sch_netem module.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

PREFIX: Final = "dkh"
CUT_CHAIN: Final = "DKH-CUT"  # in each host's own INPUT: the partitions' rules, and only them
NETWORK: Final = ipaddress.ip_network("198.18.0.0/15")
_NS_NAME = re.compile(rf"^{PREFIX}(\d+)[a-z]?-")
_made_here = itertools.count()


class HostsError(RuntimeError):
    """Raised when a namespace, link or rule cannot be made or removed."""


def _letter() -> str:
    return "abcdefghijklmnopqrstuvwxyz"[next(_made_here) % 26]


def run(*argv: str, netns: str | None = None, check: bool = True) -> str:
    """Run a command (inside `netns` if given); its output. HostsError if it fails."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise HostsError(f"{' '.join(full)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def sweep() -> list[str]:
    """Delete the namespaces of test runs whose process is gone; their names."""
    gone = []
    for name in namespaces():
        match = _NS_NAME.match(name)
        if match and not _alive(int(match[1])):
            run("ip", "netns", "del", name, check=False)
            gone.append(name)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address or route of this machine's namespace uses."""
    used = run("ip", "-4", "-o", "addr", "show") + run("ip", "-4", "route", "show")
    start = os.getpid() % 500
    subnets = list(NETWORK.subnets(new_prefix=24))
    for i in range(len(subnets)):
        subnet = subnets[(start + i) % len(subnets)]
        if subnet.network_address.packed[2] == 0:
            continue  # x.x.0.0/24 and its neighbour read too much like defaults
        if not re.search(re.escape(str(subnet.network_address)[:-1]) + r"\d", used):
            assert isinstance(subnet, ipaddress.IPv4Network)
            return subnet
    raise HostsError("no free /24 left in 198.18.0.0/15")


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    port: str  # its link's name on the switch


@dataclass
class Hosts:
    """The switch, its uplink and the hosts plugged into it. Close it to remove them all."""

    subnet: ipaddress.IPv4Network
    # Unique in this process too: a test may make hosts while a fixture's are up.
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}{_letter()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    @property
    def uplink(self) -> str:
        return f"{self.tag}up"  # in this machine's namespace: 15 characters at most

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def make(cls) -> Hosts:
        sweep()
        hosts = cls(free_subnet())
        try:
            hosts._make_switch()
        except BaseException:
            hosts.close()
            raise
        return hosts

    def _make_switch(self) -> None:
        self._netns(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "up0",
            "netns", self.switch)  # fmt: skip
        run("ip", "-n", self.switch, "link", "set", "up0", "master", "br0", "up")
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.uplink)
        run("ip", "link", "set", self.uplink, "up")

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def add(self, name: str, number: int) -> Host:
        """Host `name` at address .`number` of the subnet."""
        netns, port = f"{self.tag}-{name}", f"p-{name}"
        self._netns(netns)
        run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        run("ip", "link", "set", port, "netns", self.switch)
        run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        address = str(self.subnet.network_address + number)
        run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", netns, "link", "set", "eth0", "up")
        host = Host(name, netns, address, port)
        self.hosts[name] = host
        return host

    # --- faults ------------------------------------------------------------------------------

    def cut(self, a: Host, others: Iterable[Host]) -> None:
        """Partition `a` from each of `others`: each drops what it receives from the other."""
        for b in others:
            self._drop(a, b.address)
            self._drop(b, a.address)

    def _drop(self, host: Host, source: str) -> None:
        # A chain of our own, so that healing never touches a rule anyone else made there.
        if run("iptables", "-w", "-S", CUT_CHAIN, netns=host.netns, check=False) == "":
            run("iptables", "-w", "-N", CUT_CHAIN, netns=host.netns)
            run("iptables", "-w", "-I", "INPUT", "1", "-j", CUT_CHAIN, netns=host.netns)
        run("iptables", "-w", "-A", CUT_CHAIN, "-s", source, "-j", "DROP", netns=host.netns)

    def heal(self, hosts: Iterable[Host] | None = None) -> None:
        """Remove every rule of ours on `hosts` (all when None)."""
        for host in hosts if hosts is not None else self.hosts.values():
            run("iptables", "-w", "-F", CUT_CHAIN, netns=host.netns, check=False)

    def rules(self, host: Host) -> list[str]:
        """The DROP rules on `host`, read back from our chain (`-A DKH-CUT -s … -j DROP`)."""
        listing = run("iptables", "-w", "-S", CUT_CHAIN, netns=host.netns, check=False)
        return [line for line in listing.splitlines() if line.startswith(f"-A {CUT_CHAIN} ")]

    def unplug(self, host: Host) -> None:
        run("ip", "-n", self.switch, "link", "set", host.port, "down")

    def plug(self, host: Host) -> None:
        run("ip", "-n", self.switch, "link", "set", host.port, "up")

    def plugged(self, host: Host) -> bool:
        return "state UP" in run("ip", "-n", self.switch, "link", "show", host.port) or (
            ",UP" in run("ip", "-n", self.switch, "link", "show", host.port)
        )

    # --- removing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Delete every namespace made (and with them every link and rule); HostsError if any
        is still there after."""
        for name in reversed(self._made):
            run("ip", "netns", "del", name, check=False)
        with contextlib.suppress(HostsError):  # gone with its peer's namespace
            run("ip", "link", "del", self.uplink)
        left = [n for n in namespaces() if n.startswith(f"{self.tag}-")]
        if left or self.uplink in run("ip", "-o", "link", "show"):
            raise HostsError(f"left behind: {left} {self.uplink}")


def ns_argv(host: Host, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", host.netns, *argv]


@contextlib.contextmanager
def hosts_made() -> Iterator[Hosts]:
    hosts = Hosts.make()
    try:
        yield hosts
    finally:
        hosts.close()
