"""The janitor: reconciles Docker with the ledger, ends lost orchestrators' and stuck jobs'
attempts, re-offers forgotten queued jobs, and applies retention. One per Docker engine host."""

from dockyard.janitor.config import JanitorConfig
from dockyard.janitor.facts import JobFacts, LedgerEntry, Orchestrator, World, job_facts
from dockyard.janitor.lease import SweepLock
from dockyard.janitor.metrics import JanitorMetrics
from dockyard.janitor.observe import Sources
from dockyard.janitor.plan import Action, Policy, plan
from dockyard.janitor.report import ActionResult, SweepReport
from dockyard.janitor.service import bootstrap, run_janitor
from dockyard.janitor.sweep import Janitor

__all__ = [
    "Action",
    "ActionResult",
    "Janitor",
    "JanitorConfig",
    "JanitorMetrics",
    "JobFacts",
    "LedgerEntry",
    "Orchestrator",
    "Policy",
    "Sources",
    "SweepLock",
    "SweepReport",
    "World",
    "bootstrap",
    "job_facts",
    "plan",
    "run_janitor",
]
