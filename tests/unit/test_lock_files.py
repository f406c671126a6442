"""The hash-checked lock files (requirements/*.lock, remade by scripts/lock): every dependency
pyproject.toml names is pinned there at a version it accepts, and every pin carries hashes, so
scripts/bootstrap (CI) and the image install nothing unchecked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) of each pin in `lock`."""
    found: dict[str, tuple[Version, int]] = {}
    name: str | None = None
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match[1])
            found[name] = (Version(match[2]), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    wanted = [Requirement(text) for text in listed]
    here = default_environment()
    return [r for r in wanted if r.marker is None or r.marker.evaluate(here)]


@pytest.mark.parametrize(
    ("lock", "extra"), [("runtime.lock", None), ("test.lock", "test")], ids=["runtime", "test"]
)
def test_every_dependency_is_pinned_at_a_version_pyproject_accepts(
    lock: str, extra: str | None
) -> None:
    pinned = pins(LOCKS / lock)
    for requirement in requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock}: {name} is not pinned (run scripts/lock)"
        version, _ = pinned[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={version} is outside {requirement.specifier} (run scripts/lock)"
        )


@pytest.mark.parametrize("lock", ["runtime.lock", "build.lock", "test.lock"])
def test_every_pin_carries_its_hashes(lock: str) -> None:
    pinned = pins(LOCKS / lock)
    assert pinned
    assert all(hashes > 0 for _, hashes in pinned.values()), lock


def test_the_build_backend_is_locked_for_the_image_and_for_ci() -> None:
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for lock in ("build.lock", "test.lock"):
        pinned = pins(LOCKS / lock)
        for text in backend:
            requirement = Requirement(text)
            version, _ = pinned[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version), lock


def test_bootstrap_installs_from_the_lock_with_hashes_and_nothing_else() -> None:
    script = (ROOT / "scripts" / "bootstrap").read_text()
    installs = [line for line in script.splitlines() if " install " in line and "pip" in line]
    assert any("--require-hashes" in line and '"$LOCK"' in line for line in installs)
    assert any("--no-deps --no-build-isolation -e ." in line for line in installs)
    assert "LOCK=requirements/test.lock" in script
    # Paths reach `sh -c` as arguments, never inside the script string.
    for line in script.splitlines():
        if "sh -c" in line:
            assert not re.search(r"""sh -c "[^"]*\$""", line), line
