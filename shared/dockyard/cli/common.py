"""What every command shares: one-line errors, running a coroutine, the terminal's abilities."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from dockyard import config, event_loop
from dockyard.client import ClientError


def fail(message: str, code: int = 1) -> NoReturn:
    """Every error the user sees is one line on stderr and a non-zero exit."""
    click.secho(f"dockyard: {message}", err=True, fg="red")
    sys.exit(code)


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
