"""The engine requests built for a job: every hardening choice, exactly."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.bus.names import LABEL_ATTEMPT, LABEL_JOB, LABEL_ORCHESTRATOR, LABEL_TIMEOUT
from dockyard.core.spec import JobSpec, Resources, Sidecar, SpecError, check_spec
from dockyard.runtime import JobPlan, check_hardened, container_name, network_name, plan_job
from dockyard.runtime.hardening import (
    MIB,
    bridge_name,
    bridge_prefix,
    can_cap_writable_layer,
    with_image_volumes,
    with_isolated_gateway,
    with_writable_cap,
)

JOB = "0190f0c2-0000-7000-8000-000000000001"
LABELS = {LABEL_JOB: JOB, LABEL_ATTEMPT: "2", LABEL_ORCHESTRATOR: "orc-1"}


def _plan(**spec: Any) -> JobPlan:
    return plan_job(JobSpec(image="busybox", **spec), job_id=JOB, attempt=2, orchestrator="orc-1")


def test_job_container_has_the_full_hardened_profile() -> None:
    plan = _plan(resources=Resources(cpus=1.5, memory_mb=300, pids=100))
    host = plan.job.config["HostConfig"]

    assert host == {
        "NanoCpus": 1_500_000_000,
        "Memory": 300 * MIB,
        "MemorySwap": 300 * MIB,
        "PidsLimit": 100,
        "OomScoreAdj": 500,
        "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 4096}],
        "CapDrop": ["ALL"],
        "CapAdd": [],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "ReadonlyRootfs": True,
        "Tmpfs": {
            "/tmp": "rw,nosuid,nodev,mode=1777,uid=65534,gid=65534,noexec,size=64m",
            "/work": "rw,nosuid,nodev,mode=1777,uid=65534,gid=65534,exec,size=150m",
        },
        "NetworkMode": "none",
        "IpcMode": "private",
        "Init": True,
        "AutoRemove": False,
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "none", "Config": {}},
    }


def test_job_container_runs_as_nobody_in_the_workdir_with_labels_and_env() -> None:
    plan = _plan(command=["sh", "-c", "echo hi"], env={"A": "1", "B": "x=y"})
    config = plan.job.config

    assert plan.job.name == f"dockyard-{JOB}-2" == container_name(JOB, 2)
    assert config["User"] == "65534:65534"
    assert config["WorkingDir"] == "/work"
    assert config["Labels"] == {**LABELS, LABEL_TIMEOUT: "3600"}  # for a restart's report
    assert config["Env"] == ["A=1", "B=x=y"]
    assert config["Cmd"] == ["sh", "-c", "echo hi"]
    assert (config["Tty"], config["OpenStdin"], config["AttachStdin"]) == (False, False, False)
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGTERM", 10)
    assert "NetworkingConfig" not in config
    assert plan.network is None and plan.sidecars == ()


def test_no_command_keeps_the_image_default() -> None:
    assert "Cmd" not in _plan().job.config


def test_no_host_mount_of_any_kind_is_ever_requested() -> None:
    plan = _plan(sidecars=(Sidecar(name="db", image="busybox"),))

    for config in (plan.job.config, plan.sidecars[0].config):
        assert not {"Binds", "Mounts", "VolumesFrom", "Devices"} & set(config["HostConfig"])
        assert "Volumes" not in config


def test_small_memory_caps_the_tmpfs_at_half_of_it() -> None:
    tmpfs = _plan(resources=Resources(memory_mb=20), workdir="/job")
    mounts = tmpfs.job.config["HostConfig"]["Tmpfs"]

    assert mounts == {
        "/tmp": "rw,nosuid,nodev,mode=1777,uid=65534,gid=65534,noexec,size=10m",
        "/job": "rw,nosuid,nodev,mode=1777,uid=65534,gid=65534,exec,size=10m",
    }


@pytest.mark.parametrize(
    ("user", "owner"),
    [
        ("65534:65534", ",uid=65534,gid=65534"),
        ("1000", ",uid=1000"),
        ("0:0", ",uid=0,gid=0"),
        ("1000:staff", ",uid=1000"),
        ("nobody", ""),  # a name resolves only inside the image: mode 1777 alone
        ("app:1000", ""),
    ],
)
def test_the_tmpfs_root_is_owned_by_a_numeric_job_user(user: str, owner: str) -> None:
    # runc copies an existing image directory's mode (say 0755) onto the mount: only the
    # owner can then write, so the owner must be the job's user.
    mounts = _plan(user=user).job.config["HostConfig"]["Tmpfs"]

    assert mounts["/tmp"] == f"rw,nosuid,nodev,mode=1777{owner},noexec,size=64m"
    assert mounts["/work"] == f"rw,nosuid,nodev,mode=1777{owner},exec,size=256m"


def test_writable_root_is_asked_for_explicitly() -> None:
    assert _plan(read_only=False).job.config["HostConfig"]["ReadonlyRootfs"] is False


def test_isolated_network_is_internal_labelled_and_shared_by_name() -> None:
    sidecar = Sidecar(name="db", image="busybox", command=["nc", "-l", "-p", "8080"])
    plan = _plan(sidecars=(sidecar,))  # sidecars imply `isolated`
    net = network_name(JOB, 2)

    assert plan.network is not None
    assert plan.network.config == {
        "Name": net,
        "Driver": "bridge",
        "Internal": True,
        "Attachable": False,
        "EnableIPv6": False,
        "CheckDuplicate": True,
        "Labels": LABELS,
        "Options": {"com.docker.network.bridge.name": bridge_name(net, "orc-1")},
    }
    # 15 characters, the kernel's limit; the orchestrator's prefix first.
    assert re.fullmatch(r"dy[0-9a-f]{13}", bridge_name(net, "orc-1"))
    assert bridge_name(net, "orc-1").startswith(bridge_prefix("orc-1"))
    assert bridge_prefix("orc-1") != bridge_prefix("orc-2")
    side = plan.sidecars[0]
    assert (side.name, side.role) == (f"dockyard-{JOB}-2-db", "sidecar")
    assert side.config["NetworkingConfig"] == {"EndpointsConfig": {net: {"Aliases": ["db"]}}}
    assert side.config["HostConfig"]["NetworkMode"] == net
    assert plan.job.config["NetworkingConfig"] == {"EndpointsConfig": {net: {}}}
    assert plan.job.config["HostConfig"]["NetworkMode"] == net


def test_isolated_networks_keep_their_gateway_off_the_host_where_the_engine_can() -> None:
    isolated = _plan(network="isolated").network
    egress = _plan(network="egress").network
    assert isolated is not None and egress is not None

    newer = with_isolated_gateway(isolated.config, "1.48")
    assert newer["Options"]["com.docker.network.bridge.gateway_mode_ipv4"] == "isolated"
    assert "com.docker.network.bridge.gateway_mode_ipv4" not in isolated.config["Options"]
    assert with_isolated_gateway(isolated.config, "1.41") == isolated.config  # Docker 20.10
    assert with_isolated_gateway(egress.config, "1.50") == egress.config  # NAT needs it
    assert with_isolated_gateway(isolated.config, "garbage") == isolated.config


def test_egress_network_is_not_internal() -> None:
    plan = _plan(network="egress")

    assert plan.network is not None and plan.network.config["Internal"] is False


def test_sidecars_get_the_same_profile_and_limits_as_the_job() -> None:
    plan = _plan(sidecars=(Sidecar(name="db", image="other/image:1", env={"X": "1"}),))
    job, side = plan.job.config, plan.sidecars[0].config
    ignore = {"LogConfig"}

    assert {k: v for k, v in side["HostConfig"].items() if k not in ignore} == {
        k: v for k, v in job["HostConfig"].items() if k not in ignore
    }
    assert side["Image"] == "other/image:1" and side["Env"] == ["X=1"]
    assert side["User"] == job["User"] and side["Labels"] == LABELS
    assert side["HostConfig"]["LogConfig"]["Type"] == "json-file"


def test_sidecars_share_the_jobs_budget_instead_of_multiplying_it() -> None:
    sidecars = tuple(Sidecar(name=f"s{i}", image="busybox") for i in range(3))
    plan = _plan(resources=Resources(cpus=2.0, memory_mb=512, pids=100), sidecars=sidecars)

    hosts = [c.config["HostConfig"] for c in (plan.job, *plan.sidecars)]
    assert {h["Memory"] for h in hosts} == {128 * MIB}
    assert {h["NanoCpus"] for h in hosts} == {500_000_000}
    assert {h["PidsLimit"] for h in hosts} == {25}
    assert plan.job.config["HostConfig"]["Tmpfs"]["/tmp"].endswith("size=64m")


def test_a_budget_too_small_to_share_is_refused_naming_the_field() -> None:
    sidecars = tuple(Sidecar(name=f"s{i}", image="busybox") for i in range(3))
    spec = JobSpec(image="busybox", resources=Resources(memory_mb=20), sidecars=sidecars)

    with pytest.raises(SpecError) as caught:
        check_spec(spec)
    assert caught.value.field == "resources.memory_mb" and "at least 24" in str(caught.value)


def _hardened() -> dict[str, Any]:
    return dict(_plan().job.config)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "host mounts"),
        ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "host mounts"),
        ({"Devices": [{"PathOnHost": "/dev/kmsg"}]}, "host mounts"),
        ({"Privileged": True}, "privileged"),
        ({"CapAdd": ["SYS_ADMIN"]}, "capabilities"),
        ({"CapDrop": []}, "capabilities must be dropped"),
        ({"SecurityOpt": []}, "no-new-privileges"),
        ({"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]}, "seccomp"),
        ({"Tmpfs": {"/var/run/docker.sock": "rw"}}, "Docker socket"),
        ({"NetworkMode": "host"}, "never shared"),
        ({"PidMode": "host"}, "never shared"),
    ],
)
def test_check_hardened_refuses_a_weakened_request(change: dict[str, Any], problem: str) -> None:
    config = _hardened()
    config["HostConfig"].update(change)

    with pytest.raises(ValueError, match=problem):
        check_hardened(config)


@given(
    cpus=st.floats(min_value=0.01, max_value=256),
    memory_mb=st.integers(min_value=6, max_value=1_048_576),
    pids=st.integers(min_value=1, max_value=65536),
    network=st.sampled_from(["none", "isolated", "egress"]),
    read_only=st.booleans(),
    sidecars=st.integers(min_value=0, max_value=3),
)
def test_every_valid_spec_gives_a_hardened_labelled_plan(
    cpus: float, memory_mb: int, pids: int, network: str, read_only: bool, sidecars: int
) -> None:
    plan = _plan(
        resources=Resources(cpus=cpus, memory_mb=memory_mb, pids=pids),
        network=network,
        read_only=read_only,
        sidecars=tuple(Sidecar(name=f"s{i}", image="busybox") for i in range(sidecars)),
    )

    count = 1 + sidecars
    for container in (plan.job, *plan.sidecars):
        check_hardened(container.config)
        host = container.config["HostConfig"]
        assert host["Memory"] == host["MemorySwap"] == (memory_mb // count) * MIB
        assert host["PidsLimit"] == pids // count
        assert host["NanoCpus"] == round(cpus / count * 1e9)
        assert host["OomScoreAdj"] == 500
        extra = {LABEL_TIMEOUT: "3600"} if container.role == "job" else {}
        assert container.config["Labels"] == {**LABELS, **extra}
    if plan.network is not None:
        assert plan.network.config["Labels"] == LABELS
    assert len({c.name for c in (plan.job, *plan.sidecars)}) == 1 + sidecars


def test_image_volumes_become_capped_tmpfs_owned_by_the_job_user() -> None:
    plan = _plan(resources=Resources(memory_mb=64))
    config = with_image_volumes(plan.job.config, ["/data/", "/var/lib/x", "/tmp"])
    tmpfs = config["HostConfig"]["Tmpfs"]

    assert tmpfs["/data"] == tmpfs["/var/lib/x"]
    assert tmpfs["/data"] == "rw,nosuid,nodev,mode=1777,uid=65534,gid=65534,noexec,size=32m"
    assert tmpfs["/tmp"] == plan.job.config["HostConfig"]["Tmpfs"]["/tmp"]  # already one
    assert "/data" not in plan.job.config["HostConfig"]["Tmpfs"]  # the plan is unchanged
    check_hardened(config)


@pytest.mark.parametrize(
    ("volumes", "problem"),
    [([f"/v{i}" for i in range(17)], "declares 17 VOLUMEs"), (["/"], "absolute path")],
)
def test_image_volumes_that_cannot_be_tmpfs_are_refused(volumes: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        with_image_volumes(_plan().job.config, volumes)


@pytest.mark.parametrize(
    ("driver", "backing", "capped"),
    [
        ("overlay2", "xfs", True),
        ("overlay2", "extfs", False),  # this machine: /var/lib/docker on ext4
        ("btrfs", "btrfs", True),
        ("zfs", "zfs", True),
        ("vfs", "extfs", False),
    ],
)
def test_a_writable_layer_is_capped_where_the_driver_can(
    driver: str, backing: str, capped: bool
) -> None:
    assert can_cap_writable_layer(driver, backing) is capped


def test_only_a_writable_root_gets_the_storage_cap() -> None:
    writable = with_writable_cap(_plan(read_only=False).job.config)
    assert writable["HostConfig"]["StorageOpt"] == {"size": "1024M"}
    read_only = _plan().job.config
    assert with_writable_cap(read_only) is read_only
    check_hardened(writable)
