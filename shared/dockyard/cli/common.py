"""What every command shares: one-line errors, running a coroutine, the terminal's abilities,
and the parsing of commands that end in a command line."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from dockyard import config
from dockyard.client import ClientError
from dockyard.process import event_loop


def fail(message: str, code: int = 1) -> NoReturn:
    """Every error the user sees is one line on stderr and a non-zero exit."""
    click.secho(f"dockyard: {message}", err=True, fg="red")
    sys.exit(code)


def settings() -> config.Settings:
    """The environment's settings, or one line naming the variable that is wrong."""
    try:
        return config.load()
    except config.ConfigError as error:
        fail(str(error))


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return event_loop.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)
    except config.ConfigError as error:
        fail(str(error))
    except ClientError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot connect: {error}")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class CommandLine(click.Command):
    """A command whose last argument is a command line (`CMD...`).

    Its options end at `--` or at the first word that is not an option: from there on every
    word is the command line, untouched. Before that, an option it does not know is a usage
    error (exit 2, with click's "Did you mean"), never a word of the command line. Arguments
    before the command line (a schedule's NAME) may have options on either side.
    """

    allow_interspersed_args = False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        leading = sum(isinstance(param, click.Argument) for param in self.params) - 1
        if leading > 0:
            args = self._options_first(ctx, args, leading)
        return super().parse_args(ctx, args)

    def _options_first(self, ctx: click.Context, args: list[str], leading: int) -> list[str]:
        """`[OPTS] NAME [OPTS] CMD...` as `[OPTS] [OPTS] -- NAME CMD...`."""
        options: list[str] = []
        words: list[str] = []
        rest = args
        for _ in range(leading):
            head, rest, ended = self._split(ctx, rest)
            options += head
            if ended or not rest:
                return [*options, "--", *words, *rest]
            words.append(rest[0])
            rest = rest[1:]
        head, rest, _ = self._split(ctx, rest)
        return [*options, *head, "--", *words, *rest]

    def _split(self, ctx: click.Context, args: list[str]) -> tuple[list[str], list[str], bool]:
        """The options `args` begins with; the words after them; whether a `--` (in neither
        list) ended the options."""
        rest = self._parse_options(ctx, args)
        head = args[: len(args) - len(rest)]
        ended = head[-1:] == ["--"] and self._all_options(ctx, head[:-1])
        return (head[:-1] if ended else head), rest, ended

    def _all_options(self, ctx: click.Context, args: list[str]) -> bool:
        """Whether `args` is options only (so a `--` after them is no option's value)."""
        try:
            return not self._parse_options(ctx, args)
        except click.UsageError:
            return False

    def _parse_options(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The words left once the options `args` begins with are parsed (not yet processed:
        no callback runs); an unknown option raises click's usage error."""
        options: list[click.Parameter] = [
            param for param in self.get_params(ctx) if isinstance(param, click.Option)
        ]
        probe = click.Command(None, params=options, add_help_option=False)
        _, rest, _ = probe.make_parser(ctx).parse_args(list(args))
        return rest
