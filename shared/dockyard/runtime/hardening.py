"""The hardened engine requests for one job attempt: pure, so every security choice is unit-tested.

Every choice here is part of the contract's "Containers the orchestrator creates": all
capabilities dropped, no-new-privileges, the default seccomp profile (we never set one), the
spec's limits with swap = memory, a nofile ulimit, never privileged, never any host mount.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
from collections.abc import Iterable
from typing import Any, Final

from dockyard.bus.names import (
    LABEL_ATTEMPT,
    LABEL_DEPLOYMENT,
    LABEL_JOB,
    LABEL_ORCHESTRATOR,
    LABEL_TIMEOUT,
)

# The names live in the core, which refuses a ledger entry under any other name.
from dockyard.core.resource_names import container_name as container_name
from dockyard.core.resource_names import network_name as network_name
from dockyard.core.spec import JobSpec, Resources, Sidecar, container_share
from dockyard.runtime.ports import ContainerPlan, JobPlan, NetworkPlan

MIB = 1024 * 1024
# Soft 1024 is what most software expects (select() breaks above it); hard 4096 lets servers
# raise it themselves, while a leak still hits a wall long before the host's file table does.
NOFILE_SOFT = 1024
NOFILE_HARD = 4096
# tmpfs pages count against the container's memory limit, so a tmpfs larger than half of it
# would end in an OOM kill instead of a clear "No space left on device".
TMP_MAX_MB = 64
WORKDIR_MAX_MB = 256
# An image's VOLUMEs become tmpfs mounts of this size at most (never disk-backed volumes);
# an image that declares more than MAX_VOLUMES of them is refused.
VOLUME_MAX_MB = 64
MAX_VOLUMES = 16
# The contract: SIGTERM, then SIGKILL after 10 s; also what a bare `docker stop` will do.
STOP_SIGNAL = "SIGTERM"
STOP_TIMEOUT_S = 10
# Sidecars are not attached; a small rotated json-file keeps `docker logs` useful to operators.
SIDECAR_LOG: Final = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}
# The job's output is read over attach into our own capped pipeline; a log driver would only
# copy it to disk again (unbounded with json-file's defaults) and costs 3-6x read throughput.
JOB_LOG: Final = {"Type": "none", "Config": {}}
_FORBIDDEN_HOST_KEYS = ("Binds", "Mounts", "VolumesFrom", "Devices")
# Every job network's bridge is named `dy<5 hex of the orchestrator><8 hex of the network>`:
# an orchestrator's egress rules match its own job bridges with one `-i dy<5 hex>+` and
# nothing else on the host, whatever other orchestrators there enforce (egress_rules.py).
BRIDGE_PREFIX: Final = "dy"
BRIDGE_OPTION: Final = "com.docker.network.bridge.name"
# The host's OOM killer picks the highest score: a job (or sidecar) before any service.
OOM_SCORE_ADJ: Final = 500


def labels_for(
    job_id: str, attempt: int, orchestrator: str, deployment: str | None = None
) -> dict[str, str]:
    labels = {LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt), LABEL_ORCHESTRATOR: orchestrator}
    if deployment is not None:
        labels[LABEL_DEPLOYMENT] = deployment
    return labels


def plan_job(
    spec: JobSpec,
    *,
    job_id: str,
    attempt: int,
    orchestrator: str,
    deployment: str | None = None,
) -> JobPlan:
    """The network, sidecars and job container for one attempt, in creation order."""
    labels = labels_for(job_id, attempt, orchestrator, deployment)
    mode = spec.effective_network
    network = None if mode == "none" else _network_plan(job_id, attempt, mode, labels, orchestrator)
    net_name = "none" if network is None else network.name
    # The spec's resources are the attempt's budget: the job and its sidecars share it.
    share = container_share(spec)
    sidecars = tuple(
        _sidecar_plan(
            spec, sidecar, container_name(job_id, attempt, sidecar.name), net_name, labels, share
        )
        for sidecar in spec.sidecars
    )
    job_config = _container_config(
        spec,
        share,
        image=spec.image,
        command=spec.command,
        env=spec.env,
        network=net_name,
        aliases=(),
        labels={**labels, LABEL_TIMEOUT: f"{spec.timeout_s:g}"},
    )
    job_config["HostConfig"]["LogConfig"] = copy.deepcopy(JOB_LOG)
    job = ContainerPlan(name=container_name(job_id, attempt), config=job_config, role="job")
    return JobPlan(job=job, sidecars=sidecars, network=network)


def _network_plan(
    job_id: str, attempt: int, mode: str, labels: dict[str, str], orchestrator: str
) -> NetworkPlan:
    name = network_name(job_id, attempt)
    config: dict[str, Any] = {
        "Name": name,
        "Driver": "bridge",
        # `isolated`: no route out, only the job and its sidecars; `egress`: NAT to the world.
        "Internal": mode == "isolated",
        "Attachable": False,
        "EnableIPv6": False,
        # Engines before API 1.44 accept a duplicate name unless asked to check.
        "CheckDuplicate": True,
        "Labels": dict(labels),
        "Options": {BRIDGE_OPTION: bridge_name(name, orchestrator)},
    }
    return NetworkPlan(name=name, config=config)


# Docker 28 (API 1.48) can keep an internal network's gateway address off the host, so that
# nothing on the host is reachable from it; 20.10 does not know the option (the orchestrator's
# INPUT rules cover that there: orchestrator/egress_rules.py).
GATEWAY_MODE_OPTION: Final = "com.docker.network.bridge.gateway_mode_ipv4"
GATEWAY_MODE_API: Final = (1, 48)


def with_isolated_gateway(config: dict[str, Any], api_version: str) -> dict[str, Any]:
    """An `isolated` network's create request with its gateway off the host, where the
    engine's API version knows the option; the request unchanged otherwise."""
    if not config.get("Internal") or _api(api_version) < GATEWAY_MODE_API:
        return config
    updated = copy.deepcopy(config)
    updated.setdefault("Options", {})[GATEWAY_MODE_OPTION] = "isolated"
    return updated


