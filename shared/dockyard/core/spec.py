"""The job spec: what a user asks to run, decoded strictly at the HTTP edge."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from dockyard.core.reasons import RETRYABLE_REASONS, Reason

# Bounds a demanding operator would want enforced before anything is stored.
MIN_MEMORY_MB = 6  # the engine itself refuses less than 6 MiB
MIN_CPUS = 0.01  # and less than a hundredth of a CPU
MAX_SIDECARS = 8
MAX_NAME = 63
# Masking a log replaces each secret's text: a secret this short would mask ordinary words.
MIN_SECRET_CHARS = 6

PullPolicy = Literal["if_not_present", "always", "never"]
NetworkMode = Literal["none", "isolated", "egress"]


def anchored(body: str) -> str:
    r"""`^body$` that also refuses a trailing newline. msgspec searches patterns (`re.search`),
    and Python's `$` matches before a final `\n` too; `(?!\n)` closes that and means the same
    to JavaScript, so the JSON Schemas hold the very pattern the code checks."""
    return f"^(?:{body})$(?!\\n)" if "|" in body else f"^{body}$(?!\\n)"


# One character of free text that reaches a label, a log or a file name: no control
# characters (C0, DEL, C1) and no Unicode line or paragraph separator.
TEXT_CHAR = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
ENV_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
LABEL_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}"
MAX_LABEL_VALUE = 256
QUEUE = r"[A-Za-z0-9_-]{1,64}"  # a NATS subject token: never `.`, `*`, `>` or a space

EnvKey = Annotated[str, Meta(pattern=anchored(ENV_KEY), max_length=256)]
LabelKey = Annotated[str, Meta(pattern=anchored(LABEL_KEY))]
LabelValue = Annotated[str, Meta(pattern=anchored(f"{TEXT_CHAR}*"), max_length=MAX_LABEL_VALUE)]
# [domain[:port]/]component[/component...][:tag][@digest], as the engine parses it. Written so
# that no two quantifiers can match the same text: a backtracking regex engine stays linear, and
# a hostile 512-character image name costs microseconds, not minutes (schemathesis found one).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = anchored(
    r"(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,})?"
)
ImageRef = Annotated[str, Meta(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
# An RFC 3339 time; the pattern makes the document checkable (JSON Schema's format is advisory).
Timestamp = Annotated[
    datetime,
    Meta(
        extra_json_schema={
            "format": "date-time",
            "pattern": anchored(
                r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
            ),
        }
    ),
]
SidecarName = Annotated[str, Meta(pattern=anchored(r"[a-z][a-z0-9-]{0,62}"))]
QueueName = Annotated[str, Meta(pattern=anchored(QUEUE))]
Workdir = Annotated[str, Meta(pattern=anchored(f"/{TEXT_CHAR}{{0,1023}}"))]
User = Annotated[str, Meta(pattern=anchored(r"[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?"))]
IdempotencyKey = Annotated[
    str, Meta(min_length=1, max_length=256, pattern=anchored(f"{TEXT_CHAR}*"))
]
Command = Annotated[list[Annotated[str, Meta(max_length=65536)]], Meta(max_length=4096)]


class Resources(Struct, frozen=True, forbid_unknown_fields=True):
    cpus: Annotated[float, Meta(gt=0, le=256)] = 1.0
    memory_mb: Annotated[int, Meta(ge=MIN_MEMORY_MB, le=1_048_576)] = 512
    pids: Annotated[int, Meta(ge=1, le=65536)] = 256


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True):
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 1
    backoff_s: Annotated[float, Meta(ge=0, le=86_400)] = 1.0
    backoff_factor: Annotated[float, Meta(ge=1, le=10)] = 2.0
    max_backoff_s: Annotated[float, Meta(ge=0, le=86_400)] = 300.0
    on: tuple[Reason, ...] = RETRYABLE_REASONS
    exit_codes: tuple[Annotated[int, Meta(ge=0, le=255)], ...] | None = None


class Sidecar(Struct, frozen=True, forbid_unknown_fields=True):
    name: SidecarName
    image: ImageRef
    command: Command | None = None
    env: dict[EnvKey, str] = {}
    secrets: tuple[EnvKey, ...] = ()


class JobSpec(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=False):
    image: ImageRef
    command: Command | None = None
    env: dict[EnvKey, str] = {}
    secrets: tuple[EnvKey, ...] = ()
    workdir: Workdir = "/work"
    user: User = "65534:65534"
    timeout_s: Annotated[float, Meta(gt=0, le=7 * 86_400)] = 3600.0
    resources: Resources = Resources()
    retry: RetryPolicy = RetryPolicy()
    network: NetworkMode = "none"
    sidecars: tuple[Sidecar, ...] = ()
    read_only: bool = True
    pull: PullPolicy = "if_not_present"
    queue: QueueName = "default"
    labels: dict[LabelKey, LabelValue] = {}
    idempotency_key: IdempotencyKey | None = None
    run_at: Timestamp | None = None

    @property
    def effective_network(self) -> NetworkMode:
        """Sidecars need a network shared with the job, so they imply `isolated`."""
        if self.sidecars and self.network == "none":
            return "isolated"
        return self.network


class SpecError(ValueError):
    """Raised when a spec decodes but breaks a rule that spans fields; names the field."""

    def __init__(self, field: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.details = details or {}  # more for the 422's `details`, e.g. a maximum


_spec_decoder = msgspec.json.Decoder(JobSpec)
_PATH = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<name>[^`]*)`")


def decode_spec(body: bytes) -> JobSpec:
    """Decode and check a spec from JSON; raises SpecError naming the offending field."""
    try:
        spec = _spec_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    check_spec(spec)
    return spec


def convert_spec(obj: object) -> JobSpec:
    """Like decode_spec, for an already-parsed JSON value (e.g. a schedule's `job`)."""
    try:
        spec = msgspec.convert(integral_floats_as_ints(obj), JobSpec)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    check_spec(spec)
    return spec


def integral_floats_as_ints(obj: object) -> object:
    """JSON has one number type: `256.0` is the integer 256 to a JSON Schema, and to us."""
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {k: integral_floats_as_ints(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [integral_floats_as_ints(v) for v in obj]
    return obj


def check_spec(spec: JobSpec) -> None:
    _check_secrets("", spec.env, spec.secrets)
    for index, sidecar in enumerate(spec.sidecars):
        _check_secrets(f"sidecars[{index}].", sidecar.env, sidecar.secrets)
    if len(spec.sidecars) > MAX_SIDECARS:
        raise SpecError("sidecars", f"at most {MAX_SIDECARS} sidecars are allowed")
    names = [s.name for s in spec.sidecars]
    if len(set(names)) != len(names):
        raise SpecError("sidecars", "sidecar names must be unique")
    if spec.retry.max_backoff_s < spec.retry.backoff_s:
        raise SpecError("retry.max_backoff_s", "max_backoff_s must be at least backoff_s")
    if spec.run_at is not None and spec.run_at.tzinfo is None:
        raise SpecError("run_at", "run_at needs a time zone offset (RFC 3339)")
    _check_share(spec)


def container_share(spec: JobSpec) -> Resources:
    """What each container of an attempt gets: `resources` is the budget of the job and its
    sidecars together, split equally (so sidecars never multiply it)."""
    count = 1 + len(spec.sidecars)
    whole = spec.resources
    if count == 1:
        return whole
    return Resources(
        cpus=whole.cpus / count, memory_mb=whole.memory_mb // count, pids=whole.pids // count
    )


def _check_share(spec: JobSpec) -> None:
    """A budget too small to split: each container needs what the engine accepts at least."""
    count = 1 + len(spec.sidecars)
    if count == 1:
        return
    whole = spec.resources
    for field, value, least in (
        ("cpus", whole.cpus, MIN_CPUS),
        ("memory_mb", whole.memory_mb, MIN_MEMORY_MB),
        ("pids", whole.pids, 1),
    ):
        if value < least * count:
            raise SpecError(
                f"resources.{field}",
                f"the job and its {count - 1} sidecar(s) share resources.{field} equally, so "
                f"it must be at least {least * count:g} ({least:g} each)",
            )


def _check_secrets(prefix: str, env: dict[str, str], secrets: tuple[str, ...]) -> None:
    for key in secrets:
        if key not in env:
            raise SpecError(f"{prefix}secrets", f"secret {key!r} names no key of {prefix}env")


def check_secret_lengths(spec: JobSpec, prefix: str = "") -> None:
    """At submit: every secret value at least MIN_SECRET_CHARS long (not in `check_spec`:
    a job stored earlier with a shorter one still runs)."""
    places = [("", spec.env, spec.secrets)]
    places += [(f"sidecars[{i}].", s.env, s.secrets) for i, s in enumerate(spec.sidecars)]
    for where, env, secrets in places:
        for key in secrets:
            if len(env.get(key, "")) < MIN_SECRET_CHARS:
                raise SpecError(
                    f"{prefix}{where}env.{key}",
                    f"secret {key!r} is shorter than {MIN_SECRET_CHARS} characters: too short "
                    "to mask in logs without masking ordinary text",
                )


def validation_error(text: str) -> SpecError:
    """Turn msgspec's `... - at `$.a.b[0]`` into a field path `a.b[0]` and a message."""
    match = _PATH.search(text)
    field = match["path"].lstrip(".") if match else ""
    message = text[: match.start()] if match else text
    named = _NAMED.match(message)
    if named is not None:
        # msgspec names the offending key in the message and its parent in the path.
        field = f"{field}.{named['name']}" if field else named["name"]
        message = (
            f"unknown field {named['name']!r}"
            if named["what"] == "contains unknown"
            else f"{named['name']!r} is required"
        )
    elif "matching regex" in message:
        message = pattern_hint(field, message)
    return SpecError(field, message)


def pattern_hint(field: str, default: str) -> str:
    """What the pattern of `field` allows, in words (msgspec's own message quotes the regex)."""
    generic = re.sub(r"\[\d+\]", "", field)  # sidecars[0].name -> sidecars.name
    return _PATTERN_HINTS.get(generic, _PATTERN_HINTS.get(generic.rsplit(".")[-1], default))


_NO_CONTROL = "no control characters (newline, tab, NUL...)"
_PATTERN_HINTS = {
    "image": "not a valid image reference: name[:tag][@digest], lower-case",
    "env": "environment keys are letters, digits and _, not starting with a digit",
    "secrets": "secret names are environment keys: letters, digits and _",
    "sidecars.name": "sidecar names are lower-case letters, digits and -, starting with a letter",
    "name": "names are letters, digits and _ . -, starting with a letter or digit, at most 63",
    "queue": "queue names are letters, digits, _ and -, at most 64",
    "labels": "label keys are letters, digits and . _ / -, at most 128",
    "labels[...]": f"label values are text with {_NO_CONTROL}",
    "user": "user is NAME or UID[:GID]",
    "workdir": f"workdir must be an absolute path with {_NO_CONTROL}",
    "idempotency_key": f"idempotency_key is text with {_NO_CONTROL}",
    "cron": "not a 5-field cron expression (minute hour day month weekday, separated by spaces)",
}
