"""The documentation stays true: the configuration reference is what the settings code says."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from dockyard import config
from dockyard.bus import names
from dockyard.client.target import DEFAULT_API_URL, DEFAULT_LOGS_URL
from dockyard.janitor.config import DAY_S, JanitorConfig
from dockyard.orchestrator.config import DRAIN_S
from dockyard.telemetry.tracing import ENDPOINT_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    path = ROOT / "scripts" / "config-reference"
    loader = importlib.machinery.SourceFileLoader("config_reference", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- the configuration reference -------------------------------------------------------------


def test_the_configuration_reference_is_what_the_generator_writes() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert page == _generator().render(), (
        "docs/configuration.md is out of date: run .venv/bin/python scripts/config-reference"
    )


def _string_constants(tree: ast.AST) -> list[str]:
    """Every string literal of a module except docstrings (what the code uses, not prose)."""
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_every_variable_the_code_names_is_described() -> None:
    described = {v.name for v in _generator().all_variables()}
    # Streams are spelled DOCKYARD_... too; they are names of NATS, not of the environment.
    streams = {value for value in vars(names).values() if isinstance(value, str)}
    pattern = re.compile(r"\bDOCKYARD_[A-Z][A-Z0-9_]*[A-Z0-9]\b")
    named: dict[str, set[str]] = {}
    for folder in ("shared", "services"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for text in _string_constants(ast.parse(path.read_text(), str(path))):
                for name in pattern.findall(text):
                    named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    missing = {name: files for name, files in named.items() if name not in streams | described}
    assert not missing, f"named in the code but not in any VARIABLES: {missing}"
    unread = described - set(named) - {"DOCKER_HOST", "OTEL_EXPORTER_OTLP_ENDPOINT"}
    assert not unread, f"described but named nowhere in the code: {sorted(unread)}"
    page = (DOCS / "configuration.md").read_text()
    for name in ENDPOINT_VARIABLES:
        assert f"`{name}`" in page


def test_the_documented_defaults_are_the_codes() -> None:
    by_name = {v.name: v.default for v in _generator().all_variables()}
    for name, value in config.DEFAULTS.items():
        assert by_name[name] == value
    janitor = JanitorConfig.from_settings(config.load({}), {})
    assert float(by_name["DOCKYARD_JANITOR_INTERVAL_S"]) == janitor.interval_s
    assert float(by_name["DOCKYARD_JANITOR_GRACE_S"]) == janitor.grace_s
    assert float(by_name["DOCKYARD_JANITOR_STUCK_MARGIN_S"]) == janitor.stuck_margin_s
    assert float(by_name["DOCKYARD_JANITOR_STARTING_TIMEOUT_S"]) == janitor.starting_timeout_s
    assert float(by_name["DOCKYARD_JANITOR_REOFFER_AFTER_S"]) == janitor.reoffer_after_s
    assert float(by_name["DOCKYARD_LOG_RETENTION_DAYS"]) * DAY_S == janitor.log_retention_s
    assert float(by_name["DOCKYARD_JOB_RETENTION_DAYS"]) * DAY_S == janitor.job_retention_s
    assert janitor.cron is None and janitor.select == {} and janitor.metrics_listen is None
    assert float(by_name["DOCKYARD_DRAIN_S"]) == DRAIN_S
    assert by_name["DOCKYARD_API_URL"] == DEFAULT_API_URL
    assert by_name["DOCKYARD_LOGS_URL"].startswith(f"`{DEFAULT_LOGS_URL}`")
