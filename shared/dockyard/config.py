"""Configuration from the environment, exactly the contract's variables and defaults.

Decoded strictly: a malformed value stops the process with a message naming the variable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final, TypeVar

from msgspec import Struct

T = TypeVar("T", int, float)

DEFAULTS: Final[Mapping[str, str]] = {
    "DOCKYARD_NATS_URL": "nats://127.0.0.1:4222",
    "DOCKYARD_DATABASE_URL": "postgresql://dockyard@127.0.0.1:5432/dockyard",
    "DOCKYARD_API_LISTEN": "127.0.0.1:8700",
    "DOCKYARD_LOGS_LISTEN": "127.0.0.1:8701",
    "DOCKYARD_QUEUES": "default",
    "DOCKYARD_MAX_JOBS": "4",
    "DOCKYARD_LEASE_S": "15",
    "DOCKYARD_JANITOR_INTERVAL_S": "30",
    "DOCKYARD_NATS_REPLICAS": "1",
}


class ConfigError(ValueError):
    """Raised when an environment variable holds a value the service cannot use."""


class Settings(Struct, frozen=True, kw_only=True):
    nats_url: str
    database_url: str
    api_listen: tuple[str, int]
    logs_listen: tuple[str, int]
    tokens: dict[str, str]  # token -> tenant
    allowed_origins: tuple[str, ...]
    orchestrator_id: str
    queues: tuple[str, ...]
    max_jobs: int
    lease_s: float
    # Copies of every stream and of the heartbeat bucket: 3 on a three-node NATS cluster.
    nats_replicas: int = 1
    janitor_interval_s: float
    janitor_cron: str | None


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def get(name: str) -> str:
        return env.get(name) or DEFAULTS.get(name, "")

    api = _listen("DOCKYARD_API_LISTEN", get("DOCKYARD_API_LISTEN"))
    return Settings(
        nats_url=get("DOCKYARD_NATS_URL"),
        database_url=get("DOCKYARD_DATABASE_URL"),
        api_listen=api,
        logs_listen=_listen("DOCKYARD_LOGS_LISTEN", get("DOCKYARD_LOGS_LISTEN")),
        tokens=parse_tokens(env.get("DOCKYARD_TOKENS", "")),
        allowed_origins=_origins(env.get("DOCKYARD_ALLOWED_ORIGINS"), api),
        orchestrator_id=env.get("DOCKYARD_ORCHESTRATOR_ID") or default_orchestrator_id(),
        queues=tuple(q.strip() for q in get("DOCKYARD_QUEUES").split(",") if q.strip()),
        max_jobs=_number("DOCKYARD_MAX_JOBS", get("DOCKYARD_MAX_JOBS"), int, minimum=1),
        lease_s=_number("DOCKYARD_LEASE_S", get("DOCKYARD_LEASE_S"), float, minimum=1),
        nats_replicas=_number(
            "DOCKYARD_NATS_REPLICAS", get("DOCKYARD_NATS_REPLICAS"), int, minimum=1
        ),
        janitor_interval_s=_number(
            "DOCKYARD_JANITOR_INTERVAL_S", get("DOCKYARD_JANITOR_INTERVAL_S"), float, minimum=1
        ),
        janitor_cron=env.get("DOCKYARD_JANITOR_CRON") or None,
    )


def default_orchestrator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_tokens(text: str) -> dict[str, str]:
    """`tenant:token,tenant2:token2` -> {token: tenant}."""
    tokens: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tenant, sep, token = item.partition(":")
        if not sep or not tenant or not token:
            raise ConfigError(f"DOCKYARD_TOKENS: {item!r} is not tenant:token")
        tokens[token] = tenant
    return tokens


def parse_listen(name: str, value: str) -> tuple[str, int]:
    """`host:port` from the variable `name` (an empty host is 127.0.0.1), or ConfigError."""
    return _listen(name, value)


def _listen(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name}: {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _origins(value: str | None, api: tuple[str, int]) -> tuple[str, ...]:
    if value:
        return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    host, port = api
    # The web page is served by the scheduler: its own origin, by either loopback name. Bound
    # to every interface, the names it is reached by are unknown here: loopback only, until
    # DOCKYARD_ALLOWED_ORIGINS names them.
    loopback = {"localhost", "127.0.0.1"}
    if host in ("0.0.0.0", "::"):
        names = loopback
    elif host in loopback:
        names = {host} | loopback
    else:
        names = {host}
    return tuple(sorted(f"http://{name}:{port}" for name in names))


def _number(name: str, value: str, kind: type[T], *, minimum: T) -> T:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if number < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}")
    return number
