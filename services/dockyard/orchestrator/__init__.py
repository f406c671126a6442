"""The orchestrator: claims jobs from its queues and runs them in Docker containers."""

from dockyard.orchestrator.attempt import Attempt, AttemptContext, Claim
from dockyard.orchestrator.config import OrchestratorConfig
from dockyard.orchestrator.service import Orchestrator, bootstrap, run_orchestrator

__all__ = [
    "Attempt",
    "AttemptContext",
    "Claim",
    "Orchestrator",
    "OrchestratorConfig",
    "bootstrap",
    "run_orchestrator",
]
