"""The iptables rules that keep job networks off the deny list and off the host: pure.

An orchestrator's job bridges are named with its own prefix (runtime/hardening.py), so one
wildcard (`-i dy<5 hex>+`) scopes every rule to them and nothing else on the host is touched:
two orchestrators on one host each enforce their own list on their own jobs. Each owns two
chains named after its id (so neither removes the other's): one jumped to from DOCKER-USER
(forwarded traffic: the deny list) and one from INPUT (the host itself, reached through a job
network's gateway). The chains are written with one `iptables-restore --noflush`, which
replaces a declared chain's rules in one commit.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Final

from msgspec import Struct

from dockyard.runtime.hardening import bridge_prefix

# Docker's own hook for operator rules, evaluated first in FORWARD; INPUT for the host.
DOCKER_USER: Final = "DOCKER-USER"
INPUT: Final = "INPUT"
# `icmp-admin-prohibited`: a connect fails at once ("No route to host"/"Packet filtered")
# instead of hanging until the job's own timeout, as a DROP would.
_REJECT: Final = "-j REJECT --reject-with icmp-admin-prohibited"
# The contract's default list: the link-local range (cloud metadata at 169.254.169.254).
METADATA: Final = "169.254.0.0/16"


class EgressChains(Struct, frozen=True, kw_only=True):
    """The two chain names of one orchestrator, and the prefix of its job bridges."""

    forward: str
    input: str
    bridges: str

    @classmethod
    def of(cls, orchestrator_id: str) -> EgressChains:
        # iptables allows 28 characters in a chain name; 12 hex digits keep ids apart.
        digest = hashlib.sha256(orchestrator_id.encode()).hexdigest()[:12]
        return cls(
            forward=f"DOCKYARD-FWD-{digest}",
            input=f"DOCKYARD-IN-{digest}",
            bridges=bridge_prefix(orchestrator_id),
        )

    def hooks(self) -> tuple[tuple[str, str], ...]:
        """(built-in or Docker chain, our chain) pairs: where each chain is jumped to from."""
        return ((DOCKER_USER, self.forward), (INPUT, self.input))


def deny_networks(entries: Iterable[str]) -> tuple[str, ...]:
    """The IPv4 networks of a deny list, normalised as `iptables -S` prints them, in order
    and without repeats. ValueError names an entry that is not an IPv4 address or CIDR."""
    found: dict[str, None] = {}
    for entry in entries:
        network = ipaddress.ip_network(entry.strip(), strict=False)
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError(f"{entry!r}: job networks are IPv4 only; give IPv4 networks")
        # The conntrack match prints a single address without its /32.
        found[str(network.network_address) if network.prefixlen == 32 else str(network)] = None
    return tuple(found)


def chain_rules(chains: EgressChains, deny: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each chain's rules, as `iptables -S CHAIN` lists them (after its `-N` line)."""
    bridges = f"-i {chains.bridges}+"
    forward = [
        # Traffic between job bridges is Docker's to drop (its isolation chains); within one
        # bridge (sidecars, with br_netfilter on) it must not meet the deny list at all.
        f"-A {chains.forward} {bridges} -o {chains.bridges}+ -j RETURN",
        # The destination before any DNAT: a host port published by another container is
        # still the host's own address.
        *(
            f"-A {chains.forward} {bridges} -m conntrack --ctorigdst {net} {_REJECT}"
            for net in deny_networks(deny)
        ),
    ]
    host = [
        # What the host opened towards a container may answer; nothing else gets in.
        f"-A {chains.input} {bridges} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {chains.input} {bridges} {_REJECT}",
    ]
    return {chains.forward: tuple(forward), chains.input: tuple(host)}


def restore_input(chains: EgressChains, deny: Iterable[str]) -> str:
    """`iptables-restore --noflush` input that (re)writes both chains in one commit."""
    rules = chain_rules(chains, deny)
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in rules)]
    for chain_lines in rules.values():
        lines.extend(chain_lines)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def jump_rule(hook: str, chain: str) -> str:
    """The rule, in `iptables -S` form, that sends a hook's packets through our chain."""
    return f"-A {hook} -j {chain}"
