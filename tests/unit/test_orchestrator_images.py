"""orchestrator.images: the words a tenant reads for a failed pull, and the registry check."""

from __future__ import annotations

import logging

import pytest

from dockyard.core.registries import RegistryPolicy
from dockyard.orchestrator.images import Images, pull_failure_words
from dockyard.runtime import FakeRuntime, ImagePullFailed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("engine", "words"),
    [
        ("manifest unknown", "not found"),
        ("manifest for acme/app:1 not found: manifest unknown: manifest unknown", "not found"),
        ("pull image x: repository does not exist or no access", "not found"),
        (
            "pull access denied for acme/app, repository does not exist or may require "
            "'docker login': denied: requested access to the resource is denied",
            "not found or unauthorized",
        ),
        (
            'Head "http://127.0.0.1:5000/v2/a/manifests/1": no basic auth credentials',
            "unauthorized",
        ),
        ("unauthorized: authentication required", "unauthorized"),
        (
            'Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused',
            "unreachable",
        ),
        ('Get "https://r.example/v2/": dial tcp: lookup r.example: no such host', "unreachable"),
        ('Get "https://r.example/v2/": net/http: TLS handshake timeout', "unreachable"),
        (
            'Get "https://r.example/v2/": x509: certificate signed by unknown authority',
            "unreachable",
        ),
        ("pull image a: not done after 300 s", "not done in time"),
        (
            "something else entirely: 418 I'm a teapot",
            "the registry's answer was unexpected (the orchestrator's log has it)",
        ),
    ],
)
def test_the_engines_words_become_the_tenants(engine: str, words: str) -> None:
    assert pull_failure_words(engine) == words


async def test_a_refused_registry_never_reaches_the_engine() -> None:
    runtime = FakeRuntime(pullable=["127.0.0.1:5000/app"])
    with pytest.raises(ImagePullFailed) as raised:
        await Images(runtime).ensure("127.0.0.1:5000/app", "always")
    assert "not allowed" in raised.value.message
    assert not any(op == "ensure_image" for op, _ in runtime.calls)
    listed = Images(runtime, registries=RegistryPolicy(("127.0.0.1:5000",)))
    await listed.ensure("127.0.0.1:5000/app", "always")
    assert any(op == "ensure_image" for op, _ in runtime.calls)


async def test_pull_policy_never_keeps_dockyards_own_words() -> None:
    with pytest.raises(ImagePullFailed) as raised:
        await Images(FakeRuntime()).ensure("busybox:latest", "never")
    assert (
        raised.value.message == "image busybox:latest is not present and the pull policy is never"
    )


async def test_the_operators_log_has_the_job_and_the_engines_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "dockyard.orchestrator"), pytest.raises(ImagePullFailed):
        await Images(FakeRuntime()).ensure("busybox:latest", "always", job="job-1")
    [record] = caplog.records
    assert record.job == "job-1"  # type: ignore[attr-defined]
    assert "repository does not exist or no access" in record.getMessage()
