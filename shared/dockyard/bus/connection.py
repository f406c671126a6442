"""Connecting to NATS: reconnect forever with bounded backoff, and say so in the logs.

A service must survive a NATS restart without restarting itself: the client reconnects with
exponential backoff capped at a few seconds, replays its subscriptions, and buffers publishes
meanwhile (they time out and are retried by their callers, deduplicated by Nats-Msg-Id).

Who it connects as (`Security`): a `.creds` file (a user JWT and its seed) or an nkey seed file
(DOCKYARD_NATS_CREDS), or a password in the URL; TLS with a CA bundle (DOCKYARD_NATS_TLS_CA,
or the system's for a `tls://` URL) and a client certificate for mutual TLS (_CERT, _KEY).
Replies come to an inbox prefix of the identity's own (bus/permissions.py): read from the
JWT's subscribe allow-list when it names one. A NATS that requires no credentials is still
used (development mode), with one warning at start that says what is open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from dockyard.bus.errors import BusRejected, BusUnavailable

log = logging.getLogger("dockyard.bus")

# A dead TCP connection (a host gone without a FIN) is noticed after ping_interval times
# max_outstanding_pings: 20 s here, against nats-py's default of 4 minutes, which is longer
# than an orchestrator's lease.
PING_INTERVAL_S: Final = 10
MAX_OUTSTANDING_PINGS: Final = 2

# Reconnect delays: 0.1 s, 0.2 s, ... doubling up to 5 s, each with ±20 % jitter so a fleet
# of services does not reconnect in lockstep after a NATS restart.
RECONNECT_BASE_S: Final = 0.1
RECONNECT_CAP_S: Final = 5.0

# Publishes issued while reconnecting wait in a buffer this large, then fail fast.
PENDING_BYTES: Final = 8 * 1024 * 1024


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first)."""
    delay = min(RECONNECT_CAP_S, RECONNECT_BASE_S * 2.0 ** min(attempt, 16))
    return delay * random.uniform(0.8, 1.2)


def _choose_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    # The pool is one URL (or a cluster's); pick the least-retried server, back off on its count.
    server = min(servers, key=lambda s: s.reconnects)
    return server, reconnect_delay(server.reconnects)


async def move_to_another_server(nc: NatsClient, settle_s: float = 2.0) -> None:
    """Reconnect to another server of a cluster's pool, when there is one and we are connected.

    For a node that answers but commits nothing (cut off from the cluster's majority): the
    connection stays up, so nats-py would never leave it by itself. Counting a retry against
    the current server makes `_choose_server`, which takes the least-retried, pick another.
    """
    current = nc._current_server
    if current is None or len(nc._server_pool) < 2 or not nc.is_connected:
        return
    current.reconnects += 1
    log.warning(
        "bus.moving_server from=%s",
        redact(current.uri.geturl()),
        extra={"event": "bus.moving_server"},
    )
    await nc.force_reconnect()
    # Back once connected elsewhere (or after `settle_s`): the caller's next request then goes
    # to the new server rather than waiting in the reconnect buffer.
    for _ in range(max(1, round(settle_s / SETTLE_POLL_S))):
        if _connected(nc):
            return
        await asyncio.sleep(SETTLE_POLL_S)


SETTLE_POLL_S = 0.02


def _connected(nc: NatsClient) -> bool:
    # A call, not the property inline: after the early return above, a type checker takes
    # `is_connected` for true for good and calls the wait unreachable.
    return nc.is_connected


