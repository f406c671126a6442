"""Configuration from the environment, exactly the contract's variables and defaults.

Decoded strictly: a malformed value stops the process with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from typing import Final, TypeVar

from msgspec import Struct

from dockyard.core.spec_bounds import SpecBounds
from dockyard.core.tenant_limits import TenantPolicies, decode_tenant_limits

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


class Variable(Struct, frozen=True, kw_only=True):
    """One environment variable as the configuration reference shows it.

    `scripts/config-reference` writes docs/configuration.md from the VARIABLES of this module,
    of dockyard.orchestrator.config and of dockyard.janitor.config; a test fails when the page
    is stale or when the code reads a variable none of them names.
    """

    name: str
    default: str  # as a person reads it; "" for none
    meaning: str
    read_by: tuple[str, ...]  # services, "CLI", "`dockyard up`"
    group: str


_SERVICES: Final = ("scheduler", "orchestrator", "log-relay", "janitor")

# What this module reads, and the few variables read elsewhere in the shared code (the services'
# logs and traces, the CLI's target, the Docker engine): every one of them, described once.
VARIABLES: Final[tuple[Variable, ...]] = (
    Variable(
        name="DOCKYARD_NATS_URL",
        default=DEFAULTS["DOCKYARD_NATS_URL"],
        meaning="NATS with JetStream, run with `sync_interval: always` and `max_payload: 8MB` "
        "(`deploy/nats.conf`); the nodes of a cluster comma-separated. `dockyard up` starts "
        "its own NATS unless this is set.",
        read_by=(*_SERVICES, "`dockyard up`"),
        group="servers",
    ),
    Variable(
        name="DOCKYARD_DATABASE_URL",
        default=DEFAULTS["DOCKYARD_DATABASE_URL"],
        meaning="PostgreSQL, the source of truth; a password and TLS go in the URL as libpq "
        "reads them (`password`, `sslmode`, `sslrootcert`). Orchestrators never use it. "
        "`dockyard up` starts its own PostgreSQL unless this is set.",
        read_by=("scheduler", "log-relay", "janitor", "`dockyard db`", "`dockyard up`"),
        group="servers",
    ),
    Variable(
        name="DOCKYARD_NATS_CREDS",
        default="none (`dockyard up`: one generated per service)",
        meaning="file with this process's NATS identity: a `.creds` file (a user JWT and its "
        "seed; `dockyard credentials orchestrator NAME` makes one) or a file holding an nkey "
        "seed. A password may instead be in the URL (`nats://user:password@host:4222`). "
        "Without any, against a NATS that requires none, the service runs in development "
        "mode and warns once at start that NATS is open.",
        read_by=_SERVICES,
        group="servers",
    ),
    Variable(
        name="DOCKYARD_NATS_TLS_CA",
        default="none",
        meaning="CA bundle (PEM) the NATS server's certificate must chain to; setting it, or "
        "a `tls://` URL (then the system's CAs), turns on TLS, and a server that offers none "
        "is refused.",
        read_by=_SERVICES,
        group="servers",
    ),
    Variable(
        name="DOCKYARD_NATS_TLS_CERT",
        default="none",
        meaning="client certificate (PEM) for mutual TLS, with `DOCKYARD_NATS_TLS_KEY`.",
        read_by=_SERVICES,
        group="servers",
    ),
    Variable(
        name="DOCKYARD_NATS_TLS_KEY",
        default="none",
        meaning="the private key (PEM) of `DOCKYARD_NATS_TLS_CERT`.",
        read_by=_SERVICES,
        group="servers",
    ),
    Variable(
        name="DOCKYARD_NATS_REPLICAS",
        default=DEFAULTS["DOCKYARD_NATS_REPLICAS"],
        meaning="copies of every stream and of the heartbeat bucket: `3` on a three-node "
        "cluster (`deploy/nats/cluster/`). The same value for every service.",
        read_by=_SERVICES,
        group="servers",
    ),
    Variable(
        name="DOCKYARD_API_LISTEN",
        default=DEFAULTS["DOCKYARD_API_LISTEN"],
        meaning="`host:port` of the scheduler: the API, the web page, `/healthz`, `/readyz`, "
        "`/metrics` (the `admin` token).",
        read_by=("scheduler", "`dockyard up`"),
        group="http",
    ),
    Variable(
        name="DOCKYARD_LOGS_LISTEN",
        default=DEFAULTS["DOCKYARD_LOGS_LISTEN"],
        meaning="`host:port` of the log relay: log pages, the log WebSocket, `/healthz`, "
        "`/readyz`, `/metrics` (the `admin` token). Unless `DOCKYARD_LOGS_URL` says otherwise, "
        "the web page finds the relay on this port of the page's own origin it was loaded from "
        "(one of `DOCKYARD_ALLOWED_ORIGINS`), else at this address (loopback if it is every "
        "interface); never at a host a request's `Host` header names.",
        read_by=("log-relay", "scheduler", "`dockyard up`"),
        group="http",
    ),
    Variable(
        name="DOCKYARD_TOKENS",
        default="none (`dockyard up`: one generated `admin` token)",
        meaning="`tenant:token,tenant2:token2`: who may call the API and read logs. Tenant "
        "`admin` sees every tenant's jobs. With none, every request is refused (401).",
        read_by=("scheduler", "log-relay", "`dockyard up`"),
        group="http",
    ),
    Variable(
        name="DOCKYARD_ALLOWED_ORIGINS",
        default="the web page's own origin (from `DOCKYARD_API_LISTEN`; listening on every "
        "interface: its loopback names only)",
        meaning="origins (`scheme://host:port`, comma-separated) allowed to open the log "
        "WebSocket; any other `Origin` is refused with 403 before the upgrade. The scheduler "
        "takes them as the web page's own origins, to tell the page where the relay is.",
        read_by=("log-relay", "scheduler"),
        group="http",
    ),
    Variable(
        name="DOCKYARD_ORCHESTRATOR_ID",
        default="host name + pid",
        meaning="the id of one orchestrator. Keep it stable across restarts: after a crash "
        "recovery finds the orchestrator's containers by it.",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_QUEUES",
        default=DEFAULTS["DOCKYARD_QUEUES"],
        meaning="queues, comma-separated: the ones an orchestrator serves; every service "
        "creates the work consumers of the queues it names at start. The scheduler's are also "
        "the queue labels of its metrics: every other queue is counted as `other`.",
        read_by=_SERVICES,
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_MAX_JOBS",
        default=DEFAULTS["DOCKYARD_MAX_JOBS"],
        meaning="jobs one orchestrator runs at once.",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_LEASE_S",
        default=DEFAULTS["DOCKYARD_LEASE_S"],
        meaning="an orchestrator silent this many seconds is lost and its jobs are requeued "
        "(it heartbeats three times a lease). It is the heartbeat bucket's TTL, which every "
        "service sets at start: one value everywhere.",
        read_by=_SERVICES,
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_CLAIM_KEY",
        default="none (`dockyard up`: generated, `<data-dir>/credentials/claim.seed`)",
        meaning="file holding the ed25519 nkey seed (`S...`, any role; `nk -gen server` makes "
        "one) the scheduler signs every claim answer with. Without it answers go unsigned "
        "and the scheduler logs a warning at start: any client that can answer on NATS could "
        "then make orchestrators run its commands.",
        read_by=("scheduler", "`dockyard up`"),
        group="claims",
    ),
    Variable(
        name="DOCKYARD_CLAIM_PUBLIC_KEY",
        default="none (`dockyard up`: generated, `<data-dir>/credentials/claim.pub`)",
        meaning="the public nkey of `DOCKYARD_CLAIM_KEY` (`N...`), or a file holding it. An "
        "orchestrator runs only claim answers signed by it, for the claim it asked, whose "
        "spec passes validation; any other answer is not run (`dockyard_orchestrator_claim_"
        "answers_rejected_total`). Without it every answer is run and the orchestrator logs a "
        "warning at start.",
        read_by=("orchestrator", "`dockyard up`"),
        group="claims",
    ),
    Variable(
        name="DOCKYARD_SECRETS_KEY",
        default="none (`dockyard up`: generated, `<data-dir>/credentials/secrets.key`)",
        meaning="file holding the key that seals the values of a spec's `secrets` (the job's "
        "and its sidecars'): 32 random bytes in base64, as `openssl rand -base64 32` prints "
        "them. The scheduler seals them before anything is stored or published; only the "
        "orchestrator that holds a job's claim opens them, just before creating its "
        "containers. `new,old` (two files) seals with the first and opens with either "
        "(rotation). Without it a spec with `secrets` is refused (422, field `secrets`).",
        read_by=("scheduler", "orchestrator", "`dockyard up`"),
        group="claims",
    ),
    *(
        Variable(
            name=name,
            default=default,
            meaning=f"{what} of a job (and each of its sidecars) whose spec leaves "
            f"`{field}` out; written into the job's stored spec at submit, so a change "
            "never alters a job already made (a schedule's next firings get the new value). "
            f"Above `{maximum}` it stops the scheduler at start.",
            read_by=("scheduler",),
            group="job limits",
        )
        for name, maximum, default, what, field in (
            ("DOCKYARD_DEFAULT_CPUS", "DOCKYARD_MAX_CPUS", "1.0", "CPUs", "resources.cpus"),
            (
                "DOCKYARD_DEFAULT_MEMORY_MB",
                "DOCKYARD_MAX_MEMORY_MB",
                "512",
                "memory (MiB; swap = memory)",
                "resources.memory_mb",
            ),
            ("DOCKYARD_DEFAULT_PIDS", "DOCKYARD_MAX_PIDS", "256", "processes", "resources.pids"),
            (
                "DOCKYARD_DEFAULT_TIMEOUT_S",
                "DOCKYARD_MAX_TIMEOUT_S",
                "3600",
                "seconds of wall clock",
                "timeout_s",
            ),
        )
    ),
    *(
        Variable(
            name=name,
            default="none",
            meaning=f"the most `{field}` a job or schedule may ask for: above it the submit "
            "is refused with 422, `details.field` and `details.max`, and nothing is stored. "
            "A schedule over a maximum set after it was made is not fired (an error log says "
            "why).",
            read_by=("scheduler",),
            group="job limits",
        )
        for name, field in (
            ("DOCKYARD_MAX_CPUS", "resources.cpus"),
            ("DOCKYARD_MAX_MEMORY_MB", "resources.memory_mb"),
            ("DOCKYARD_MAX_PIDS", "resources.pids"),
            ("DOCKYARD_MAX_TIMEOUT_S", "timeout_s"),
        )
    ),
    Variable(
        name="DOCKYARD_ALLOWED_REGISTRIES",
        default="any registry by name",
        meaning="registry hosts (`host` or `host:port`, comma-separated; `docker.io` for "
        "Docker Hub) jobs may pull images from; a host without a port allows every port. "
        "Unset, any registry named by a public DNS name is allowed, and an IP literal, "
        "`localhost`, a single-label name or a local-only one (`.local`, `.internal`, ...) is "
        "refused. The scheduler refuses such an `image` with 422 at submit; the orchestrator "
        "checks again before a pull.",
        read_by=("scheduler", "orchestrator"),
        group="job limits",
    ),
    Variable(
        name="DOCKYARD_EGRESS_DENY",
        default="`default`: 169.254.0.0/16, this host's own addresses and those of the NATS "
        "and PostgreSQL it is configured with",
        meaning="comma-separated IPv4 addresses and CIDRs that containers on `egress` networks "
        "cannot reach; the word `default` stands for the default list (`default,10.0.0.0/8` "
        "adds to it). The orchestrator enforces it with iptables rules on its job bridges, and "
        "besides keeps every job network (`isolated` too) off the host's own services. An "
        "orchestrator that cannot install the rules says so on `/readyz` and in its log and "
        "takes no `egress` job. `none` turns the list and the rules off (a rootless engine).",
        read_by=("orchestrator",),
        group="job limits",
    ),
    Variable(
        name="DOCKYARD_TENANT_LIMITS",
        default="none",
        meaning='JSON file: `{"<tenant>" or "*": {"max_running", "max_queued", '
        '"max_schedules", "submit_per_s", "weight", "allow_egress", "allow_root"}}`, every key '
        "optional. `allow_egress` (default true): false refuses `network: egress` with 422 "
        "naming `network`; `allow_root` (default false): true allows `user` uid 0 and "
        "`read_only: false`, else refused with 422 naming the field; checked at submit, at "
        "schedule create and at each firing (a schedule no longer allowed is not fired). A "
        'tenant without an entry gets `"*"`\'s.',
        read_by=("scheduler",),
        group="job limits",
    ),
    Variable(
        name="DOCKYARD_JANITOR_INTERVAL_S",
        default=DEFAULTS["DOCKYARD_JANITOR_INTERVAL_S"],
        meaning="seconds from the start of one sweep to the start of the next.",
        read_by=("janitor",),
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_JANITOR_CRON",
        default="none",
        meaning="a 5-field cron expression (UTC) for the sweeps, instead of the interval.",
        read_by=("janitor",),
        group="janitor",
    ),
    Variable(
        name="DOCKYARD_LOG_FORMAT",
        default="json",
        meaning="the services' own log lines on stderr: `json` (one object a line) or `text`. "
        "`dockyard up` runs its services with `text`.",
        read_by=_SERVICES,
        group="telemetry",
    ),
    Variable(
        name="DOCKYARD_LOG_LEVEL",
        default="INFO",
        meaning="`DEBUG`, `INFO`, `WARNING` or `ERROR`.",
        read_by=_SERVICES,
        group="telemetry",
    ),
    Variable(
        name="OTEL_EXPORTER_OTLP_ENDPOINT",
        default="none: tracing is off",
        meaning="export traces by OTLP/HTTP (or set `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the "
        "other standard `OTEL_EXPORTER_OTLP_*` variables apply. One trace per job across the "
        "services, `service.name` `dockyard-<service>`.",
        read_by=_SERVICES,
        group="telemetry",
    ),
    Variable(
        name="DOCKER_HOST",
        default="`/var/run/docker.sock` or `/run/docker.sock`",
        meaning="the Docker engine (`unix://...` or `tcp://...`).",
        read_by=("orchestrator", "janitor", "`dockyard up`"),
        group="docker",
    ),
    Variable(
        name="DOCKYARD_API_URL",
        default="http://127.0.0.1:8700",
        meaning="the scheduler the CLI talks to.",
        read_by=("CLI",),
        group="cli",
    ),
    Variable(
        name="DOCKYARD_LOGS_URL",
        default="`http://127.0.0.1:8701` (the web page: see `DOCKYARD_LOGS_LISTEN`)",
        meaning="the log relay's base URL as clients reach it: the CLI's, and the one the "
        "scheduler tells the web page (set it when a proxy serves the relay elsewhere).",
        read_by=("CLI", "scheduler"),
        group="cli",
    ),
    Variable(
        name="DOCKYARD_TOKEN",
        default="the dev token `dockyard up` wrote: `~/.config/dockyard/token` (under "
        "`$XDG_CONFIG_HOME` if set; never one in the current directory)",
        meaning="the CLI's bearer token, one of `DOCKYARD_TOKENS`.",
        read_by=("CLI",),
        group="cli",
    ),
)


class NatsSecurity(Struct, frozen=True, kw_only=True):
    """Paths of the NATS credential and TLS files (bus.connection.Security reads them)."""

    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class Settings(Struct, frozen=True, kw_only=True):
    nats_url: str
    nats_security: NatsSecurity = NatsSecurity()
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
    # The claim key's file (scheduler) and its public half, or a file holding it (orchestrator).
    claim_key: str | None = None
    claim_public_key: str | None = None
    # DOCKYARD_SECRETS_KEY as given: its files, comma-separated (dockyard.sealing reads them).
    secrets_key: str | None = None
    # The operator's defaults and maxima of a job's resources and timeout (the scheduler's).
    spec_bounds: SpecBounds = SpecBounds()
    # DOCKYARD_ALLOWED_REGISTRIES as given (core.registries.RegistryPolicy reads it); empty:
    # any registry by name.
    allowed_registries: tuple[str, ...] = ()
    # DOCKYARD_EGRESS_DENY's entries (`default` among them stands for the default list);
    # None: `none`, the list and its rules are off.
    egress_deny: tuple[str, ...] | None = ("default",)
    # DOCKYARD_TENANT_LIMITS: what each tenant is allowed (the scheduler's).
    tenant_limits: TenantPolicies = TenantPolicies()


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    refuse_placeholders(env)

    def get(name: str) -> str:
        return env.get(name) or DEFAULTS.get(name, "")

    api = _listen("DOCKYARD_API_LISTEN", get("DOCKYARD_API_LISTEN"))
    return Settings(
        nats_url=get("DOCKYARD_NATS_URL"),
        nats_security=NatsSecurity(
            creds=env.get("DOCKYARD_NATS_CREDS") or None,
            tls_ca=env.get("DOCKYARD_NATS_TLS_CA") or None,
            tls_cert=env.get("DOCKYARD_NATS_TLS_CERT") or None,
            tls_key=env.get("DOCKYARD_NATS_TLS_KEY") or None,
        ),
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
        claim_key=env.get("DOCKYARD_CLAIM_KEY") or None,
        claim_public_key=env.get("DOCKYARD_CLAIM_PUBLIC_KEY") or None,
        secrets_key=env.get("DOCKYARD_SECRETS_KEY") or None,
        spec_bounds=spec_bounds(env),
        allowed_registries=allowed_registries(env.get("DOCKYARD_ALLOWED_REGISTRIES", "")),
        egress_deny=egress_deny(env.get("DOCKYARD_EGRESS_DENY", "")),
        tenant_limits=tenant_limits(env.get("DOCKYARD_TENANT_LIMITS", "")),
    )


# SpecBounds' field suffix -> its two variables, its type and the range the spec itself
# allows (core/spec.py).
_BOUNDED: Final[dict[str, tuple[str, str, type[int] | type[float], float, float]]] = {
    "cpus": ("DOCKYARD_DEFAULT_CPUS", "DOCKYARD_MAX_CPUS", float, 0.01, 256),
    "memory_mb": ("DOCKYARD_DEFAULT_MEMORY_MB", "DOCKYARD_MAX_MEMORY_MB", int, 6, 1_048_576),
    "pids": ("DOCKYARD_DEFAULT_PIDS", "DOCKYARD_MAX_PIDS", int, 1, 65536),
    "timeout_s": ("DOCKYARD_DEFAULT_TIMEOUT_S", "DOCKYARD_MAX_TIMEOUT_S", float, 0.001, 604_800),
}


def spec_bounds(env: Mapping[str, str]) -> SpecBounds:
    """DOCKYARD_DEFAULT_* and DOCKYARD_MAX_*; ConfigError for a value out of the spec's own
    range, or a default (given or built in) above its maximum."""
    given: dict[str, float] = {}
    for suffix, (default_name, max_name, kind, low, high) in _BOUNDED.items():
        for prefix, name in (("default", default_name), ("max", max_name)):
            if text := env.get(name):
                given[f"{prefix}_{suffix}"] = _in_range(name, text, kind, low, high)
    bounds = SpecBounds(**given)  # type: ignore[arg-type]
    for suffix, (default_name, max_name, *_) in _BOUNDED.items():
        default = getattr(bounds, f"default_{suffix}")
        maximum = getattr(bounds, f"max_{suffix}")
        if maximum is not None and default > maximum:
            raise ConfigError(
                f"{default_name} ({default:g}) is above {max_name} ({maximum:g}): every job "
                "that leaves it out would be refused"
            )
    return bounds


def _in_range(
    name: str, text: str, kind: type[int] | type[float], low: float, high: float
) -> float:
    try:
        number = kind(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}: {text!r} is out of range ({low:g} to {high:g})")
    return number


def allowed_registries(text: str) -> tuple[str, ...]:
    """DOCKYARD_ALLOWED_REGISTRIES: hosts, not URLs (ConfigError for a scheme or a path)."""
    entries = tuple(e.strip().lower() for e in text.split(",") if e.strip())
    for entry in entries:
        if "/" in entry or any(c.isspace() for c in entry):
            raise ConfigError(
                f"DOCKYARD_ALLOWED_REGISTRIES: {entry!r} is not a registry host "
                "(`host` or `host:port`, no scheme or path)"
            )
    return entries


def egress_deny(text: str) -> tuple[str, ...] | None:
    """DOCKYARD_EGRESS_DENY: `none`, or IPv4 addresses/CIDRs and `default` (unset: default)."""
    if text.strip().lower() == "none":
        return None
    entries = tuple(e.strip() for e in text.split(",") if e.strip()) or ("default",)
    for entry in entries:
        if entry == "default":
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"DOCKYARD_EGRESS_DENY: {entry!r} is not an IPv4 address or CIDR "
                "(or `default`, or `none` alone)"
            ) from None
        if network.version != 4:
            raise ConfigError(
                f"DOCKYARD_EGRESS_DENY: {entry!r} is IPv6; job networks are IPv4 only"
            )
    return entries


def tenant_limits(path: str) -> TenantPolicies:
    """DOCKYARD_TENANT_LIMITS: the JSON file it names, or ConfigError saying what is wrong."""
    if not path:
        return TenantPolicies()
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"DOCKYARD_TENANT_LIMITS: cannot read {path}: {exc.strerror}") from None
    try:
        return decode_tenant_limits(data)
    except ValueError as exc:
        raise ConfigError(f"DOCKYARD_TENANT_LIMITS: {path}: {exc}") from None


# The deploy files' stand-in for every password and token (deploy/env/*.env).
PLACEHOLDER: Final = "CHANGE-ME"


def refuse_placeholders(env: Mapping[str, str]) -> None:
    """ConfigError naming the first DOCKYARD_ variable still holding the deploy files'
    `CHANGE-ME` placeholder (a password or token everyone can read there); never its value."""
    for name in sorted(env):
        if name.startswith("DOCKYARD_") and PLACEHOLDER in env[name].upper():
            raise ConfigError(
                f"{name} still holds a {PLACEHOLDER} placeholder: replace it with a secret of "
                "your own (deploy/README.md)"
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
