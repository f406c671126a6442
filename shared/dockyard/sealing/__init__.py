"""Sealed secrets: secret env values encrypted from the API to the orchestrator that runs them."""

from dockyard.sealing.envelope import KeyRing, SealError, SealingKey, UnknownKey, is_sealed
from dockyard.sealing.key_files import KeyFileError, load_key_ring, new_key_text
from dockyard.sealing.spec_secrets import (
    has_secrets,
    job_scope,
    open_spec,
    reseal_spec,
    schedule_scope,
    seal_spec,
)

__all__ = [
    "KeyFileError",
    "KeyRing",
    "SealError",
    "SealingKey",
    "UnknownKey",
    "has_secrets",
    "is_sealed",
    "job_scope",
    "load_key_ring",
    "new_key_text",
    "open_spec",
    "reseal_spec",
    "schedule_scope",
    "seal_spec",
]