def server_urls(url: str) -> list[str]:
    """The servers of DOCKYARD_NATS_URL: one URL, or a comma-separated list (a cluster's
    nodes, so the first connection does not hang on one node being down)."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ValueError("no NATS server URL given")
    return urls


def redact(url: str) -> str:
    """The URL (or comma-separated URLs) without credentials, for logs."""
    if "," in url:
        return ",".join(redact(u) for u in server_urls(url))
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


class SecuritySettings(Protocol):
    """What config.NatsSecurity holds: file paths, or None."""

    @property
    def creds(self) -> str | None: ...
    @property
    def tls_ca(self) -> str | None: ...
    @property
    def tls_cert(self) -> str | None: ...
    @property
    def tls_key(self) -> str | None: ...


@dataclass(frozen=True)
class Security:
    """How to prove who we are to NATS and check who NATS is. Empty: development mode."""

    creds: Path | None = None  # a .creds file, or a file holding an nkey seed (SU...)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    inbox_prefix: str | None = None  # when the credential names none (nkey seeds, passwords)

    @classmethod
    def of(cls, settings: SecuritySettings | None, inbox_prefix: str | None = None) -> Security:
        """From the service's settings (config.NatsSecurity); `inbox_prefix` its role's."""

        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        if settings is None:
            return cls(inbox_prefix=inbox_prefix)
        return cls(
            creds=path(settings.creds),
            tls_ca=path(settings.tls_ca),
            tls_cert=path(settings.tls_cert),
            tls_key=path(settings.tls_key),
            inbox_prefix=inbox_prefix,
        )


class CredentialsUnusable(BusRejected):
    """Raised when the credential or TLS files cannot be used, or NATS refused them."""


def connect_options(security: Security, urls: list[str]) -> dict[str, Any]:
    """The nats-py connect arguments for `security` (the credential read once, here)."""
    options: dict[str, Any] = {}
    prefix = security.inbox_prefix
    if security.creds is not None:
        try:
            text = security.creds.read_text()
        except OSError as exc:
            raise CredentialsUnusable(f"DOCKYARD_NATS_CREDS: cannot read {exc}") from None
        if "BEGIN NATS USER JWT" in text:
            options["user_credentials"] = str(security.creds)
            prefix = _jwt_inbox_prefix(text) or prefix
        elif text.strip().startswith("SU"):
            options["nkeys_seed_str"] = text.strip()
        else:
            raise CredentialsUnusable(
                f"DOCKYARD_NATS_CREDS: {security.creds} is neither a .creds file nor an nkey seed"
            )
    if prefix:
        options["inbox_prefix"] = prefix
    context = tls_context(security)
    if context is not None:
        options["tls"] = context
    return options


def tls_context(security: Security) -> ssl.SSLContext | None:
    """A client TLS context verifying the server (with the CA bundle, else the system's), with
    our certificate for mutual TLS; None when no TLS file is given."""
    if security.tls_ca is None and security.tls_cert is None:
        if security.tls_key is not None:
            raise CredentialsUnusable("DOCKYARD_NATS_TLS_KEY is set without DOCKYARD_NATS_TLS_CERT")
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(security.tls_ca) if security.tls_ca else None
        )
        if security.tls_cert is not None:
            context.load_cert_chain(
                str(security.tls_cert), str(security.tls_key) if security.tls_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise CredentialsUnusable(f"DOCKYARD_NATS_TLS_*: {exc}") from None
    return context


def wants_tls(security: Security, urls: list[str]) -> bool:
    return (
        security.tls_ca is not None
        or security.tls_cert is not None
        or any(u.startswith("tls://") for u in urls)
    )


def _jwt_inbox_prefix(creds_text: str) -> str | None:
    """The inbox prefix a user JWT allows subscribing under (`<prefix>.>`), if one."""
    lines = [line.strip() for line in creds_text.splitlines()]
    try:
        token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        allowed = claims["nats"]["sub"]["allow"]
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    prefixes = [s[:-2] for s in allowed if s.startswith("_INBOX") and s.endswith(".>")]
    return prefixes[0] if len(prefixes) == 1 else None


_AUTH_REFUSED = ("authorization violation", "authentication", "user authentication expired")
_TLS_REFUSED = ("certificate required", "bad certificate", "certificate unknown", "unknown ca")


def _refusal(exc: Exception, text: str) -> bool:
    """Whether a failed first connection was refused for who we are or who the server is:
    trying again would fail again."""
    if isinstance(exc, ssl.SSLError):  # ours did not verify, or the server refused ours
        return isinstance(exc, ssl.SSLCertVerificationError) or any(s in text for s in _TLS_REFUSED)
    return any(s in text for s in _AUTH_REFUSED)


async def connect(
    url: str,
    name: str,
    *,
    timeout_s: float | None = None,
    security: Security | None = None,
) -> NatsClient:
    """A connected client that reconnects forever.

    The first connection is retried too (a service may start before NATS), for up to
    `timeout_s` (None: forever); then BusUnavailable is raised. CredentialsUnusable is raised
    at once when NATS refuses the credentials, or TLS was asked for and NATS does not offer it
    (waiting would not change either). Close it with `close`.
    """
    safe_url = redact(url)
    fields = {"connection": name, "url": safe_url}
    security = security or Security()
    urls = server_urls(url)
    options = connect_options(security, urls)
    tls_wanted = wants_tls(security, urls)
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        text = str(exc).lower()
        if not nc.is_connected and not refused.done() and _refusal(exc, text):
            refused.set_result(str(exc))
        if "permissions violation" in text:
            log.error(
                "nats.permission_denied connection=%s error=%s",
                name,
                exc,
                extra={"event": "nats.permission_denied", **fields, "error": str(exc)},
            )
            return
        log.warning(
            "nats.error connection=%s url=%s error=%s: %s",
            name,
            safe_url,
            type(exc).__name__,
            exc,
            extra={"event": "nats.error", **fields, "error": repr(exc)},
        )

    async def on_disconnected() -> None:
        if nc.is_closed:
            return  # our own close(): on_closed says so
        log.warning(
            "nats.disconnected connection=%s url=%s",
            name,
            safe_url,
            extra={"event": "nats.disconnected", **fields},
        )

    async def on_reconnected() -> None:
        if tls_wanted and not _tls_offered(nc):
            log.error(
                "nats.tls_downgraded connection=%s url=%s: the server no longer offers TLS",
                name,
                safe_url,
                extra={"event": "nats.tls_downgraded", **fields},
            )
            await nc.close()
            return
        log.info(
            "nats.reconnected connection=%s url=%s server=%s",
            name,
            safe_url,
            redact(nc.connected_url.geturl()) if nc.connected_url else "",
            extra={"event": "nats.reconnected", **fields},
        )

    async def on_closed() -> None:
        log.info("nats.closed connection=%s", name, extra={"event": "nats.closed", **fields})

    nc = NatsClient()
    connecting = asyncio.ensure_future(
        nc.connect(
            urls,
            name=name,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,  # between attempts of the first connection only
            reconnect_to_server_handler=_choose_server,
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            pending_size=PENDING_BYTES,
            **options,
        )
    )
    try:
        async with asyncio.timeout(timeout_s):
            pending: list[asyncio.Future[Any]] = [connecting, refused]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        await _abandon(nc, connecting)
        raise BusUnavailable(f"could not connect to NATS at {safe_url} in {timeout_s}s") from None
    except BaseException:
        await _abandon(nc, connecting)
        raise
    if refused.done() and not connecting.done():
        await _abandon(nc, connecting)
        raise CredentialsUnusable(
            f"NATS at {safe_url} refused {name}'s credentials, or its certificate did not "
            f"verify ({refused.result()}): check DOCKYARD_NATS_CREDS and DOCKYARD_NATS_TLS_*"
        )
    connecting.result()  # its own error, if it failed
    if tls_wanted and not _tls_offered(nc):
        await nc.close()
        raise CredentialsUnusable(
            f"NATS at {safe_url} does not offer TLS, which DOCKYARD_NATS_TLS_CA, _CERT or a "
            "tls:// URL asks for"
        )
    log.info(
        "nats.connected connection=%s url=%s",
        name,
        safe_url,
        extra={"event": "nats.connected", **fields},
    )
    _warn_if_open(nc, name, fields)
    return nc


async def _abandon(nc: NatsClient, connecting: asyncio.Future[None]) -> None:
    connecting.cancel()
    with contextlib.suppress(BaseException):  # cancelled, or its own failure: given up on
        await connecting
    await nc.close()


def _tls_offered(nc: NatsClient) -> bool:
    return bool(nc._server_info.get("tls_required"))  # nats-py has no accessor


def _warn_if_open(nc: NatsClient, name: str, fields: dict[str, str]) -> None:
    """Development mode: one warning at start saying what a NATS without auth leaves open."""
    info = nc._server_info  # nats-py has no accessor
    if info.get("auth_required"):
        return
    unencrypted = "" if info.get("tls_required") else ", and traffic to it is not encrypted"
    log.warning(
        "nats.unprotected connection=%s: NATS requires no credentials, so any client that "
        "reaches it can read every job's spec and secrets, forge claims, reports and logs, "
        "and delete the streams%s (development mode; see docs/operations.md, Credentials)",
        name,
        unencrypted,
        extra={"event": "nats.unprotected", **fields},
    )


def jetstream(
    nc: NatsClient, *, timeout_s: float = 5.0, max_pending_acks: int = 4096
) -> JetStreamContext:
    """The JetStream context of `nc`: API calls time out after `timeout_s`.

    `max_pending_acks` bounds asynchronous publishes awaiting their ack (publish_async). Its
    `get_last_msg` is a direct get (see DirectLastReads).
    """
    return DirectLastReads(nc, timeout=timeout_s, publish_async_max_pending=max_pending_acks)


class DirectLastReads(JetStreamContext):
    """A JetStream context whose `get_last_msg` is always a direct get.

    A direct get of a subject's last message names the subject in the request's own subject
    (`$JS.API.DIRECT.GET.<stream>.<subject>`), so NATS permissions can allow one
    orchestrator its own jobs' log batches and one event type, where the classic
    `$JS.API.STREAM.MSG.GET.<stream>` would let it read any message of the stream (every
    job's spec among them). The streams it is used on allow direct gets (topology.py). On a
    replicated stream any replica may answer, so the read may lag the leader by the
    replication delay.
    """

    async def get_last_msg(
        self, stream_name: str, subject: str, direct: bool | None = True
    ) -> RawStreamMsg:
        return await super().get_last_msg(stream_name, subject, direct=True)


async def close(nc: NatsClient, *, timeout_s: float = 5.0) -> None:
    """Send what is buffered, then close.

    Not nats-py's `drain`: it waits for every subscription's queue to be consumed, which a pull
    subscription whose fetch loop has stopped never is, so it ran into its timeout and then
    logged a cancelled future with a traceback at every shutdown. Nothing here needs the
    messages a subscription still holds: JetStream redelivers what was not acked, and request
    senders retry.
    """
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            await nc.flush(timeout=max(1, round(timeout_s)))
    except (nats.errors.Error, OSError, TimeoutError):  # not connected, or it did not answer
        log.info("nats.flush_failed connection=%s", nc.options.get("name"))
    finally:
        await nc.close()
