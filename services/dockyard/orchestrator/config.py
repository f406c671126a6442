"""The orchestrator's tunables: the contract's variables, plus a few fixed choices named once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from msgspec import Struct
from msgspec.structs import replace

from dockyard.bus.signing import ClaimKeyError, ClaimVerifier
from dockyard.bus.topology import OFFER_POLICY
from dockyard.config import ConfigError, Settings, Variable, parse_listen
from dockyard.core.registries import RegistryPolicy
from dockyard.process.backoff import Backoff
from dockyard.runtime.output import DEFAULT_CAP_BYTES
from dockyard.sealing import KeyFileError, KeyRing, load_key_ring

# The contract: SIGTERM, then SIGKILL 10 s later.
STOP_GRACE_S: Final = 10.0
# SIGTERM drain: running jobs get this long to finish before they are stopped and reported.
# With the 10 s stop grace and the reports, an orchestrator is gone within ~35 s, inside the
# 40 s a supervisor such as systemd or Kubernetes (30 s + margin) is usually told to wait.
DRAIN_S: Final = 20.0
# Usage: every job container is read this often, and reported at most this often.
USAGE_SAMPLE_S: Final = 1.0
USAGE_REPORT_S: Final = 5.0

# The orchestrator's own variables, as the configuration reference shows them.
VARIABLES: Final = (
    Variable(
        name="DOCKYARD_DRAIN_S",
        default=f"{DRAIN_S:g}",
        meaning="on SIGTERM the orchestrator stops claiming and lets running jobs finish this "
        "many seconds, then stops them (SIGTERM, 10 s, SIGKILL) and reports them "
        "`orchestrator_lost`, which their retry policy reruns elsewhere if it allows another "
        "attempt.",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_METRICS_LISTEN",
        default="none (`dockyard up`: `127.0.0.1:8702` when free)",
        meaning="`host:port` for the orchestrator's `/metrics`, `/healthz` and `/readyz`; off "
        "by default, since orchestrators sharing a host would each need a port.",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_IPTABLES",
        default="`iptables`",
        meaning="the iptables command the orchestrator writes the egress rules with "
        "(`DOCKYARD_EGRESS_DENY`); `<it>-restore` must sit beside it. Use the one the engine "
        "uses (`iptables -V` says nf_tables or legacy).",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_USAGE_SAMPLE_S",
        default=f"{USAGE_SAMPLE_S:g}",
        meaning="seconds between two readings of each running job's CPU, memory, processes "
        "and I/O (its cgroup files; the job view's `usage` and `limits_hit`); `0` turns "
        "sampling off (then jobs show no usage).",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
    Variable(
        name="DOCKYARD_USAGE_REPORT_S",
        default=f"{USAGE_REPORT_S:g}",
        meaning="a running job's usage is reported to the scheduler at most this often (and "
        "only when it changed); the final figures go with its exit.",
        read_by=("orchestrator",),
        group="orchestrator",
    ),
)


class OrchestratorConfig(Struct, frozen=True, kw_only=True):
    orchestrator_id: str
    queues: tuple[str, ...] = ("default",)
    max_jobs: int = 4
    lease_s: float = 15.0
    nats_replicas: int = 1
    stop_grace_s: float = STOP_GRACE_S
    drain_s: float = DRAIN_S
    # In-progress acks keep a running job's work offer from being redelivered: three per ack
    # wait, so two can be lost to a NATS hiccup before JetStream gives up on the delivery.
    keepalive_s: float = OFFER_POLICY.ack_wait / 3
    # A claim is one PostgreSQL append behind the scheduler; past this, ask again later.
    claim_timeout_s: float = 5.0
    # An offer whose claim must be tried again (no answer, the scheduler busy) is handed back
    # for claim_retry_s, doubling with each redelivery up to claim_retry_max_s, jittered.
    claim_retry_s: float = 1.0
    claim_retry_max_s: float = 30.0
    # A pull request waits this long for an offer; also how late a drain notices it should stop.
    fetch_timeout_s: float = 1.0
    log_cap_bytes: int = DEFAULT_CAP_BYTES
    # Batches of up to 4096 lines: JetStream fsyncs each message, so lines per message is
    # what sets the rate (measured here: 0.6M lines/s at 512 a batch, 1.6M at 4096). The
    # byte bound is the pipeline's estimate (text + 64 per line), high enough that short
    # lines never pay for trimming a batch; the sink splits any batch whose JSON is too big.
    log_batch_lines: int = 4096
    log_batch_bytes: int = 768 * 1024
    # Backpressure: past this many lines waiting for the bus, the container's output is read
    # only as fast as it is published (the engine then holds its writes)...
    log_high_water_lines: int = 20_000
    # ...unless publishing made no progress for this long (NATS is away): then reading goes
    # on, so the container never blocks for long, and the pipeline's bound takes over.
    log_stall_s: float = 2.0
    # A job's lines waiting for the bus past which the pipeline keeps only a bounded ring of
    # the newest (and says how many it dropped): at most ~50k lines plus the 16 MiB cap.
    log_max_pending_lines: int = 50_000
    # Log batches in flight to JetStream per job: acks overlap, order is kept.
    log_window: int = 16
    # How long an image known to be present skips the engine's inspect before a create.
    image_cache_s: float = 60.0
    # Where to serve /metrics, /healthz and /readyz; None: nowhere (orchestrators sharing a
    # host would need a port each, so it is off unless asked for).
    metrics_listen: tuple[str, int] | None = None
    # The scheduler's public claim nkey: only answers it signed are run. None: any answer is
    # (development; the orchestrator warns at start).
    claim_public_key: str | None = None
    usage_sample_s: float = USAGE_SAMPLE_S
    usage_report_s: float = USAGE_REPORT_S
    # DOCKYARD_ALLOWED_REGISTRIES, checked again before every pull.
    registries: RegistryPolicy = RegistryPolicy()
    # DOCKYARD_EGRESS_DENY's entries (`default` expands at each install); None: no rules at
    # all. from_settings gives the contract's default; a config built in code (tests) none.
    egress_deny: tuple[str, ...] | None = None
    # The servers whose addresses `default` adds: DOCKYARD_NATS_URL, DOCKYARD_DATABASE_URL.
    egress_servers: tuple[str, ...] = ()
    iptables: str = "iptables"
    # DOCKYARD_SECRETS_KEY: opens a claimed job's sealed secrets; None: only plaintext ones
    # (jobs stored before secrets were sealed) run.
    secrets: KeyRing | None = None

    @property
    def claim_backoff(self) -> Backoff:
        return Backoff(
            base_s=self.claim_retry_s, cap_s=max(self.claim_retry_s, self.claim_retry_max_s)
        )

    @property
    def heartbeat_s(self) -> float:
        """Three heartbeats per lease: one lost put does not make the orchestrator look lost."""
        return self.lease_s / 3

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> OrchestratorConfig:
        """The contract's variables, DOCKYARD_DRAIN_S (seconds, default 20) for the drain, and
        DOCKYARD_METRICS_LISTEN (host:port, default off) for the metrics port."""
        env = os.environ if env is None else env
        metrics = env.get("DOCKYARD_METRICS_LISTEN")
        config = cls(
            orchestrator_id=settings.orchestrator_id,
            queues=settings.queues or ("default",),
            max_jobs=settings.max_jobs,
            lease_s=settings.lease_s,
            nats_replicas=settings.nats_replicas,
            metrics_listen=parse_listen("DOCKYARD_METRICS_LISTEN", metrics) if metrics else None,
            claim_public_key=_claim_public_key(settings.claim_public_key),
            registries=RegistryPolicy.of(settings.allowed_registries),
            egress_deny=settings.egress_deny,
            egress_servers=(settings.nats_url, settings.database_url),
            iptables=env.get("DOCKYARD_IPTABLES") or "iptables",
            secrets=_secrets_ring(settings.secrets_key),
        )
        drain = env.get("DOCKYARD_DRAIN_S")
        if drain:
            try:
                drain_s = float(drain)
            except ValueError:
                raise ConfigError(f"DOCKYARD_DRAIN_S: {drain!r} is not a number") from None
            if drain_s < 0:
                raise ConfigError("DOCKYARD_DRAIN_S: must be at least 0")
            config = replace(config, drain_s=drain_s)
        sample_s = _seconds(env, "DOCKYARD_USAGE_SAMPLE_S", USAGE_SAMPLE_S)
        report_s = _seconds(env, "DOCKYARD_USAGE_REPORT_S", USAGE_REPORT_S)
        return replace(config, usage_sample_s=sample_s, usage_report_s=report_s)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A number of seconds, at least 0, or ConfigError naming the variable."""
    value = env.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{name}: must be a number of seconds, at least 0")
    return seconds


def _secrets_ring(setting: str | None) -> KeyRing | None:
    """DOCKYARD_SECRETS_KEY's ring, or ConfigError naming the file (never its content)."""
    if setting is None:
        return None
    try:
        return load_key_ring(setting, "orchestrator")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def _claim_public_key(value: str | None) -> str | None:
    """DOCKYARD_CLAIM_PUBLIC_KEY's key (read from its file if it names one), or ConfigError."""
    if value is None:
        return None
    try:
        return ClaimVerifier.from_setting(value).public_key
    except ClaimKeyError as exc:
        raise ConfigError(str(exc)) from None
