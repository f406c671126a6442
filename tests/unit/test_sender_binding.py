"""Messages bound to their sender (F2): the core refuses reports from anyone but the holder of
the attempt; subjects name their sender and nothing else does; claim answers verify."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import nkeys
import pytest

from dockyard.bus import names, protocol
from dockyard.bus.signing import ClaimKeyError, ClaimSigner, ClaimVerifier
from dockyard.config import ConfigError, load
from dockyard.core import (
    ClaimJob,
    MarkOrchestratorLost,
    RecordResource,
    ReleaseResource,
    ReportExit,
    ReportStarted,
    SubmitJob,
)
from dockyard.core.errors import NotTheHolder
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.scheduler.reports import unbound
from tests.unit.builders import Scenario, spec, types


def claimed_by(orchestrator: str) -> Scenario:
    submit = SubmitJob(tenant="acme", spec=spec())
    return Scenario().given(submit, ClaimJob(attempt=1, orchestrator=orchestrator))


def test_a_start_report_from_an_orchestrator_that_does_not_hold_the_attempt_is_refused() -> None:
    s = claimed_by("o1")
    with pytest.raises(NotTheHolder, match="held by o1, not by o2"):
        s.when(ReportStarted(attempt=1, container_id="evil", orchestrator="o2"))
    assert s.job is not None and s.job.status == "starting"


def test_an_exit_report_from_an_orchestrator_that_does_not_hold_the_attempt_is_refused() -> None:
    s = claimed_by("o1").given(ReportStarted(attempt=1, container_id="c", orchestrator="o1"))
    with pytest.raises(NotTheHolder):
        s.when(ReportExit(attempt=1, exit_code=0, orchestrator="o2"))
    assert types(s.when(ReportExit(attempt=1, exit_code=0, orchestrator="o1"))) == ["job_succeeded"]


def test_an_exit_naming_no_orchestrator_is_the_janitors_and_still_ends_the_job() -> None:
    s = claimed_by("o1")
    ended = s.when(ReportExit(attempt=1, exit_code=None, reason="container_error"))
    assert types(ended) == ["job_failed"]


def test_a_forged_exit_after_the_job_ended_changes_nothing() -> None:
    s = claimed_by("o1").given(ReportExit(attempt=1, exit_code=0, orchestrator="o1"))
    assert s.when(ReportExit(attempt=1, exit_code=1, orchestrator="o2")) == []


# -- subjects


def test_each_subject_names_its_sender_and_only_that() -> None:
    assert names.claim_subject("host.a-1") == "dockyard.claims.host_a-1"
    assert names.claim_sender("dockyard.claims.host_a-1") == "host_a-1"
    assert names.claim_sender("dockyard.claims") is None
    assert names.claim_sender("dockyard.claimsx.a") is None
    assert names.report_sender(names.report_batch_subject("o.1")) == "o_1"
    assert names.report_sender(names.report_subject("0193")) is None
    assert names.log_subject("o.1", "job") == "dockyard.logs.o_1.job"
    assert names.log_sender("dockyard.logs.o_1.job") == "o_1"
    assert names.log_sender(names.legacy_log_subject("job")) is None
    assert names.job_logs_filter("job") == "dockyard.logs.*.job"


REPORT_AT = datetime(2026, 12, 1, tzinfo=UTC)


def report(command: object) -> protocol.Report:
    return protocol.Report(report_id="r", job_id="j", command=command, sent_at=REPORT_AT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "command", "refused"),
    [
        ("dockyard.reports.from.o1", ReportExit(attempt=1, exit_code=0, orchestrator="o1"), False),
        ("dockyard.reports.from.o2", ReportExit(attempt=1, exit_code=0, orchestrator="o1"), True),
        ("dockyard.reports.from.o1", ReportExit(attempt=1, exit_code=0), True),
        ("dockyard.reports.from.o1", ReleaseResource(attempt=1, kind="container", name="n"), True),
        (
            "dockyard.reports.from.o1",
            RecordResource(attempt=1, kind="container", name="n", orchestrator="o2"),
            True,
        ),
        (
            "dockyard.reports.from.o1",
            MarkOrchestratorLost(attempt=1, orchestrator="o1", silent_s=1),
            True,
        ),
        ("dockyard.reports.j", ReportExit(attempt=1, exit_code=0, orchestrator="o1"), True),
    ],
)
def test_a_report_is_taken_only_from_the_orchestrator_it_names(
    subject: str, command: object, refused: bool
) -> None:
    assert (unbound(subject, report(command)) is not None) is refused


# -- signed claim answers


def seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))


def test_a_claim_answer_verifies_only_signed_by_the_key_given_and_unaltered() -> None:
    signer = ClaimSigner(seed())
    verifier = ClaimVerifier(signer.public_key)
    payload = b'{"granted":true}'
    headers = signer.headers(payload)
    assert verifier.problem(payload, headers) is None
    assert verifier.problem(payload + b" ", headers) == "bad_signature"
    assert verifier.problem(payload, None) == "unsigned"
    other = ClaimSigner(seed())
    assert verifier.problem(payload, other.headers(payload)) == "unknown_signer"
    posing = {**other.headers(payload), names.CLAIM_SIGNER: signer.public_key}
    assert verifier.problem(payload, posing) == "bad_signature"
    garbled = {**headers, names.CLAIM_SIGNATURE: "not base64!"}
    assert verifier.problem(payload, garbled) == "bad_signature"


def test_the_claim_keys_are_read_from_files_and_refused_with_the_variable_named(
    tmp_path: Path,
) -> None:
    key = seed()
    (tmp_path / "claim.seed").write_bytes(key + b"\n")
    signer = ClaimSigner.from_file(str(tmp_path / "claim.seed"))
    (tmp_path / "claim.pub").write_text(signer.public_key + "\n")
    assert ClaimVerifier.from_setting(str(tmp_path / "claim.pub")).public_key == signer.public_key
    assert ClaimVerifier.from_setting(signer.public_key).public_key == signer.public_key
    with pytest.raises(ClaimKeyError, match="DOCKYARD_CLAIM_KEY: cannot read"):
        ClaimSigner.from_file(str(tmp_path / "missing"))
    (tmp_path / "bad").write_text(signer.public_key)  # a public key where the seed belongs
    with pytest.raises(ClaimKeyError, match=r"DOCKYARD_CLAIM_KEY: .* not an nkey seed"):
        ClaimSigner.from_file(str(tmp_path / "bad"))
    with pytest.raises(ClaimKeyError, match="DOCKYARD_CLAIM_PUBLIC_KEY"):
        ClaimVerifier.from_setting(key.decode())  # the seed where the public key belongs


def test_an_orchestrator_with_an_unreadable_claim_public_key_does_not_start(
    tmp_path: Path,
) -> None:
    settings = load({"DOCKYARD_CLAIM_PUBLIC_KEY": str(tmp_path / "nowhere.pub")})
    with pytest.raises(ConfigError, match="DOCKYARD_CLAIM_PUBLIC_KEY"):
        OrchestratorConfig.from_settings(settings, env={})
    public = ClaimSigner(seed()).public_key
    config = OrchestratorConfig.from_settings(load({"DOCKYARD_CLAIM_PUBLIC_KEY": public}), env={})
    assert config.claim_public_key == public
