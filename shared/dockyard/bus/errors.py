"""The bus's own errors: nats-py's many exception types are translated here, once.

Callers only ever decide between "wait and retry" (BusUnavailable) and "this will not work by
waiting" (BusRejected); of the latter, MessageRejected is about one message (its subject, its
size), which others need not wait for. A message that cannot be read is a MessageDecodeError
(poison: term it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from dockyard.bus.names import InvalidSubjectToken


class BusError(Exception):
    """Base of every error the bus raises."""


class BusUnavailable(BusError):
    """Raised when NATS or JetStream cannot answer now (down, reconnecting, timed out); retry."""


class BusRejected(BusError):
    """Raised when JetStream answered and refused the request; waiting will not change that."""

    def __init__(self, message: str, *, code: int | None = None, err_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.err_code = err_code


class MessageRejected(BusRejected):
    """Raised when NATS refused one message for what it is (its subject, its size): sending it
    again fails again, while other messages still go."""


class TopologyError(BusRejected):
    """Raised when a stream, consumer or bucket exists with a config that cannot be updated."""


class MessageDecodeError(BusError):
    """Raised when a message's payload or headers cannot be decoded: a poison message."""


# Server-side answers that mean "not now" rather than "never": JetStream is still recovering its
# streams after a restart, a clustered stream has no leader yet, or the request timed out.
_UNAVAILABLE_API_CODES = frozenset({408, 500, 503})

# JetStream's refusals of one message for itself: over the stream's max_msg_size, headers over
# 64 KiB.
_MESSAGE_ERR_CODES = frozenset({10054, 10097})

# Client-side conditions that go away once the connection is back.
_UNAVAILABLE_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.TooManyStalledMsgsError,
    OSError,  # includes TimeoutError
)


def translate(exc: BaseException) -> BusError:
    """The project's error for a nats-py (or socket) exception."""
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, nats.errors.BadSubjectError | nats.errors.MaxPayloadError):
        return MessageRejected(f"NATS refused the message: {_what_nats_said(exc)}")
    if isinstance(exc, InvalidSubjectToken):
        return MessageRejected(f"not sent: {exc}")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return BusUnavailable(f"JetStream unavailable: {exc}")  # raised with no code
    if isinstance(exc, nats.js.errors.APIError):
        # Some subclasses (KeyNotFoundError, KeyDeletedError) are raised without a code.
        code = getattr(exc, "code", None)
        if code in _UNAVAILABLE_API_CODES:
            return BusUnavailable(f"JetStream unavailable: {exc}")
        err_code = getattr(exc, "err_code", None)
        if err_code in _MESSAGE_ERR_CODES:
            return MessageRejected(f"JetStream refused: {exc}", code=code, err_code=err_code)
        return BusRejected(f"JetStream refused: {exc}", code=code, err_code=err_code)
    if isinstance(exc, _UNAVAILABLE_CLIENT_ERRORS):
        return BusUnavailable(f"NATS unavailable: {type(exc).__name__}: {exc}")
    return BusRejected(f"NATS error: {type(exc).__name__}: {exc}")


def _what_nats_said(exc: nats.errors.Error) -> str:
    if isinstance(exc, nats.errors.MaxPayloadError):
        return "it is larger than the server's max_payload"
    return "its subject is invalid"


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise nats-py and socket errors raised inside the block as the bus's own types."""
    try:
        yield
    except (nats.errors.Error, OSError, InvalidSubjectToken) as exc:  # TimeoutError: OSError
        raise translate(exc) from exc
