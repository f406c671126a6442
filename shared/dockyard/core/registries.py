"""Which registry an image reference names, and whether jobs may pull from it, pure.

An image reference makes the engine connect to the host it names, from the engine's position
on the network: a tenant must not be able to point it at loopback, the LAN or a metadata
service (security review F13). By default any registry named by a public-looking DNS name is
allowed, and IP literals, `localhost`, single-label and local-only names (`.local`,
`.internal`, ...) are refused unless the operator lists them in DOCKYARD_ALLOWED_REGISTRIES;
with a list, only the registries in it are allowed. A public name that resolves to a private
address is not caught here (no DNS in the core): an operator who needs that closed lists the
registries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from msgspec import Struct

from dockyard.core.spec import JobSpec, SpecError

DOCKER_HUB: Final = "docker.io"
# Names that only ever mean something on a local network (RFC 6761, 6762, 8375, ICANN's
# .internal) or the reverse-DNS trees.
_LOCAL_SUFFIXES: Final = (
    ".localhost",
    ".localdomain",
    ".local",
    ".internal",
    ".lan",
    ".home",
    ".home.arpa",
    ".arpa",
    ".test",
    ".invalid",
)


def registry_of(ref: str) -> str:
    """The registry host (`host` or `host:port`, lower-case) an image reference pulls from.

    As the engine parses it: the part before the first `/` is a registry only when it has a
    `.` or a `:`, is `localhost`, or has an upper-case letter; otherwise it is Docker Hub.
    """
    first, slash, _ = ref.partition("/")
    if not slash:
        return DOCKER_HUB
    if "." in first or ":" in first or first == "localhost" or first != first.lower():
        return first.lower()
    return DOCKER_HUB


def split_host(registry: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6]:port` into the host (brackets off) and the port."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if registry.count(":") > 1:  # a bare IPv6 literal
        return registry, None
    host, _, port = registry.partition(":")
    return host, int(port) if port.isdigit() else None


def _looks_like_address(host: str) -> bool:
    """An IP literal, or a name a resolver may read as one (`2130706433`, `0x7f.1`)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    # inet_aton, which some resolvers fall back to, reads decimal, octal and hex parts.
    parts = host.split(".")
    return all(p.isdigit() or (p[:2] == "0x" and len(p) > 2) for p in parts if p) and any(parts)


def why_local(host: str) -> str | None:
    """Why `host` names something local rather than a public registry, or None."""
    host = host.rstrip(".")
    if _looks_like_address(host):
        return "an IP address"
    if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
        return "a local-only name"
    if "." not in host:
        return "a single-label name (resolved on the local network)"
    return None


class RegistryPolicy(Struct, frozen=True):
    """DOCKYARD_ALLOWED_REGISTRIES: empty means any registry by name."""

    allowed: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> RegistryPolicy:
        return cls(tuple(e.strip().lower().rstrip("/") for e in entries if e.strip()))

    @classmethod
    def parse(cls, text: str) -> RegistryPolicy:
        return cls.of(text.split(","))

    def refusal(self, ref: str) -> str | None:
        """Why jobs may not pull `ref`, in words, or None when they may."""
        registry = registry_of(ref)
        if self.allowed:
            if _listed(registry, self.allowed):
                return None
            return f"registry {registry} is not one of the allowed registries"
        why = why_local(split_host(registry)[0])
        if why is None:
            return None
        return f"registry {registry} is {why}, and only listed registries may be"


def _listed(registry: str, allowed: Iterable[str]) -> bool:
    """An entry with a port allows exactly that; one without allows the host on any port."""
    host, _ = split_host(registry)
    for entry in allowed:
        if entry == registry:
            return True
        entry_host, entry_port = split_host(entry)
        if entry_port is None and entry_host == host:
            return True
    return False


def check_images(spec: JobSpec, policy: RegistryPolicy, prefix: str = "") -> None:
    """SpecError naming the first `image` field whose registry the policy refuses."""
    fields = [(f"{prefix}image", spec.image)]
    fields += [(f"{prefix}sidecars[{i}].image", s.image) for i, s in enumerate(spec.sidecars)]
    for field, ref in fields:
        why = policy.refusal(ref)
        if why is not None:
            raise SpecError(
                field,
                f"{why} (DOCKYARD_ALLOWED_REGISTRIES)",
                {"registry": registry_of(ref)},
            )
