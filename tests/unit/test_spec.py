"""The job spec: the contract's defaults, and precise errors that name the field."""

from __future__ import annotations

import time

import msgspec
import pytest

from dockyard.core.spec import SpecError, decode_spec


def test_defaults_are_the_contracts() -> None:
    spec = decode_spec(b'{"image": "busybox"}')
    assert spec.workdir == "/work" and spec.user == "65534:65534"
    assert spec.timeout_s == 3600 and spec.read_only is True
    assert (spec.resources.cpus, spec.resources.memory_mb, spec.resources.pids) == (1.0, 512, 256)
    assert spec.retry.max_attempts == 1 and spec.retry.backoff_s == 1
    assert spec.retry.backoff_factor == 2 and spec.retry.max_backoff_s == 300
    assert set(spec.retry.on) == {
        "exit_code",
        "oom_killed",
        "timed_out",
        "orchestrator_lost",
        "container_error",
    }
    assert spec.network == "none" and spec.queue == "default" and spec.pull == "if_not_present"


def test_sidecars_imply_an_isolated_network() -> None:
    spec = decode_spec(b'{"image": "a", "sidecars": [{"name": "db", "image": "b"}]}')
    assert spec.effective_network == "isolated"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"image": "busybox", "bogus": 1}', "bogus"),
        (b'{"image": "busybox", "resources": {"gpus": 1}}', "resources.gpus"),
        (b'{"image": "busybox", "timeout_s": 0}', "timeout_s"),
        (b'{"image": "busybox", "timeout_s": "soon"}', "timeout_s"),
        (b'{"image": "busybox", "resources": {"memory_mb": 1}}', "resources.memory_mb"),
        (b'{"image": "busybox", "resources": {"pids": 0}}', "resources.pids"),
        (b'{"image": "Not An Image"}', "image"),
        (b'{"command": ["true"]}', "image"),
        (b'{"image": "busybox", "network": "host"}', "network"),
        (b'{"image": "busybox", "env": {"1BAD": "x"}}', "env"),
        (b'{"image": "busybox", "secrets": ["TOKEN"]}', "secrets"),
        (b'{"image": "busybox", "retry": {"on": ["sometimes"]}}', "retry.on[0]"),
        (b'{"image": "busybox", "run_at": "2026-01-01T00:00:00"}', "run_at"),
        (
            b'{"image": "busybox", "sidecars": [{"name": "a", "image": "b"},'
            b' {"name": "a", "image": "c"}]}',
            "sidecars",
        ),
    ],
)
def test_bad_input_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(SpecError) as error:
        decode_spec(body)
    assert error.value.field == field
    assert error.value.message


def test_missing_image_is_named() -> None:
    with pytest.raises(SpecError, match="image"):
        decode_spec(b'{"command": ["true"]}')


@pytest.mark.parametrize(
    "evil",
    ["a" * 511 + "!", "a-" * 255 + "!", "a_" * 255 + "!", "a/" * 255 + "!", "a." * 255 + "@"],
)
def test_a_hostile_image_name_is_refused_fast(evil: str) -> None:
    """The patterns are checked by a backtracking engine: none may be quadratic or worse."""
    started = time.perf_counter()
    with pytest.raises(SpecError, match="image"):
        decode_spec(msgspec.json.encode({"image": evil}))
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "dockyard/busybox:latest",
        "registry.example.com:5000/team/app:1.2.3",
        "a__b/c--d.e_f:tag",
        "x@sha256:" + "a" * 64,
    ],
)
def test_real_image_references_are_accepted(image: str) -> None:
    assert decode_spec(msgspec.json.encode({"image": image})).image == image
