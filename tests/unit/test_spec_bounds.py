"""The operator's defaults and maxima, pure: what a spec left out gets the default, what it
gave stays its own, and nothing over a maximum passes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.config import ConfigError, load
from dockyard.core.spec import SpecError, convert_spec
from dockyard.core.spec_bounds import (
    BOUNDED,
    CPUS,
    MEMORY_MB,
    PIDS,
    TIMEOUT_S,
    SpecBounds,
    check_maxima,
    left_out,
    with_defaults,
)

BOUNDS = SpecBounds(default_cpus=0.5, default_memory_mb=100, default_pids=50, default_timeout_s=60)

cpus = st.floats(min_value=0.01, max_value=256, allow_nan=False)
memory = st.integers(min_value=6, max_value=1_048_576)
pids = st.integers(min_value=1, max_value=65536)
timeouts = st.floats(min_value=0.001, max_value=7 * 86_400, allow_nan=False)

# A spec as a person writes it: any subset of the bounded fields given.
written = st.fixed_dictionaries(
    {"image": st.just("busybox")},
    optional={
        "resources": st.fixed_dictionaries(
            {}, optional={"cpus": cpus, "memory_mb": memory, "pids": pids}
        ),
        "timeout_s": timeouts,
    },
)
bounds = st.builds(
    SpecBounds,
    default_cpus=cpus,
    default_memory_mb=memory,
    default_pids=pids,
    default_timeout_s=timeouts,
    max_cpus=st.none() | cpus,
    max_memory_mb=st.none() | memory,
    max_pids=st.none() | pids,
    max_timeout_s=st.none() | timeouts,
)


def _value(spec: Any, field: str) -> float:
    value: float = msgspec.to_builtins(spec)["resources"].get(field.removeprefix("resources."))
    return spec.timeout_s if field == TIMEOUT_S else value  # type: ignore[no-any-return]


@given(written, bounds)
def test_left_out_fields_get_the_default_and_given_ones_stay(
    job: dict[str, Any], limits: SpecBounds
) -> None:
    missing = left_out(job)
    spec = with_defaults(convert_spec(job), missing, limits)

    for field in BOUNDED:
        if field in missing:
            assert _value(spec, field) == limits.default(field)
        else:
            given_value = (
                job["timeout_s"]
                if field == TIMEOUT_S
                else job["resources"][field.removeprefix("resources.")]
            )
            assert _value(spec, field) == given_value


@given(written, bounds)
def test_nothing_over_a_maximum_passes_and_everything_under_does(
    job: dict[str, Any], limits: SpecBounds
) -> None:
    spec = with_defaults(convert_spec(job), left_out(job), limits)
    over = [f for f in BOUNDED if (m := limits.maximum(f)) is not None and _value(spec, f) > m]

    if not over:
        check_maxima(spec, limits)
        return
    with pytest.raises(SpecError) as caught:
        check_maxima(spec, limits)
    assert caught.value.field == over[0]
    assert caught.value.details == {"max": limits.maximum(over[0])}


def test_left_out_names_exactly_what_the_spec_does_not_give() -> None:
    assert left_out({"image": "x"}) == (CPUS, MEMORY_MB, PIDS, TIMEOUT_S)
    assert left_out({"image": "x", "resources": {"pids": 3}, "timeout_s": 5}) == (CPUS, MEMORY_MB)
    assert left_out({"image": "x", "resources": {"cpus": 1, "memory_mb": 8, "pids": 3}}) == (
        TIMEOUT_S,
    )


def test_the_message_says_what_the_maximum_is() -> None:
    spec = convert_spec({"image": "busybox", "resources": {"pids": 300}})

    with pytest.raises(SpecError, match="300 is over this installation's maximum of 200"):
        check_maxima(spec, SpecBounds(max_pids=200))


def test_the_settings_read_defaults_and_maxima() -> None:
    settings = load(
        {
            "DOCKYARD_DEFAULT_CPUS": "0.5",
            "DOCKYARD_DEFAULT_MEMORY_MB": "100",
            "DOCKYARD_DEFAULT_PIDS": "50",
            "DOCKYARD_DEFAULT_TIMEOUT_S": "60",
            "DOCKYARD_MAX_CPUS": "4",
            "DOCKYARD_MAX_MEMORY_MB": "2048",
            "DOCKYARD_MAX_PIDS": "1000",
            "DOCKYARD_MAX_TIMEOUT_S": "86400",
        }
    )

    maxima = {"max_cpus": 4, "max_memory_mb": 2048, "max_pids": 1000, "max_timeout_s": 86400}
    assert settings.spec_bounds == msgspec.structs.replace(BOUNDS, **maxima)
    assert load({}).spec_bounds == SpecBounds()  # the contract's: 1.0 / 512 / 256 / 3600


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"DOCKYARD_DEFAULT_PIDS": "500", "DOCKYARD_MAX_PIDS": "100"},
            r"DOCKYARD_DEFAULT_PIDS \(500\) is above DOCKYARD_MAX_PIDS \(100\)",
        ),
        # The built-in default counts too: 512 MiB is over a maximum of 256.
        (
            {"DOCKYARD_MAX_MEMORY_MB": "256"},
            r"DOCKYARD_DEFAULT_MEMORY_MB \(512\) is above DOCKYARD_MAX_MEMORY_MB \(256\)",
        ),
        ({"DOCKYARD_DEFAULT_CPUS": "lots"}, "DOCKYARD_DEFAULT_CPUS: 'lots' is not a number"),
        ({"DOCKYARD_DEFAULT_MEMORY_MB": "4"}, r"DOCKYARD_DEFAULT_MEMORY_MB: '4' is out of range"),
        ({"DOCKYARD_MAX_TIMEOUT_S": "0"}, "DOCKYARD_MAX_TIMEOUT_S: '0' is out of range"),
        ({"DOCKYARD_MAX_PIDS": "1.5"}, "DOCKYARD_MAX_PIDS: '1.5' is not a number"),
    ],
)
def test_a_default_above_its_maximum_or_a_bad_value_is_a_config_error(
    env: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        load(env)
