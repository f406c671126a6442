"""The one error `dockyard up` stops with."""

from __future__ import annotations


class StackError(RuntimeError):
    """Raised when the stack cannot start; the message is one line for the user."""