# `read_only: false` (tenants with allow_root only) gets a writable layer of at most this size
# where the storage driver can cap it: overlay2 on xfs (mounted with pquota, else the engine
# refuses the create saying so), btrfs, zfs, devicemapper. Elsewhere (overlay2 on ext4, as on
# this machine) it cannot be capped, and docs/operations.md says so.
WRITABLE_MAX_MB: Final = 1024
_SIZED_DRIVERS: Final = frozenset({"btrfs", "zfs", "devicemapper"})


def can_cap_writable_layer(driver: str, backing_filesystem: str) -> bool:
    """Whether the engine's storage driver takes `StorageOpt size` (from `docker info`)."""
    if driver == "overlay2":
        return backing_filesystem == "xfs"
    return driver in _SIZED_DRIVERS


def with_writable_cap(config: dict[str, Any], size_mb: int = WRITABLE_MAX_MB) -> dict[str, Any]:
    """A writable-root container's create request with its writable layer capped."""
    if config["HostConfig"].get("ReadonlyRootfs", True):
        return config
    updated = copy.deepcopy(config)
    updated["HostConfig"]["StorageOpt"] = {"size": f"{size_mb}M"}
    return updated


def _api(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def bridge_prefix(orchestrator: str) -> str:
    """What the names of one orchestrator's job bridges begin with."""
    return BRIDGE_PREFIX + hashlib.sha256(orchestrator.encode()).hexdigest()[:5]


def bridge_name(network: str, orchestrator: str) -> str:
    """The host interface of a job network: 15 characters, the kernel's limit."""
    return bridge_prefix(orchestrator) + hashlib.sha256(network.encode()).hexdigest()[:8]


def _sidecar_plan(
    spec: JobSpec,
    sidecar: Sidecar,
    name: str,
    network: str,
    labels: dict[str, str],
    share: Resources,
) -> ContainerPlan:
    config = _container_config(
        spec,
        share,
        image=sidecar.image,
        command=sidecar.command,
        env=sidecar.env,
        network=network,
        aliases=(sidecar.name,),
        labels=labels,
    )
    config["HostConfig"]["LogConfig"] = copy.deepcopy(SIDECAR_LOG)
    return ContainerPlan(name=name, config=config, role="sidecar")


def _container_config(
    spec: JobSpec,
    share: Resources,
    *,
    image: str,
    command: list[str] | None,
    env: dict[str, str],
    network: str,
    aliases: tuple[str, ...],
    labels: dict[str, str],
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Image": image,
        "Env": [f"{key}={value}" for key, value in env.items()],
        "User": spec.user,
        "WorkingDir": spec.workdir,
        "Labels": dict(labels),
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": False,
        "Tty": False,
        "StopSignal": STOP_SIGNAL,
        "StopTimeout": STOP_TIMEOUT_S,
        "HostConfig": _host_config(spec, share, network),
    }
    if command is not None:
        config["Cmd"] = list(command)
    if network != "none":
        endpoint = {"Aliases": list(aliases)} if aliases else {}
        config["NetworkingConfig"] = {"EndpointsConfig": {network: endpoint}}
    return config


def _host_config(spec: JobSpec, share: Resources, network: str) -> dict[str, Any]:
    memory = share.memory_mb * MIB
    return {
        "NanoCpus": round(share.cpus * 1e9),
        "Memory": memory,
        "MemorySwap": memory,  # swap = memory: no swap beyond the limit
        "PidsLimit": share.pids,
        "OomScoreAdj": OOM_SCORE_ADJ,
        "Ulimits": [{"Name": "nofile", "Soft": NOFILE_SOFT, "Hard": NOFILE_HARD}],
        "CapDrop": ["ALL"],
        "CapAdd": [],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "ReadonlyRootfs": spec.read_only,
        "Tmpfs": _tmpfs(spec, share),
        "NetworkMode": network,
        "IpcMode": "private",
        # A tiny init as PID 1 forwards SIGTERM (a shell as PID 1 ignores it) and reaps zombies.
        "Init": True,
        "AutoRemove": False,  # we read the exit code first, then remove
        "RestartPolicy": {"Name": "no"},
    }


def _tmpfs(spec: JobSpec, share: Resources) -> dict[str, str]:
    half = max(1, share.memory_mb // 2)
    # mode=1777: writable by any uid (default 65534), like /tmp on a host. But where the image
    # has the directory, runc chmods the mount to the image's mode after mounting (0755 for a
    # root-owned `WORKDIR /app`), and Docker 20.10 has no `notmpcopyup` and does the same for
    # the Mounts API's TmpfsOptions.Mode: so the mount's root is also owned by the job's user.
    common = "rw,nosuid,nodev,mode=1777" + _owner_options(spec.user)
    mounts = {"/tmp": f"{common},noexec,size={min(TMP_MAX_MB, half)}m"}
    # The workdir is where jobs build and run their own programs, so it stays executable.
    mounts[spec.workdir] = f"{common},exec,size={min(WORKDIR_MAX_MB, half)}m"
    return mounts


def with_image_volumes(config: dict[str, Any], volumes: Iterable[str]) -> dict[str, Any]:
    """The create request with each of the image's VOLUMEs as a size-capped tmpfs: the engine
    makes no anonymous disk-backed volume where a tmpfs is mounted, and that volume would be
    writable past the read-only root and the caps (security review F10). ValueError says why
    an image cannot run so."""
    paths = sorted({posixpath.normpath(path) for path in volumes})
    if len(paths) > MAX_VOLUMES:
        raise ValueError(
            f"the image declares {len(paths)} VOLUMEs; at most {MAX_VOLUMES} are mounted "
            "(as size-capped tmpfs)"
        )
    if any(not path.startswith("/") or path == "/" for path in paths):
        raise ValueError("the image declares a VOLUME that is not an absolute path below /")
    updated = copy.deepcopy(config)
    host = updated["HostConfig"]
    half = max(1, host["Memory"] // MIB // 2)
    common = "rw,nosuid,nodev,mode=1777" + _owner_options(updated["User"])
    for path in paths:
        # /tmp and the workdir are tmpfs already; what sits below them is inside those.
        host["Tmpfs"].setdefault(path, f"{common},noexec,size={min(VOLUME_MAX_MB, half)}m")
    return updated


def _owner_options(user: str) -> str:
    """`,uid=U,gid=G` for a numeric user; a user name resolves only inside the image, so it
    gets mode 1777 alone (a known limit, in docs/failures.md)."""
    uid, _, gid = user.partition(":")
    if not _is_id(uid):
        return ""
    options = f",uid={int(uid)}"
    return f"{options},gid={int(gid)}" if _is_id(gid) else options


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) < 2**32


def check_hardened(config: dict[str, Any]) -> None:
    """Refuse a request that would weaken the profile; raises ValueError naming the problem."""
    host = config.get("HostConfig", {})
    for key in _FORBIDDEN_HOST_KEYS:
        if host.get(key):
            raise ValueError(f"host mounts and devices are never allowed ({key})")
    if config.get("Volumes"):
        raise ValueError("volumes are never allowed")
    if host.get("Privileged") or host.get("CapAdd"):
        raise ValueError("privileged containers and added capabilities are never allowed")
    if host.get("CapDrop") != ["ALL"]:
        raise ValueError("all capabilities must be dropped")
    options = host.get("SecurityOpt", [])
    if "no-new-privileges" not in options:
        raise ValueError("no-new-privileges is required")
    if any(opt.startswith(("seccomp", "apparmor", "label")) for opt in options):
        raise ValueError("the default seccomp/AppArmor profiles must stay on")
    if any("docker.sock" in path for path in host.get("Tmpfs", {})):
        raise ValueError("the Docker socket path is never mounted")
    if host.get("NetworkMode") in ("host", "bridge", "default") or host.get("PidMode"):
        raise ValueError("host and default networks/namespaces are never shared")
