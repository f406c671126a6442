"""The egress rules as text (pure), the deny list's setting, and tenant rules on specs."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.config import ConfigError, load
from dockyard.core.spec import JobSpec, Sidecar, SpecError
from dockyard.core.tenant_limits import (
    TenantLimits,
    TenantPolicies,
    check_tenant_spec,
    decode_tenant_limits,
    is_root,
)
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.egress import expand_deny, server_addresses
from dockyard.orchestrator.egress_rules import (
    EgressChains,
    chain_rules,
    deny_networks,
    jump_rule,
    restore_input,
)
from dockyard.runtime.hardening import bridge_prefix

CHAINS = EgressChains.of("orc-1")


def test_chains_are_named_after_the_orchestrator_within_iptables_limits() -> None:
    other = EgressChains.of("orc-2")
    assert CHAINS.forward.startswith("DOCKYARD-FWD-") and CHAINS.input.startswith("DOCKYARD-IN-")
    assert {CHAINS.forward, CHAINS.input}.isdisjoint({other.forward, other.input})
    assert max(len(CHAINS.forward), len(CHAINS.input)) <= 28
    assert CHAINS.hooks() == (("DOCKER-USER", CHAINS.forward), ("INPUT", CHAINS.input))


def test_rules_scope_to_job_bridges_and_reject_the_deny_list_by_original_destination() -> None:
    rules = chain_rules(CHAINS, ["169.254.0.0/16", "198.18.5.1", "10.1.2.3/8"])
    f, i, b = CHAINS.forward, CHAINS.input, CHAINS.bridges
    assert b == bridge_prefix("orc-1")  # this orchestrator's job bridges, and only those
    reject = "-j REJECT --reject-with icmp-admin-prohibited"

    assert rules[f] == (
        f"-A {f} -i {b}+ -o {b}+ -j RETURN",
        f"-A {f} -i {b}+ -m conntrack --ctorigdst 169.254.0.0/16 {reject}",
        f"-A {f} -i {b}+ -m conntrack --ctorigdst 198.18.5.1 {reject}",
        f"-A {f} -i {b}+ -m conntrack --ctorigdst 10.0.0.0/8 {reject}",
    )
    assert rules[i] == (
        f"-A {i} -i {b}+ -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {i} -i {b}+ {reject}",
    )
    assert jump_rule("INPUT", i) == f"-A INPUT -j {i}"


def test_restore_input_declares_both_chains_so_one_commit_replaces_them() -> None:
    text = restore_input(CHAINS, ["169.254.0.0/16"])
    lines = text.splitlines()

    assert lines[:3] == ["*filter", f":{CHAINS.forward} - [0:0]", f":{CHAINS.input} - [0:0]"]
    assert lines[-1] == "COMMIT" and text.endswith("\n")
    assert all(line.startswith("-A DOCKYARD-") for line in lines[3:-1])


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=20))
def test_deny_networks_keep_order_drop_repeats_and_print_as_iptables_does(addrs: list[str]) -> None:
    networks = deny_networks(addrs + addrs)

    assert list(networks) == list(dict.fromkeys(addrs))  # a /32 prints as the address
    assert all(ipaddress.ip_network(n).prefixlen == 32 for n in networks)


def test_deny_networks_refuse_ipv6_and_nonsense() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        deny_networks(["fd00::/8"])
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        deny_networks(["metadata"])


def test_default_expands_to_metadata_host_and_server_addresses() -> None:
    found = expand_deny(["default", "198.18.0.0/15"], ["nats://u:p@127.0.0.1:4222"])

    assert found[0] == "169.254.0.0/16" and found[-1] == "198.18.0.0/15"
    assert "127.0.0.1/32" in found
    assert expand_deny(["10.0.0.0/8"]) == ("10.0.0.0/8",)  # no default: only what is listed
    assert server_addresses(["postgresql://x@no-such-host.invalid/db", ""]) == []


def test_egress_deny_setting() -> None:
    assert load({}).egress_deny == ("default",)
    assert load({"DOCKYARD_EGRESS_DENY": "none"}).egress_deny is None
    assert load({"DOCKYARD_EGRESS_DENY": "default, 10.0.0.0/8"}).egress_deny == (
        "default",
        "10.0.0.0/8",
    )
    with pytest.raises(ConfigError, match=r"DOCKYARD_EGRESS_DENY: 'nope'"):
        load({"DOCKYARD_EGRESS_DENY": "nope"})
    with pytest.raises(ConfigError, match="IPv6"):
        load({"DOCKYARD_EGRESS_DENY": "fd00::/8"})


def test_orchestrator_config_carries_the_list_servers_and_iptables_command() -> None:
    settings = load({"DOCKYARD_NATS_URL": "nats://10.9.8.7:4222"})
    config = OrchestratorConfig.from_settings(settings, env={"DOCKYARD_IPTABLES": "/x/ipt"})

    assert config.egress_deny == ("default",) and config.iptables == "/x/ipt"
    assert "nats://10.9.8.7:4222" in config.egress_servers
    assert OrchestratorConfig(orchestrator_id="o").egress_deny is None  # built in code: off


@pytest.mark.parametrize("user", ["0", "0:0", "00", "root", "root:root", "0:1000"])
def test_uid_0_is_root(user: str) -> None:
    assert is_root(user)


@pytest.mark.parametrize("user", ["65534:65534", "1000", "1000:0", "rooter", "nobody"])
def test_other_users_are_not_root(user: str) -> None:
    assert not is_root(user)


def _refused(spec: JobSpec, limits: TenantLimits, prefix: str = "") -> str:
    with pytest.raises(SpecError) as caught:
        check_tenant_spec(spec, limits, prefix)
    return caught.value.field


def test_tenant_rules_refuse_naming_the_field() -> None:
    default = TenantLimits()
    assert _refused(JobSpec(image="b", user="0:0"), default) == "user"
    assert _refused(JobSpec(image="b", user="root"), default, "job.") == "job.user"
    assert _refused(JobSpec(image="b", read_only=False), default) == "read_only"
    no_egress = TenantLimits(allow_egress=False)
    assert _refused(JobSpec(image="b", network="egress"), no_egress) == "network"
    # allowed: the defaults allow egress; allow_root allows uid 0 and a writable root
    check_tenant_spec(JobSpec(image="b", network="egress"), default)
    check_tenant_spec(JobSpec(image="b", user="0", read_only=False), TenantLimits(allow_root=True))
    sidecar = (Sidecar(name="db", image="b"),)
    check_tenant_spec(JobSpec(image="b", sidecars=sidecar), no_egress)  # isolated


def test_tenant_limits_file_is_decoded_strictly_and_wildcard_applies(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"acme": {"allow_root": True}, "*": {"allow_egress": False}}))
    policies = load({"DOCKYARD_TENANT_LIMITS": str(path)}).tenant_limits

    assert policies.of("acme").allow_root and policies.of("acme").allow_egress
    assert not policies.of("other").allow_egress and not policies.of("other").allow_root
    assert TenantPolicies().of("x") == TenantLimits()
    with pytest.raises(ValueError, match="allow_rooot"):
        decode_tenant_limits(b'{"a": {"allow_rooot": true}}')
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="DOCKYARD_TENANT_LIMITS"):
        load({"DOCKYARD_TENANT_LIMITS": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        load({"DOCKYARD_TENANT_LIMITS": str(tmp_path / "missing.json")})
