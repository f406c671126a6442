"""Sealed secrets (security review F4): what the scheduler seals only the job it was sealed
for opens, with a key the opener has; tampering, another job's id, another env key or a
retired key all fail in words, never with the value, the key or a traceback."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dockyard.core.spec import JobSpec, SpecError, check_secret_lengths
from dockyard.runtime.lines import SecretMasker
from dockyard.sealing import (
    KeyFileError,
    KeyRing,
    SealError,
    UnknownKey,
    is_sealed,
    job_scope,
    load_key_ring,
    new_key_text,
    open_spec,
    reseal_spec,
    schedule_scope,
    seal_spec,
)

NEW, OLD = os.urandom(32), os.urandom(32)
RING = KeyRing.of(NEW, holder="orchestrator")
SECRET = "s3cr3t-VALUE"
SIDECAR_SECRET = "pg-s3cr3t"


def spec() -> JobSpec:
    return msgspec.convert(
        {
            "image": "app",
            "env": {"TOKEN": SECRET, "OTHER": SECRET, "PLAIN": "shown"},
            "secrets": ["TOKEN", "OTHER"],
            "sidecars": [
                {"name": "db", "image": "pg", "env": {"PW": SIDECAR_SECRET}, "secrets": ["PW"]}
            ],
        },
        JobSpec,
    )


@given(st.text(), st.text())
def test_a_sealed_value_opens_back_to_itself_and_does_not_show_it(value: str, ad: str) -> None:
    sealed = RING.seal(value, ad)
    assert is_sealed(sealed) and sealed.startswith(f"sealed:v1:{RING.keys[0].id}:")
    assert RING.open(sealed, ad) == value
    if len(value) >= 4:
        assert value not in sealed


@given(st.text(), st.data())
def test_any_altered_byte_of_a_sealed_value_fails_to_open(value: str, data: st.DataObject) -> None:
    head, _, body = RING.seal(value, "job:1:env.TOKEN").rpartition(":")
    box = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    index = data.draw(st.integers(0, len(box) - 1))
    box[index] ^= data.draw(st.integers(1, 255))
    altered = f"{head}:{base64.urlsafe_b64encode(bytes(box)).decode().rstrip('=')}"
    with pytest.raises(SealError, match="altered"):
        RING.open(altered, "job:1:env.TOKEN")


@given(st.text(), st.text(), st.text())
def test_a_value_does_not_open_under_other_associated_data(value: str, ad: str, other: str) -> None:
    if ad == other:
        return
    with pytest.raises(SealError, match="altered, or belongs to another job"):
        RING.open(RING.seal(value, ad), other)


def test_a_rotated_ring_seals_with_the_new_key_and_opens_the_old() -> None:
    old_ring, rotated = KeyRing.of(OLD), KeyRing.of(NEW, OLD)
    old = old_ring.seal(SECRET, "ad")
    assert rotated.open(old, "ad") == SECRET
    assert rotated.seal(SECRET, "ad").split(":")[2] == KeyRing.of(NEW).keys[0].id


def test_a_key_nobody_has_any_more_fails_in_words() -> None:
    sealed = KeyRing.of(OLD).seal(SECRET, "ad")
    with pytest.raises(UnknownKey) as caught:
        RING.open(sealed, "ad")
    assert str(caught.value) == (
        "its secrets were sealed with a key this orchestrator does not have"
    )


@pytest.mark.parametrize(
    "text",
    ["sealed:", "sealed:v1:abc", "sealed:v1:abc:!!!", "sealed:v1:abc:AAAA", "sealed:v1:a:b:c"],
)
def test_a_malformed_sealed_value_fails_in_words(text: str) -> None:
    with pytest.raises(SealError, match="malformed"):
        RING.open(text, "ad")


def test_an_unknown_version_is_named() -> None:
    sealed = RING.seal(SECRET, "ad").replace(":v1:", ":v9:")
    with pytest.raises(SealError, match="version 'v9'"):
        RING.open(sealed, "ad")


def test_nothing_shows_the_key() -> None:
    assert base64.b64encode(NEW).decode() not in repr(RING) + repr(RING.keys[0])


def test_a_spec_is_sealed_for_its_job_and_opens_only_there() -> None:
    sealed = seal_spec(spec(), RING, job_scope("job-1"))
    assert all(is_sealed(sealed.env[k]) for k in ("TOKEN", "OTHER"))
    assert sealed.env["PLAIN"] == "shown"
    assert is_sealed(sealed.sidecars[0].env["PW"])
    assert SECRET not in msgspec.json.encode(sealed).decode()
    assert open_spec(sealed, RING, job_scope("job-1")) == spec()
    with pytest.raises(SealError):
        open_spec(sealed, RING, job_scope("job-2"))  # copied into another job


def test_a_sealed_value_moved_to_another_key_does_not_open() -> None:
    sealed = seal_spec(spec(), RING, job_scope("job-1"))
    swapped = msgspec.structs.replace(
        sealed, env={**sealed.env, "OTHER": sealed.env["TOKEN"], "TOKEN": sealed.env["OTHER"]}
    )
    with pytest.raises(SealError):
        open_spec(swapped, RING, job_scope("job-1"))


def test_plaintext_stored_before_sealing_still_opens_as_it_is() -> None:
    assert open_spec(spec(), RING, job_scope("job-1")) == spec()
    assert open_spec(spec(), None, job_scope("job-1")) == spec()


def test_without_a_key_a_sealed_spec_does_not_open() -> None:
    sealed = seal_spec(spec(), RING, job_scope("job-1"))
    with pytest.raises(UnknownKey, match="DOCKYARD_SECRETS_KEY is not set"):
        open_spec(sealed, None, job_scope("job-1"))


def test_a_schedule_template_is_sealed_again_for_each_fired_job() -> None:
    template = seal_spec(spec(), RING, schedule_scope("acme", "nightly"))
    fired = reseal_spec(template, RING, schedule_scope("acme", "nightly"), job_scope("j-7"))
    assert open_spec(fired, RING, job_scope("j-7")) == spec()
    with pytest.raises(SealError):
        open_spec(template, RING, job_scope("j-7"))
    # A template stored before sealing: its plaintext is sealed for the job.
    legacy = reseal_spec(spec(), RING, schedule_scope("acme", "nightly"), job_scope("j-8"))
    assert is_sealed(legacy.env["TOKEN"])


def test_a_value_that_looks_sealed_is_the_tenants_text_and_sealed_again() -> None:
    looks = msgspec.structs.replace(spec(), env={**spec().env, "TOKEN": "sealed:v1:x:y"})
    sealed = seal_spec(looks, RING, job_scope("j"))
    assert open_spec(sealed, RING, job_scope("j")).env["TOKEN"] == "sealed:v1:x:y"


def test_key_files_new_and_old(tmp_path: Path) -> None:
    new, old = tmp_path / "new.key", tmp_path / "old.key"
    new.write_text(new_key_text())
    old.write_text(base64.b64encode(OLD).decode() + "\n")
    ring = load_key_ring(f"{new}, {old}", "scheduler")
    assert len(ring.keys) == 2
    assert ring.open(KeyRing.of(OLD).seal(SECRET, "ad"), "ad") == SECRET


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read"),
        ("not base64 at all! s3cr3t", "does not hold a key"),
        (base64.b64encode(b"short").decode(), "does not hold a key"),
    ],
)
def test_an_unusable_key_file_is_named_and_its_content_is_not(
    tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "secrets.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeyFileError, match=why) as caught:
        load_key_ring(str(path), "scheduler")
    assert str(path) in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "c2hvcnQ" not in str(caught.value)


def test_an_empty_setting_names_no_file() -> None:
    with pytest.raises(KeyFileError, match="names no file"):
        load_key_ring(" , ", "scheduler")


def test_secrets_shorter_than_six_characters_are_refused_naming_the_field() -> None:
    short = msgspec.structs.replace(spec(), env={**spec().env, "OTHER": "12345"})
    with pytest.raises(SpecError) as caught:
        check_secret_lengths(short, "job.")
    assert caught.value.field == "job.env.OTHER"
    sidecar = msgspec.structs.replace(spec().sidecars[0], env={"PW": "abc"})
    with pytest.raises(SpecError) as caught:
        check_secret_lengths(msgspec.structs.replace(spec(), sidecars=(sidecar,)))
    assert caught.value.field == "sidecars[0].env.PW"
    check_secret_lengths(spec())


@pytest.mark.parametrize(
    "shown",
    [
        base64.b64encode(b"p@ss word/+1").decode(),
        base64.urlsafe_b64encode(b"p@ss word/+1").decode(),
        "p%40ss%20word%2F%2B1",
        "p%40ss+word%2F%2B1",
    ],
)
def test_masking_also_covers_the_base64_and_url_encoded_forms(shown: str) -> None:
    masker = SecretMasker(["p@ss word/+1"])
    assert "***" in masker.mask(f"Authorization: {shown}")
    assert shown.rstrip("=") not in masker.mask(f"Authorization: {shown}")


_KEYS = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
_VALUES = st.text(min_size=6, max_size=40).filter(lambda v: "\\" not in v and '"' not in v)


@given(st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=6), st.data())
def test_any_spec_seals_to_ciphertext_and_opens_back_to_itself(
    env: dict[str, str], data: st.DataObject
) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(env)), unique=True, min_size=1))
    plain = msgspec.convert({"image": "app", "env": env, "secrets": names}, JobSpec)
    rest = {k: v for k, v in env.items() if k not in names}
    shown = msgspec.json.encode(msgspec.structs.replace(plain, env=rest)).decode()
    assume(not any(env[name] in shown for name in names))  # a value the rest spells anyway
    sealed = seal_spec(plain, RING, job_scope("job-1"))
    encoded = msgspec.json.encode(sealed).decode()
    assert [env[name] for name in names if env[name] in encoded] == []
    assert {k: v for k, v in sealed.env.items() if k not in names} == {
        k: v for k, v in env.items() if k not in names
    }
    assert open_spec(sealed, RING, job_scope("job-1")) == plain
