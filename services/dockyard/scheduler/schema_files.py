"""The JSON documents under `schemas/`, generated from the code: `dockyard schemas write`.

A test regenerates them and fails when the committed copies are stale.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from dockyard.core.events import EVENT_TYPES, Event, type_name
from dockyard.core.spec import JobSpec


def repo_schemas_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "schemas"


def _dump(doc: object) -> str:
    return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n"


def generated() -> dict[str, str]:
    """Relative path under schemas/ -> file text."""
    files = {
        f"events/{type_name(cls)}.json": _dump(msgspec.json.schema(cls)) for cls in EVENT_TYPES
    }
    files["events/_union.json"] = _dump(msgspec.json.schema(Event))
    files["job-spec.json"] = _dump(msgspec.json.schema(JobSpec))
    # The API document lives with the scheduler; this tool writes every file under schemas/.
    from dockyard.scheduler.openapi import document

    files["openapi.json"] = _dump(document())
    return files


def write(root: Path | None = None) -> list[str]:
    """Write every generated file; return the paths that changed."""
    root = root or repo_schemas_dir()
    changed = []
    for rel, text in generated().items():
        path = root / rel
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed


def stale(root: Path | None = None) -> list[str]:
    root = root or repo_schemas_dir()
    return [
        rel
        for rel, text in generated().items()
        if not (root / rel).exists() or (root / rel).read_text() != text
    ]
