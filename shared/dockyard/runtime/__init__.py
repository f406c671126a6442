"""Containers for job attempts: the runtime port, its Docker and in-memory adapters, the
hardened engine requests and the pipeline that turns output into numbered log lines."""

from dockyard.core.log_line import LogLine, LogStream
from dockyard.runtime.docker import DockerRuntime
from dockyard.runtime.fake import FakeRuntime, Script
from dockyard.runtime.hardening import (
    check_hardened,
    container_name,
    labels_for,
    network_name,
    plan_job,
)
from dockyard.runtime.lines import LineSplitter, SecretMasker
from dockyard.runtime.output import DEFAULT_CAP_BYTES, LogPipeline
from dockyard.runtime.ports import (
    AlreadyExists,
    Chunk,
    ContainerError,
    ContainerPlan,
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerState,
    ExitStatus,
    ImagePullFailed,
    JobPlan,
    NetworkPlan,
    NotFound,
    OutputStream,
    Resource,
    RuntimeUnavailable,
)
from dockyard.runtime.pump import LogPump

__all__ = [
    "DEFAULT_CAP_BYTES",
    "AlreadyExists",
    "Chunk",
    "ContainerError",
    "ContainerPlan",
    "ContainerRuntime",
    "ContainerRuntimeError",
    "ContainerState",
    "DockerRuntime",
    "ExitStatus",
    "FakeRuntime",
    "ImagePullFailed",
    "JobPlan",
    "LineSplitter",
    "LogLine",
    "LogPipeline",
    "LogPump",
    "LogStream",
    "NetworkPlan",
    "NotFound",
    "OutputStream",
    "Resource",
    "RuntimeUnavailable",
    "Script",
    "SecretMasker",
    "check_hardened",
    "container_name",
    "labels_for",
    "network_name",
    "plan_job",
]
