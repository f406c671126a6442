"""How `dockyard submit` and `dockyard schedules create` read their words (issue #23): options
end at `--` or at the command line's first word; before that an unknown option is a usage
error (exit 2) and nothing is sent; after it every word is the command, untouched.
`--secret K=V` and `--secret K` (from the caller's environment) make secret env entries, and no
error shows a secret's value. The API is a fake that records what would have been sent."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner, Result

from dockyard.cli import jobs, schedules
from dockyard.cli.jobs import build_spec
from dockyard.cli.main import cli
from dockyard.client import Target

SUBMIT_USAGE = (
    "Usage: dockyard submit [OPTIONS] [COMMAND]...\nTry 'dockyard submit --help' for help."
)
VALUE = "abc123-value"


class FakeApi:
    """Stands in for ApiClient: records each request body, answers as the API would."""

    sent: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, target: Target) -> None:
        self.target = target

    async def __aenter__(self) -> FakeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(("submit", spec))
        return {"id": "job-1"}

    async def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(("schedule", body))
        return {"next_fire": "2030-01-01T00:00:00Z"}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(FakeApi, "sent", calls)
    target = Target(api_url="http://api.test", logs_url="http://logs.test", token="t")
    for module in (jobs, schedules):
        monkeypatch.setattr(module, "ApiClient", FakeApi)
        monkeypatch.setattr(module, "load_target", lambda: target)
    return calls


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, prog_name="dockyard")


def submitted(sent: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    assert [kind for kind, _ in sent] == ["submit"]
    return sent[0][1]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--memroy", "100", "--", "true"], "No such option '--memroy'. Did you mean '--memory'?"),
        (["--pid", "64", "--", "true"], "No such option '--pid'. Did you mean '--pids'?"),
        (
            ["--secrets", "T=x", "--", "true"],
            "No such option '--secrets'. (Did you mean one of: '--retries', '--secret'?)",
        ),
        (["--zzzz", "--", "true"], "No such option '--zzzz'."),
        (["--env", "A=1", "-x", "true"], "No such option '-x'."),
    ],
)
def test_an_unknown_option_before_the_command_is_a_usage_error(
    sent: list[tuple[str, dict[str, Any]]], args: list[str], error: str
) -> None:
    result = run("submit", *args)
    assert result.exit_code == 2
    assert result.output == f"{SUBMIT_USAGE}\n\nError: {error}\n"
    assert sent == []


def test_the_issue_s_example_makes_a_secret_not_a_command(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    result = run("submit", "--secret", f"TOKEN={VALUE}", "--", "sh", "-c", "deploy")
    assert result.exit_code == 0, result.output
    assert result.output == "job-1\n"
    spec = submitted(sent)
    assert spec["command"] == ["sh", "-c", "deploy"]
    assert spec["env"] == {"TOKEN": VALUE}
    assert spec["secrets"] == ["TOKEN"]


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["--", "ls", "-la"], ["ls", "-la"]),
        (["--", "sh", "-c", "x --y"], ["sh", "-c", "x --y"]),
        (["--", "--memory", "1", "--secret", "T"], ["--memory", "1", "--secret", "T"]),
        (["--", "--", "x"], ["--", "x"]),
        (["ls", "-la"], ["ls", "-la"]),
        (["--memory", "3", "sh", "-c", "x --y"], ["sh", "-c", "x --y"]),
        (["echo", "--secret", "T=1", "--memroy"], ["echo", "--secret", "T=1", "--memroy"]),
    ],
)
def test_words_after_dashes_or_the_first_word_are_the_command_untouched(
    sent: list[tuple[str, dict[str, Any]]], args: list[str], command: list[str]
) -> None:
    result = run("submit", *args)
    assert result.exit_code == 0, result.output
    spec = submitted(sent)
    assert spec["command"] == command
    assert "secrets" not in spec
    assert "env" not in spec


def test_options_before_the_command_still_make_the_spec(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    result = run("submit", "--memory", "64", "--pids", "32", "--env", "A=1", "ls", "-l")
    assert result.exit_code == 0, result.output
    spec = submitted(sent)
    assert spec["resources"] == {"memory_mb": 64, "pids": 32}
    assert spec["env"] == {"A": "1"}
    assert spec["command"] == ["ls", "-l"]


@pytest.mark.parametrize("pids", ["0", "65537", "many"])
def test_pids_out_of_range_is_a_usage_error(
    sent: list[tuple[str, dict[str, Any]]], pids: str
) -> None:
    result = run("submit", "--pids", pids, "--", "true")
    assert result.exit_code == 2
    assert "Invalid value for '--pids'" in result.output
    assert sent == []


def test_a_secret_without_a_value_comes_from_the_callers_environment(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    result = run(
        "submit", "--env", "PLAIN=1", "--secret", "TOKEN", "--secret", "OTHER=x", "--", "true",
        env={"TOKEN": VALUE},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == "job-1\n"
    spec = submitted(sent)
    assert spec["env"] == {"PLAIN": "1", "TOKEN": VALUE, "OTHER": "x"}
    assert spec["secrets"] == ["TOKEN", "OTHER"]


def test_a_secret_missing_from_the_environment_is_a_usage_error_naming_it(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    result = run("submit", "--secret", "TOKEN", "--", "true", env={"TOKEN": None})
    assert result.exit_code == 2
    assert result.output.endswith(
        "Error: Invalid value for '--secret': TOKEN is not set in this shell's environment\n"
    )
    assert sent == []


@pytest.mark.parametrize(
    ("item", "named"),
    [(f"={VALUE}", "needs a name"), (f"BAD-KEY={VALUE}", "'BAD-KEY' is no environment")],
)
def test_a_bad_secret_name_is_a_usage_error_that_never_shows_the_value(
    sent: list[tuple[str, dict[str, Any]]], item: str, named: str
) -> None:
    result = run("submit", "--secret", item, "--", "true")
    assert result.exit_code == 2
    assert named in result.output
    assert VALUE not in result.output
    assert sent == []


def test_a_key_given_as_env_and_as_secret_is_a_secret() -> None:
    spec = build_spec(
        image="i", command=(), timeout=None, cpus=None, memory=None, retries=None,
        env=("K=plain", "A=1"), queue=None, secrets={"K": VALUE},
    )  # fmt: skip
    assert spec == {"image": "i", "env": {"K": VALUE, "A": "1"}, "secrets": ["K"]}


SCHEDULE = ("schedules", "create")


@pytest.mark.parametrize(
    "args",
    [
        ["n", "--interval", "60", "--memroy", "1", "--", "true"],
        ["--memroy", "1", "n", "--interval", "60", "--", "true"],
        ["n", "--interval", "60", "--memroy", "1", "true"],
    ],
)
def test_schedules_create_refuses_an_unknown_option_too(
    sent: list[tuple[str, dict[str, Any]]], args: list[str]
) -> None:
    result = run(*SCHEDULE, *args)
    assert result.exit_code == 2
    assert "Usage: dockyard schedules create [OPTIONS] NAME [COMMAND]..." in result.output
    assert result.output.endswith("Error: No such option '--memroy'. Did you mean '--memory'?\n")
    assert sent == []


@pytest.mark.parametrize(
    ("args", "name", "command", "memory"),
    [
        (["n", "--interval", "60", "--", "ls", "-la"], "n", ["ls", "-la"], None),
        (["n", "--interval", "60", "ls", "-la"], "n", ["ls", "-la"], None),
        (["--memory", "5", "n", "--interval", "60", "ls"], "n", ["ls"], 5),
        (["n", "--interval", "60", "--", "--memory", "5"], "n", ["--memory", "5"], None),
        (["--interval", "60", "--", "n", "--memory", "5"], "n", ["--memory", "5"], None),
        (["--interval", "60", "n", "--memory", "5", "sh", "-c", "x --y"], "n",
         ["sh", "-c", "x --y"], 5),
    ],
)  # fmt: skip
def test_schedules_create_takes_options_around_name_and_the_rest_as_command(
    sent: list[tuple[str, dict[str, Any]]],
    args: list[str],
    name: str,
    command: list[str],
    memory: int | None,
) -> None:
    result = run(*SCHEDULE, *args)
    assert result.exit_code == 0, result.output
    assert [kind for kind, _ in sent] == ["schedule"]
    body = sent[0][1]
    assert (body["name"], body["interval_s"], body["job"]["command"]) == (name, 60, command)
    assert body["job"].get("resources", {}).get("memory_mb") == memory


def test_an_option_whose_value_is_dashes_does_not_end_the_options(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    result = run(*SCHEDULE, "--queue", "--", "n", "--interval", "60", "ls")
    assert result.exit_code == 0, result.output
    body = sent[0][1]
    assert (body["name"], body["job"]["queue"], body["job"]["command"]) == ("n", "--", ["ls"])


def test_schedules_create_takes_secrets_and_pids(
    sent: list[tuple[str, dict[str, Any]]],
) -> None:
    args = ["n", "--cron", "0 3 * * *", "--secret", "TOKEN", "--pids", "8", "--", "true"]
    result = run(*SCHEDULE, *args, env={"TOKEN": VALUE})
    assert result.exit_code == 0, result.output
    assert VALUE not in result.output
    job = sent[0][1]["job"]
    assert (job["env"], job["secrets"], job["resources"]) == (
        {"TOKEN": VALUE},
        ["TOKEN"],
        {"pids": 8},
    )


def test_schedules_create_without_name_says_so(sent: list[tuple[str, dict[str, Any]]]) -> None:
    result = run(*SCHEDULE, "--interval", "60")
    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.output
    assert sent == []


@pytest.mark.parametrize(
    "args",
    [
        ["status", "x", "--bogus"],
        ["status", "--bogus", "x"],
        ["logs", "x", "--bogus"],
        ["cancel", "x", "--bogus"],
        ["events", "--bogus", "x"],
        ["ls", "--bogus"],
        ["schedules", "--bogus"],
        ["schedules", "ls", "--bogus"],
        ["schedules", "delete", "n", "--bogus"],
        ["--bogus", "submit", "--", "true"],
    ],
)
def test_every_command_refuses_an_unknown_option(
    sent: list[tuple[str, dict[str, Any]]], args: list[str]
) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.endswith("Error: No such option '--bogus'.\n")
    assert sent == []


def test_help_shows_the_new_options() -> None:
    result = run("submit", "--help")
    assert result.exit_code == 0
    assert "--secret K[=V]" in result.output
    assert "--pids" in result.output
    assert "Options end at `--`" in result.output


@pytest.mark.parametrize("service", ["scheduler", "orchestrator", "janitor", "log-relay"])
def test_a_service_with_a_malformed_variable_says_which_in_one_line(service: str) -> None:
    result = CliRunner().invoke(
        cli, [service], env={"DOCKYARD_LEASE_S": "soon"}, prog_name="dockyard"
    )
    assert result.exit_code == 1
    assert result.output.strip() == "dockyard: DOCKYARD_LEASE_S: 'soon' is not a number"
    assert "Traceback" not in result.output
