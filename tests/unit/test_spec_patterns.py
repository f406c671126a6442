"""Every pattern-bearing field refuses what its grammar does not allow, at any position.

msgspec checks patterns with `re.search`, and Python's `$` also matches before a trailing
newline: `{"queue": "x\\n"}` once passed, was stored, and its NATS subject stopped the outbox
for every tenant (security review F5). A field that is refused names itself in the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.core.spec import QUEUE, QueueName, SpecError, convert_spec, decode_spec
from dockyard.scheduler.schedules import parse_schedule

NOW = datetime(2026, 12, 1, tzinfo=UTC)
# Characters some grammar refuses; each field below says which of them it allows.
SPECIAL = ("\n", "\x00", " ", ".", "*", ">", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029")
ANY_TEXT = frozenset(" .*>")  # free text: only control characters and line separators are out
DOT = frozenset(".")  # image references, label keys, users and schedule names have dots


@dataclass(frozen=True)
class Field:
    field: str  # what `details.field` says
    place: Callable[[str], dict[str, Any]]  # the body with the value where the field is
    valid: tuple[str, ...]  # values the field accepts
    allows: frozenset[str] = frozenset()  # which SPECIAL characters its grammar allows
    schedule: bool = False  # a schedule's body (else a job spec)


def job(**fields: Any) -> dict[str, Any]:
    return {"image": "busybox", **fields}


def sidecar(**fields: Any) -> dict[str, Any]:
    return job(sidecars=[{"name": "db", "image": "postgres", **fields}])


def schedule(**fields: Any) -> dict[str, Any]:
    return {"name": "nightly", "interval_s": 60, "job": job(), **fields}


IMAGES = ("busybox", "registry.example.com:5000/team/app:1.2.3", "x@sha256:" + "a" * 64)
FIELDS = [
    Field("image", lambda v: {"image": v}, IMAGES, DOT),
    Field("queue", lambda v: job(queue=v), ("default", "gpu_1", "a-b")),
    Field("env", lambda v: job(env={v: "x"}), ("A", "TOKEN_1", "_x")),
    Field("secrets[0]", lambda v: job(env={"A": "x"}, secrets=[v]), ("A",)),
    Field("labels", lambda v: job(labels={v: "x"}), ("team", "app.kubernetes.io/name"), DOT),
    Field("labels[...]", lambda v: job(labels={"k": v}), ("x", "a b = c", ""), ANY_TEXT),
    Field("user", lambda v: job(user=v), ("65534:65534", "nobody", "app.user"), DOT),
    Field("workdir", lambda v: job(workdir=v), ("/work", "/tmp/a b.c"), ANY_TEXT),
    Field("idempotency_key", lambda v: job(idempotency_key=v), ("k1", "a b.*>"), ANY_TEXT),
    Field("sidecars[0].name", lambda v: sidecar(name=v), ("db", "redis-1")),
    Field("sidecars[0].image", lambda v: sidecar(image=v), IMAGES, DOT),
    Field("sidecars[0].env", lambda v: sidecar(env={v: "x"}), ("PGPASSWORD",)),
    Field("sidecars[0].secrets[0]", lambda v: sidecar(env={"A": "x"}, secrets=[v]), ("A",)),
    Field("name", lambda v: schedule(name=v), ("nightly", "db.backup-1"), DOT, True),
    Field(
        "cron",
        lambda v: schedule(interval_s=None, cron=v),
        ("0 3 * * *", "*/5 * * * 1-5"),
        frozenset(" .*>"),  # a space may separate fields; croniter judges the rest
        True,
    ),
    Field("job.queue", lambda v: schedule(job=job(queue=v)), ("default",), schedule=True),
]
IDS = [f.field for f in FIELDS]


def refusal(field: Field, value: str) -> SpecError | None:
    """The error the body gets with `value` in the field, through every decoding path."""
    body = field.place(value)
    raw = json.dumps(body).encode()
    if field.schedule:
        body = {k: v for k, v in body.items() if v is not None}
        return _raised(lambda: parse_schedule(msgspec.json.encode(body), "acme", NOW))
    by_bytes = _raised(lambda: decode_spec(raw))
    by_object = _raised(lambda: convert_spec(body))
    assert _said(by_bytes) == _said(by_object)  # the HTTP body and a schedule's job agree
    return by_bytes


def _raised(decode: Callable[[], object]) -> SpecError | None:
    try:
        decode()
    except SpecError as error:
        return error
    return None


def _said(error: SpecError | None) -> tuple[str, str] | None:
    return None if error is None else (error.field, error.message)


@pytest.mark.parametrize("field", FIELDS, ids=IDS)
def test_the_valid_values_are_accepted(field: Field) -> None:
    for value in field.valid:
        assert refusal(field, value) is None, value


@st.composite
def spoiled(draw: st.DrawFn, field: Field) -> str:
    """A valid value with a character its grammar refuses inserted anywhere, the end too."""
    base = draw(st.sampled_from(field.valid))
    refused = [c for c in SPECIAL if c not in field.allows]
    bad = draw(st.sampled_from(refused) | st.characters(categories=["Cc"]))
    at = draw(st.integers(0, len(base)))
    return base[:at] + bad + base[at:]


@pytest.mark.parametrize("field", FIELDS, ids=IDS)
def test_a_refused_character_anywhere_is_a_422_naming_the_field(field: Field) -> None:
    @given(value=spoiled(field))
    def check(value: str) -> None:
        error = refusal(field, value)
        assert error is not None, f"{field.field} accepted {value!r}"
        assert error.field == field.field
        assert "regex" not in error.message  # the hint, in words, not the pattern

    check()


@pytest.mark.parametrize("field", FIELDS, ids=IDS)
def test_a_trailing_newline_is_refused(field: Field) -> None:
    for value in field.valid:
        error = refusal(field, value + "\n")
        assert error is not None and error.field == field.field, value


@given(st.text(max_size=70))
def test_any_queue_accepted_is_a_nats_subject_token(value: str) -> None:
    try:
        msgspec.convert(value, QueueName)
    except msgspec.ValidationError:
        assert re.fullmatch(QUEUE, value) is None
    else:
        assert re.fullmatch(QUEUE, value) is not None
        assert not set(value) & set(" .*>\r\n\t\x00")


def _patterns(document: object) -> list[str]:
    if isinstance(document, dict):
        own = [v for k, v in document.items() if k == "pattern" and isinstance(v, str)]
        return own + [p for v in document.values() for p in _patterns(v)]
    if isinstance(document, list):
        return [p for v in document for p in _patterns(v)]
    return []


def test_every_schema_pattern_refuses_a_trailing_newline() -> None:
    """What the documents promise, also to a Python validator whose `$` is lenient."""
    schemas = Path(__file__).resolve().parents[2] / "schemas"
    patterns = {
        p
        for name in ("job-spec.json", "openapi.json")
        for p in _patterns(json.loads((schemas / name).read_text()))
    }
    assert patterns
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("$(?!\\n)"), pattern
        assert re.search(pattern, "default\n") is None, pattern
