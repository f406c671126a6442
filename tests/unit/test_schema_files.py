"""The JSON Schemas under schemas/ are generated from the code and must be current."""

from __future__ import annotations

from dockyard.scheduler import schema_files


def test_committed_schemas_are_current() -> None:
    stale = schema_files.stale()
    assert not stale, f"regenerate with `dockyard schemas write`: {stale}"
