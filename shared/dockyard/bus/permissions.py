"""Who may publish and subscribe to what on NATS: one allow-list per role, in one table.

Each service connects as its own NATS user (see stack/nats_credentials.py); the user's
permissions are these lists, built from the names in bus/names.py. Anything not allowed is
refused by the server ("Permissions Violation"). The table follows what each service's code
really calls (every `js.`/`nc.` call in services/ and bus/), and the rules of issue #19:

- Only the scheduler creates streams, durable consumers and buckets (`ensure_topology`, and the
  one stream delete of the legacy-offers move); the other roles only verify that they exist.
- Pull consumers are governed by *publish* rights on `$JS.API.CONSUMER.MSG.NEXT.<stream>.<name>`
  (and on `$JS.ACK.<stream>.<name>.>` for the acks), not by subscribe rights: an orchestrator
  gets them for its own queues' offer consumers only.
- Whoever may subscribe to `_INBOX.>` reads every reply (claim answers carry job specs): every
  role has an inbox prefix of its own (`inbox_prefix`), which the client passes to nats-py, and
  may subscribe there only.
- `allow_responses` only for the scheduler, which answers claim requests.
- An orchestrator claims, reports and publishes logs only under its own subject token, and
  heartbeats only its own key, so the receivers can bind identity to the subject (F2).

A subscribe entry may name a queue group (`"subject group"`): the scheduler may take claims only
in the `schedulers` group, never as a lone listener beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from dockyard.bus import names

Role = Literal["scheduler", "log-relay", "janitor", "orchestrator", "admin"]
ROLES: Final[tuple[Role, ...]] = ("scheduler", "log-relay", "janitor", "orchestrator", "admin")
SERVICE_ROLES: Final[tuple[Role, ...]] = ("scheduler", "log-relay", "janitor", "orchestrator")

# JetStream's API prefix and the subjects of KV buckets (nats-py builds these too).
API: Final = "$JS.API"
_KV_STREAM: Final = "KV_{bucket}"

# How many replies a responder may send to one request, and for how long.
RESPONSES_MAX: Final = 1
RESPONSES_EXPIRE_S: Final = 60.0

# An orchestrator's name must be one subject token, a KV key and an inbox prefix as it is:
# two names must never share a subject (subject_token would map "a.b" and "a_b" to one).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class InvalidIdentityName(ValueError):
    """Raised when an identity's name could not be its own subject token, key and inbox."""


