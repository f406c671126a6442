"""The layout's rule, checked on the imports: the core imports nothing of ours, the adapters
only the core and what sits beneath them, and no service imports another service.

A shared package (a folder of `shared/dockyard/`) may import only the packages, or the single
modules, listed for it; a service (a folder of `services/dockyard/`) any shared package except
the CLI, and no other service. The CLI is the `dockyard` command: it starts every service.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "shared" / "dockyard"
SERVICES = ROOT / "services" / "dockyard"

# package -> what it may import of ours besides itself: a package, or one module of one.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "process": set(),
    "embedded": set(),
    "client": set(),
    # The job limits and tenant rules it reads, as the core takes them.
    "config": {"core.spec_bounds", "core.tenant_limits"},
    "telemetry": {"core"},
    "store": {"core", "process"},
    "handling": {"core", "store", "process"},
    # bus.names names every subject, header and container label; bus.errors its poison type.
    "runtime": {"core", "process", "bus.names"},
    "job_logs": {"core", "store", "bus.names", "bus.errors"},
    "bus": {"core", "store", "process", "telemetry"},
    "web": {"core", "store"},
    # Sealed secrets: the spec it seals; the key ring is its own (AEAD from `cryptography`).
    "sealing": {"core"},
    "stack": {
        "client",
        "config",
        "embedded",
        "store",
        "bus.permissions",
        "bus.connection",
        "sealing.key_files",
    },
}
SERVICE_NAMES = {p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists()}
SHARED_NAMES = {p.stem for p in SHARED.iterdir() if p.is_dir() or p.suffix == ".py"}
SHARED_NAMES.discard("__pycache__")


def imported(path: Path) -> Iterator[str]:
    """Every `dockyard.x.y...` name a file imports, at any depth (lazy imports too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dockyard":
                yield from (f"dockyard.{alias.name}" for alias in node.names)
            elif node.module.startswith("dockyard."):
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("dockyard."))


def package_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def permitted(module: str, allowed: set[str]) -> bool:
    parts = module.split(".")[1:]
    return parts[0] in allowed or ".".join(parts[:2]) in allowed


def test_the_root_of_shared_holds_only_packages_and_config() -> None:
    loose = {p.name for p in SHARED.glob("*.py")}
    assert loose == {"config.py"}
    assert not (SHARED / "__init__.py").exists()  # a namespace package over shared/, services/


def test_every_shared_package_has_a_rule() -> None:
    assert SHARED_NAMES - {"cli"} == set(ALLOWED)


@pytest.mark.parametrize("path", files(SHARED), ids=lambda p: str(p.relative_to(SHARED)))
def test_a_shared_module_imports_only_what_its_layer_allows(path: Path) -> None:
    own = package_of(path, SHARED)
    if own == "cli":
        return
    wrong = [m for m in imported(path) if m.split(".")[1] != own and not permitted(m, ALLOWED[own])]
    assert wrong == [], f"{own} may import only {sorted(ALLOWED[own])}"


@pytest.mark.parametrize("path", files(SERVICES), ids=lambda p: str(p.relative_to(SERVICES)))
def test_a_service_imports_shared_code_and_never_another_service(path: Path) -> None:
    own = package_of(path, SERVICES)
    wrong = [
        m
        for m in imported(path)
        if m.split(".")[1] != own and (m.split(".")[1] in SERVICE_NAMES or m.split(".")[1] == "cli")
    ]
    assert wrong == []
