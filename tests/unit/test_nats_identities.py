"""The role → allow-list table (bus/permissions.py) and the identities minted from it
(stack/nats_credentials.py), checked without a server: test_nats_permissions.py runs them
against one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dockyard import config
from dockyard.bus import names
from dockyard.bus.connection import Security, connect_options
from dockyard.bus.permissions import (
    SERVICE_ROLES,
    InvalidIdentityName,
    for_role,
    inbox_prefix,
    matches,
)
from dockyard.stack.nats_credentials import (
    NatsCredentials,
    decode_jwt,
    encode_jwt,
    new_seed,
    public_key,
    read_creds_jwt,
)

ME, OTHER = "orch-a", "orch-b"


def _all(role: str) -> list[tuple[str, ...]]:
    perms = for_role(role, ME if role == "orchestrator" else None)  # type: ignore[arg-type]
    return [perms.publish, perms.subscribe]


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_no_service_role_has_an_empty_list_or_a_wildcard_of_everything(role: str) -> None:
    for allowed in _all(role):
        assert allowed, "an empty allow-list would allow everything"
        for subject in allowed:
            pattern = subject.split(" ")[0]
            assert pattern not in (">", "$JS.>", "$JS.API.>", "_INBOX.>", "dockyard.>")
            assert not pattern.startswith("$JS.API.STREAM.DELETE") or (
                role == "scheduler" and pattern.endswith(names.LEGACY_WORK_STREAM)
            )
            assert "PURGE" not in pattern


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_each_role_subscribes_to_replies_under_its_own_inbox_only(role: str) -> None:
    perms = for_role(role, ME if role == "orchestrator" else None)  # type: ignore[arg-type]
    inboxes = [s for s in perms.subscribe if s.startswith("_INBOX")]
    assert inboxes == [f"{perms.inbox_prefix}.>"]
    assert perms.inbox_prefix != "_INBOX"


def test_only_the_scheduler_answers_requests() -> None:
    assert {r for r in SERVICE_ROLES if for_role(r, ME).responses} == {"scheduler"}


def test_an_orchestrator_claims_reports_logs_and_heartbeats_as_itself_only() -> None:
    mine = for_role("orchestrator", ME, ["default", "gpu"])
    for subject in (
        names.claim_subject(ME),
        names.report_batch_subject(ME),
        names.log_subject(ME, "job-1"),
        f"$KV.{names.HEARTBEATS_BUCKET}.{names.heartbeat_key(ME)}",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.OFFERS_STREAM}.{names.offer_durable('gpu')}",
    ):
        assert mine.allows_publish(subject), subject
    for subject in (
        names.claim_subject(OTHER),
        names.report_batch_subject(OTHER),
        names.log_subject(OTHER, "job-1"),
        names.legacy_log_subject("job-1"),
        names.report_subject("job-1"),
        f"$KV.{names.HEARTBEATS_BUCKET}.{names.heartbeat_key(OTHER)}",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.OFFERS_STREAM}.{names.offer_durable('batch')}",
        names.offer_subject("default"),
        names.event_subject("job-1", "job_succeeded"),
    ):
        assert not mine.allows_publish(subject), subject
    assert mine.allows_subscribe(names.control_subject(ME))
    assert mine.allows_subscribe(names.events_of_type("cancel_requested"))
    for subject in (names.EVENTS_SUBJECTS, names.CLAIMS_SUBJECTS, ">", "dockyard.logs.>"):
        assert not mine.allows_subscribe(subject), subject
        assert not mine.allows_subscribe(subject, names.CLAIMS_QUEUE_GROUP), subject


def test_the_scheduler_reads_a_jobs_last_log_batch_for_the_claim_of_a_later_attempt() -> None:
    """Found on the cluster (tests/cluster): without it, every claim after orchestrator_lost
    was answered `granted=False` once the read timed out, and the job stayed `starting`."""
    subject = f"$JS.API.DIRECT.GET.{names.LOGS_STREAM}.{names.job_logs_filter('job-1')}"
    assert for_role("scheduler").allows_publish(subject)


def test_the_scheduler_takes_claims_in_its_group_only() -> None:
    scheduler = for_role("scheduler")
    assert scheduler.allows_subscribe(names.CLAIMS_SUBJECTS, names.CLAIMS_QUEUE_GROUP)
    assert not scheduler.allows_subscribe(names.CLAIMS_SUBJECTS)
    assert not scheduler.allows_subscribe(names.CLAIMS_SUBJECTS, "others")


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a b", "-a", "x" * 65, "é"])
def test_an_orchestrator_identity_name_is_one_plain_token(name: str) -> None:
    with pytest.raises(InvalidIdentityName):
        for_role("orchestrator", name)


@pytest.mark.parametrize(
    ("pattern", "subject", "inside"),
    [
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.*", "a.*", True),
        ("a.*", "a.>", False),
        ("a.b", "a.*", False),
        ("a.>", "a.*.c", True),
    ],
)
def test_matches_as_the_server_judges_a_subject_against_an_allow_list(
    pattern: str, subject: str, inside: bool
) -> None:
    assert matches(pattern, subject) is inside


def test_a_jwt_verifies_against_its_issuer_and_a_changed_one_does_not() -> None:
    account = new_seed("account")
    token = encode_jwt({"sub": "UABC", "name": "x", "nats": {"type": "user"}}, account)
    claims = decode_jwt(token)
    assert claims["iss"] == public_key(account)
    assert claims["jti"]
    header, _body, signature = token.split(".")
    other = encode_jwt({"sub": "UABC", "name": "y", "nats": {"type": "user"}}, account)
    with pytest.raises(ValueError, match="not a valid NATS JWT"):
        decode_jwt(f"{header}.{other.split('.')[1]}.{signature}")


def test_the_credentials_dir_is_private_and_its_chain_made_once(tmp_path: Path) -> None:
    store = NatsCredentials(tmp_path / "credentials")
    assert store.ensure() is True
    account = (store.directory / "account.nk").read_bytes()
    assert store.ensure() is False
    assert (store.directory / "account.nk").read_bytes() == account
    path = store.mint("orchestrator", ME, queues=["gpu"])
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    for file in store.directory.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    claims = decode_jwt(read_creds_jwt(path.read_text()))
    assert claims["iss"] == public_key(account)
    assert claims["name"] == f"orchestrator {ME}"
    allowed = claims["nats"]["pub"]["allow"]
    assert f"$JS.API.CONSUMER.MSG.NEXT.{names.OFFERS_STREAM}.offers-gpu" in allowed
    assert "resp" not in claims["nats"]
    assert "resolver: MEMORY" in store.server_config()


def test_connect_takes_the_inbox_prefix_the_credential_allows(tmp_path: Path) -> None:
    store = NatsCredentials(tmp_path / "credentials")
    store.ensure()
    creds = store.mint("orchestrator", ME)
    options = connect_options(Security(creds=creds, inbox_prefix="_INBOX_wrong"), ["nats://x"])
    assert options["inbox_prefix"] == inbox_prefix("orchestrator", ME)
    assert options["user_credentials"] == str(creds)
    seed = tmp_path / "seed"
    seed.write_bytes(new_seed("user") + b"\n")
    options = connect_options(Security(creds=seed, inbox_prefix="_INBOX_x"), ["nats://x"])
    assert options["nkeys_seed_str"].startswith("SU")
    assert options["inbox_prefix"] == "_INBOX_x"


def test_the_nats_variables_are_read_into_the_settings() -> None:
    settings = config.load(
        {
            "DOCKYARD_NATS_CREDS": "/c/scheduler.creds",
            "DOCKYARD_NATS_TLS_CA": "/c/ca.pem",
            "DOCKYARD_NATS_TLS_CERT": "/c/cert.pem",
            "DOCKYARD_NATS_TLS_KEY": "/c/key.pem",
        }
    )
    security = Security.of(settings.nats_security)
    assert security.creds == Path("/c/scheduler.creds")
    assert security.tls_ca == Path("/c/ca.pem")
    assert (security.tls_cert, security.tls_key) == (Path("/c/cert.pem"), Path("/c/key.pem"))
    assert Security.of(config.load({}).nats_security) == Security()
