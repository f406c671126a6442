"""The documentation stays true: its links resolve, the failure table names tests that exist,
and the configuration reference is what the settings code says."""

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
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target); the target up to a space (a title may follow) or `)`.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation, spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose(path.read_text()):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code."""
    found: list[tuple[int, str]] = []
    for number, line in _prose(path.read_text()):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, match[1]))
    return found


def _generator() -> ModuleType:
    path = ROOT / "scripts" / "config-reference"
    loader = importlib.machinery.SourceFileLoader("config_reference", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- links -------------------------------------------------------------------------------------


def test_the_slug_is_githubs() -> None:
    assert slug("What happens when things fail") == "what-happens-when-things-fail"
    assert slug("Logs: every line kept, served live") == "logs-every-line-kept-served-live"
    assert slug("The design document's list") == "the-design-documents-list"
    assert slug("`dockyard up` and **NATS**") == "dockyard-up-and-nats"
    assert slug("Security: what is open") == "security-what-is-open"


def test_every_page_is_linked_from_the_readme() -> None:
    targets = {target.split("#")[0] for _, target in links(ROOT / "README.md")}
    for page in sorted(DOCS.glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README.md does not link docs/{page.name}"


def test_every_doc_link_resolves_to_a_file_or_heading() -> None:
    broken: list[str] = []
    checked = 0
    for page in PAGES:
        for number, target in links(page):
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor:
                if resolved.suffix != ".md":
                    broken.append(f"{where} (an anchor into a file that is not Markdown)")
                elif anchor not in anchors(resolved):
                    broken.append(f"{where} (no such heading in {resolved.relative_to(ROOT)})")
    assert checked > 20, "no links found: is the link pattern broken?"
    assert not broken, "\n".join(broken)


# -- the failure table ---------------------------------------------------------------------------


def _defines(path: Path, name: str) -> bool:
    """Whether the module defines `name`: `func`, `Class`, `Class::method`, or a module-level
    assignment (a hypothesis state machine's TestCase)."""
    tree = ast.parse(path.read_text(), str(path))
    scope: list[ast.stmt] = tree.body
    *outer, last = name.split("::")
    for class_name in outer:
        classes = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == class_name]
        if not classes:
            return False
        scope = classes[0].body
    for node in scope:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == last:
                return True
        elif (
            isinstance(node, ast.Assign)
            and not outer
            and any(isinstance(t, ast.Name) and t.id == last for t in node.targets)
        ):
            return True
    return False


def failure_rows() -> list[tuple[str, list[tuple[str, str]]]]:
    """(fault, [(file, test)]) for every row of every table in docs/failures.md whose header
    has a `proved by` column."""
    rows: list[tuple[str, list[tuple[str, str]]]] = []
    column: int | None = None
    for _, line in _prose((DOCS / "failures.md").read_text()):
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if column is None:
            column = cells.index("proved by") if "proved by" in cells else -1
        elif column >= 0 and not set(line) <= set("|-: "):
            rows.append((cells[0], _TEST_REF.findall(cells[column])))
    return rows


def test_every_test_the_failure_table_names_exists() -> None:
    rows = failure_rows()
    assert len(rows) >= 40, f"only {len(rows)} rows found: is the table's layout changed?"
    problems: list[str] = []
    for fault, tests in rows:
        if not tests:
            problems.append(f"{fault!r} names no test as `tests/...py::test_name`")
        for file, name in tests:
            path = ROOT / file
            if not path.is_file():
                problems.append(f"{fault!r}: no file {file}")
            elif not _defines(path, name):
                problems.append(f"{fault!r}: {file} defines no {name}")
    assert not problems, "\n".join(problems)


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