def check_name(name: str) -> str:
    """`name` itself if it may name an orchestrator identity; else InvalidIdentityName."""
    if _NAME.fullmatch(name) is None:
        raise InvalidIdentityName(
            f"{name!r}: an identity's name is 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Permissions:
    """One NATS user's allow-lists; `responses` > 0 adds allow_responses for that many."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    inbox_prefix: str
    responses: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)

    def allows_publish(self, subject: str) -> bool:
        return any(matches(p, subject) for p in self.publish)

    def allows_subscribe(self, subject: str, queue: str = "") -> bool:
        return any(_sub_entry_allows(entry, subject, queue) for entry in self.subscribe)


def inbox_prefix(role: Role, name: str | None = None) -> str:
    """The role's inbox prefix: replies to it land under `<prefix>.>` only."""
    base = f"_INBOX_{role.replace('-', '_')}"
    return f"{base}_{names.subject_token(name)}" if name else base


# --- the subjects, built from names.py -------------------------------------------------------


def _api(verb: str, *rest: str) -> str:
    return ".".join((API, verb, *rest))


def _stream_info(stream: str) -> str:
    return _api("STREAM.INFO", stream)


def _msg_get(stream: str) -> str:
    return _api("STREAM.MSG.GET", stream)


def _direct_get(stream: str, subject: str) -> str:
    return _api("DIRECT.GET", stream, subject)


def _consumer_info(stream: str, consumer: str) -> str:
    return _api("CONSUMER.INFO", stream, consumer)


def _pull(stream: str, consumer: str) -> list[str]:
    """What pulling from one durable takes: the next-message requests and the acks."""
    return [_api("CONSUMER.MSG.NEXT", stream, consumer), f"$JS.ACK.{stream}.{consumer}.>"]


def kv_stream(bucket: str) -> str:
    return _KV_STREAM.format(bucket=bucket)


def _kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def own_logs(orchestrator: str) -> str:
    """Every log subject of one orchestrator's jobs."""
    return f"dockyard.logs.{names.subject_token(orchestrator)}.*"


CANCELS: Final = names.events_of_type("cancel_requested")
CLAIMED_EVENTS: Final = names.events_of_type("job_claimed")
CONTROL_ALL: Final = "dockyard.control.*"


def _read_meta() -> list[str]:
    """Reading the installation's id (deployment.py): the meta bucket's info and its key."""
    stream = kv_stream(names.META_BUCKET)
    return [_stream_info(stream), _msg_get(stream)]


# --- the table -------------------------------------------------------------------------------


def _scheduler(name: str | None, queues: Sequence[str]) -> Permissions:
    streams = [names.EVENTS_STREAM, names.REPORTS_STREAM, names.LOGS_STREAM]
    buckets = [kv_stream(names.HEARTBEATS_BUCKET), kv_stream(names.META_BUCKET)]
    legacy = names.LEGACY_WORK_STREAM
    return Permissions(
        publish=(
            # ensure_topology: its streams and buckets, nothing else.
            *(_api(verb, s) for s in [*streams, *buckets] for verb in _CREATE_VERBS),
            _api("CONSUMER.DURABLE.CREATE", names.REPORTS_STREAM, names.REPORTS_DURABLE),
            _api("CONSUMER.DURABLE.CREATE", names.LOGS_STREAM, names.LOGS_DURABLE),
            # Offer durables of any queue: a wildcard is a whole token, so any durable on EVENTS.
            _api("CONSUMER.DURABLE.CREATE", names.OFFERS_STREAM, "*"),
            # The move of an earlier version's offers (legacy_offers.py): its one delete.
            _stream_info(legacy),
            _msg_get(legacy),
            _api("STREAM.DELETE", legacy),
            # The installation's id: made once (deployment.py).
            *_read_meta(),
            _kv_subject(names.META_BUCKET, names.DEPLOYMENT_KEY),
            # The outbox relay: events and the offers beside them.
            names.EVENTS_SUBJECTS,
            names.OFFERS_SUBJECTS,
            # Report batches and their acks; stop orders to orchestrators.
            *_pull(names.REPORTS_STREAM, names.REPORTS_DURABLE),
            CONTROL_ALL,
            # A claim of a later attempt: the job's last batch still on LOGS, from whoever
            # sent it (claims.last_streamed_seq), so that its lines are numbered after it.
            _direct_get(names.LOGS_STREAM, ">"),
        ),
        subscribe=(f"{names.CLAIMS_SUBJECTS} {names.CLAIMS_QUEUE_GROUP}", _inbox("scheduler")),
        inbox_prefix=inbox_prefix("scheduler"),
        responses=RESPONSES_MAX,
    )


# Create-or-update and read a stream's config: nothing that removes or purges.
_CREATE_VERBS: Final = ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO")


def _log_relay(name: str | None, queues: Sequence[str]) -> Permissions:
    logs = names.LOGS_STREAM
    return Permissions(
        publish=(
            # The persister's durable (verified at start, pulled, acked, its gauge).
            _consumer_info(logs, names.LOGS_DURABLE),
            *_pull(logs, names.LOGS_DURABLE),
            # Completion: the last batch a job has in the stream (a direct get, connection.py),
            # and on a cluster the stream's head and replicas as its leader tells them.
            _direct_get(logs, ">"),
            _stream_info(logs),
            # Live tails: ephemeral pull consumers on LOGS only, made and removed by the relay.
            _api("CONSUMER.CREATE", logs, ">"),
            _api("CONSUMER.DELETE", logs, "*"),
            _api("CONSUMER.MSG.NEXT", logs, "*"),
        ),
        # A log page follows its job's events (room.py); the relay reads PostgreSQL anyway.
        subscribe=(names.EVENTS_SUBJECTS, _inbox("log-relay")),
        inbox_prefix=inbox_prefix("log-relay"),
    )


def _janitor(name: str | None, queues: Sequence[str]) -> Permissions:
    heartbeats = kv_stream(names.HEARTBEATS_BUCKET)
    return Permissions(
        publish=(
            *_read_meta(),
            # Lost orchestrators: every heartbeat (read only).
            _stream_info(heartbeats),
            _msg_get(heartbeats),
            # Idle queues, and reports still waiting.
            _consumer_info(names.OFFERS_STREAM, "*"),
            _msg_get(names.REPORTS_STREAM),
            # Re-offers, and whether EVENTS still takes them (not changing it: the scheduler
            # puts the offers' subjects back, topology.restore_offer_subjects).
            names.OFFERS_SUBJECTS,
            _stream_info(names.EVENTS_STREAM),
        ),
        subscribe=(_inbox("janitor"),),
        inbox_prefix=inbox_prefix("janitor"),
    )


def _orchestrator(name: str | None, queues: Sequence[str]) -> Permissions:
    if not name:
        raise InvalidIdentityName("an orchestrator identity needs its name")
    check_name(name)
    heartbeats = kv_stream(names.HEARTBEATS_BUCKET)
    offers: list[str] = []
    for queue in dict.fromkeys(queues):
        durable = names.offer_durable(queue)
        offers += [
            _consumer_info(names.OFFERS_STREAM, durable),
            *_pull(names.OFFERS_STREAM, durable),
        ]
    return Permissions(
        publish=(
            *_read_meta(),
            # Its queues' offers: verify the durable, pull, ack.
            *offers,
            # Claims, reports and logs as itself only.
            names.claim_subject(name),
            names.report_batch_subject(name),
            own_logs(name),
            # Its heartbeat: its own key only.
            _stream_info(heartbeats),
            _kv_subject(names.HEARTBEATS_BUCKET, names.heartbeat_key(name)),
            # Its own jobs' last log batch, and one job's last claim or cancel: direct gets
            # whose subject is in the API subject, so no other job's spec can be read.
            _direct_get(names.LOGS_STREAM, own_logs(name)),
            _direct_get(names.EVENTS_STREAM, CANCELS),
            _direct_get(names.EVENTS_STREAM, CLAIMED_EVENTS),
        ),
        subscribe=(CANCELS, names.control_subject(name), _inbox("orchestrator", name)),
        inbox_prefix=inbox_prefix("orchestrator", name),
    )


def _admin(name: str | None, queues: Sequence[str]) -> Permissions:
    """The operator's own identity (the `nats` CLI, repairs): everything. No service uses it."""
    return Permissions(publish=(">",), subscribe=(">",), inbox_prefix="_INBOX")


Builder = Callable[[str | None, Sequence[str]], Permissions]

#: THE table: role -> its allow-lists. Everything a service may do on NATS is here.
TABLE: Final[Mapping[Role, Builder]] = {
    "scheduler": _scheduler,
    "log-relay": _log_relay,
    "janitor": _janitor,
    "orchestrator": _orchestrator,
    "admin": _admin,
}


def for_role(
    role: Role, name: str | None = None, queues: Iterable[str] = ("default",)
) -> Permissions:
    """The permissions of `role` (an orchestrator's: of `name`, serving `queues`)."""
    try:
        builder = TABLE[role]
    except KeyError:
        raise InvalidIdentityName(f"no such role: {role!r} (one of {', '.join(ROLES)})") from None
    return builder(name, tuple(queues))


def _inbox(role: Role, name: str | None = None) -> str:
    return f"{inbox_prefix(role, name)}.>"


# --- matching, as the server does it ---------------------------------------------------------


def matches(pattern: str, subject: str) -> bool:
    """Whether the subject (or subscription subject) `subject` is inside `pattern`.

    Tokens: `*` matches one, `>` the rest (one or more). A wildcard in `subject` is inside the
    pattern only where the pattern has the same or a wider wildcard, as the server judges a
    subscription against an allow-list.
    """
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have):
            return False
        if token == "*":
            if have[i] == ">":
                return False
            continue
        if token != have[i]:
            return False
    return len(have) == len(want)


def _sub_entry_allows(entry: str, subject: str, queue: str) -> bool:
    pattern, _, group = entry.partition(" ")
    if group and group != queue:
        return False
    return matches(pattern, subject)
