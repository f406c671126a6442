"""core.registries: the registry an image reference names and DOCKYARD_ALLOWED_REGISTRIES."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard import config
from dockyard.core.registries import RegistryPolicy, check_images, registry_of, split_host
from dockyard.core.spec import IMAGE_PATTERN, JobSpec, SpecError, convert_spec

pytestmark = pytest.mark.unit

ANY = RegistryPolicy()


@pytest.mark.parametrize(
    ("ref", "registry"),
    [
        ("busybox", "docker.io"),
        ("busybox:1.36", "docker.io"),
        ("library/busybox", "docker.io"),
        ("acme/tools/builder:v2", "docker.io"),
        ("busybox@sha256:" + "a" * 64, "docker.io"),
        ("ghcr.io/acme/app:1", "ghcr.io"),
        ("registry.example.com:5000/app", "registry.example.com:5000"),
        ("localhost/app", "localhost"),
        ("localhost:5000/app:tag@sha256:" + "b" * 64, "localhost:5000"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000"),
        ("Registry/app", "registry"),  # upper case: a host, as the engine reads it
        ("[::1]:5000/app", "[::1]:5000"),
    ],
)
def test_registry_of_reads_the_reference_as_the_engine_does(ref: str, registry: str) -> None:
    assert registry_of(ref) == registry


@pytest.mark.parametrize(
    "ref",
    [
        "127.0.0.1/app",
        "127.0.0.1:5000/app",
        "10.0.0.8:5000/app:1",
        "192.168.1.1/app",
        "169.254.169.254/latest",
        "[::1]:5000/app",
        "[fe80::1]/app",
        "0x7f000001:80/app",
        "2130706433:80/app",
        "localhost/app",
        "localhost:5000/app@sha256:" + "c" * 64,
        "registry.localhost/app",
        "metadata.google.internal/app",
        "printer.local:631/app",
        "router.lan/app",
        "nas.home.arpa/app",
        "intranet:8080/app",
        "Intranet/app",
    ],
)
def test_local_and_literal_registries_are_refused_by_default(ref: str) -> None:
    why = ANY.refusal(ref)
    assert why is not None and registry_of(ref) in why


@pytest.mark.parametrize(
    "ref",
    [
        "busybox",
        "library/busybox:1.36",
        "ghcr.io/acme/app:1",
        "quay.io/org/app@sha256:" + "d" * 64,
        "registry.example.com:5000/app",
        "123.example.com/app",
    ],
)
def test_public_names_are_allowed_by_default(ref: str) -> None:
    assert ANY.refusal(ref) is None


def test_a_listed_registry_is_allowed_and_nothing_else() -> None:
    policy = RegistryPolicy.parse(" 127.0.0.1:5000 , Registry.Example.com ,")
    assert policy.allowed == ("127.0.0.1:5000", "registry.example.com")
    assert policy.refusal("127.0.0.1:5000/app") is None
    assert policy.refusal("registry.example.com/app") is None
    assert policy.refusal("registry.example.com:443/app") is None  # no port listed: any
    assert policy.refusal("127.0.0.1:5001/app") is not None  # a port listed: only that one
    assert policy.refusal("busybox") is not None  # Docker Hub is not listed
    assert RegistryPolicy.parse("docker.io").refusal("busybox") is None


def test_a_listed_ipv6_literal_is_allowed() -> None:
    policy = RegistryPolicy.parse("[::1]:5000")
    assert policy.refusal("[::1]:5000/app") is None
    assert split_host("[::1]:5000") == ("::1", 5000)


def test_check_images_names_the_field_of_a_sidecar() -> None:
    spec = convert_spec(
        {"image": "busybox", "sidecars": [{"name": "db", "image": "127.0.0.1:5000/db"}]}
    )
    with pytest.raises(SpecError) as raised:
        check_images(spec, ANY)
    assert raised.value.field == "sidecars[0].image"
    assert raised.value.details == {"registry": "127.0.0.1:5000"}
    assert "DOCKYARD_ALLOWED_REGISTRIES" in raised.value.message
    with pytest.raises(SpecError) as raised:
        check_images(JobSpec(image="localhost/app"), ANY, prefix="job.")
    assert raised.value.field == "job.image"


_label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
_path = st.lists(_label, min_size=1, max_size=3).map("/".join)
_tag = st.one_of(st.just(""), st.from_regex(r":[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True))
_digest = st.one_of(st.just(""), st.just("@sha256:" + "e" * 64))
_port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_public_host = (
    st.lists(_label, min_size=2, max_size=4)
    .map(".".join)
    .filter(
        lambda h: (
            not h.endswith(("local", "internal", "localhost", "lan", "home", "arpa", "test"))
            and not h.endswith(("localdomain", "invalid"))
        )
    )
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")


@given(_path, _tag, _digest)
def test_a_reference_without_a_host_is_docker_hub_and_allowed(
    path: str, tag: str, digest: str
) -> None:
    ref = f"{path}{tag}{digest}"
    if "." in path.split("/")[0] or path.split("/")[0] == "localhost" or "/" not in path:
        return
    assert registry_of(ref) == "docker.io"
    assert ANY.refusal(ref) is None


@given(st.one_of(_ipv4, _ipv6), _port, _path, _tag, _digest)
def test_every_ip_literal_is_refused_unless_listed(
    host: str, port: str, path: str, tag: str, digest: str
) -> None:
    ref = f"{host}{port}/{path}{tag}{digest}"
    assert registry_of(ref) == f"{host}{port}"
    assert ANY.refusal(ref) is not None
    assert RegistryPolicy((f"{host}{port}",)).refusal(ref) is None
    assert RegistryPolicy((host,)).refusal(ref) is None


@given(_public_host, _port, _path, _tag, _digest)
def test_public_names_on_any_port_are_allowed(
    host: str, port: str, path: str, tag: str, digest: str
) -> None:
    ref = f"{host}{port}/{path}{tag}{digest}"
    assert registry_of(ref) == f"{host}{port}"
    assert ANY.refusal(ref) is None
    assert RegistryPolicy(("elsewhere.example",)).refusal(ref) is not None


@given(st.from_regex(IMAGE_PATTERN, fullmatch=True).filter(lambda r: len(r) <= 512))
def test_every_reference_the_spec_accepts_has_a_registry_and_an_answer(ref: str) -> None:
    registry = registry_of(ref)
    assert registry == "docker.io" or ref.lower().startswith(registry + "/")
    why = ANY.refusal(ref)
    assert why is None or registry in why
    assert RegistryPolicy((registry,)).refusal(ref) is None  # listed: always allowed


def test_the_setting_takes_hosts_and_refuses_urls() -> None:
    env = {"DOCKYARD_ALLOWED_REGISTRIES": " Ghcr.io , 127.0.0.1:5000 ,"}
    assert config.load(env).allowed_registries == ("ghcr.io", "127.0.0.1:5000")
    assert config.load({}).allowed_registries == ()
    for bad in ("https://ghcr.io", "ghcr.io/acme", "a b"):
        with pytest.raises(config.ConfigError, match="DOCKYARD_ALLOWED_REGISTRIES"):
            config.load({"DOCKYARD_ALLOWED_REGISTRIES": bad})
