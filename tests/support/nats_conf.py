"""Reading and writing the NATS server's configuration format, as much as deploy/ uses of it.

The format is NATS's own (a relaxed JSON): `key: value`, `key = value` or `key value`; blocks
`key { ... }`; arrays `[a, b]` or one item per line; `#` and `//` comments; quoted or bare
strings; booleans; integers with a size suffix (`8MB`). Sizes follow nats-server's parser:
`k`/`m`/`g`/`t` are powers of 1000, `kb`/`mb`/... (and `ki`, `kib`, ...) powers of 1024. Not
supported, and refused rather than misread: `include`, `$VARIABLE` references.

`dumps` writes a parsed config back, so a test can start the real server on altered copies.
"""

from __future__ import annotations

import json
import re
from typing import TypeAlias

Value: TypeAlias = "str | int | float | bool | list[Value] | dict[str, Value]"
Config: TypeAlias = "dict[str, Value]"

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_DECIMAL: dict[str, int] = {prefix: int(1000**power) for prefix, power in _POWERS.items()}
_BINARY: dict[str, int] = {prefix: int(1024**power) for prefix, power in _POWERS.items()}
_NUMBER = re.compile(r"^(-?\d+)([a-zA-Z]*)$")
_FLOAT = re.compile(r"^-?\d+\.\d+$")
_TRUE = frozenset({"true", "yes", "on"})
_FALSE = frozenset({"false", "no", "off"})
# Characters that end a bare token; `//` starts a comment only where a token could start, so
# `nats-route://host:6222` stays one token.
_DELIMITERS = frozenset(" \t\r\n,;{}[]#:=\"'")
_VALUE_DELIMITERS = frozenset(" \t\r\n,;{}[]#")


class NatsConfError(ValueError):
    """The text is not (the supported part of) the NATS configuration format."""


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> NatsConfError:
        line = self.text.count("\n", 0, self.pos) + 1
        return NatsConfError(f"line {line}: {message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, *, newlines: bool = True) -> None:
        """Past blanks and comments; past line ends too unless `newlines` is False."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#" or self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def skip_separators(self) -> None:
        """Past what may separate entries or items: line ends, commas, semicolons, comments."""
        while True:
            self.skip()
            if self.peek() in (",", ";") and self.peek():
                self.pos += 1
            else:
                return

    def entries(self, closing: str) -> Config:
        config: Config = {}
        while True:
            self.skip_separators()
            char = self.peek()
            if char == closing:
                if closing:
                    self.pos += 1
                return config
            if not char:
                raise self.error(f"missing {closing!r}")
            key = self.key()
            if key.lower() == "include":
                raise self.error("include is not supported")
            self.skip(newlines=False)
            if self.peek() in (":", "="):
                self.pos += 1
                self.skip(newlines=False)
            if not self.peek() or self.peek() == "\n":
                raise self.error(f"{key}: no value")
            config[key] = self.value()  # a repeated key: the last one wins, as in nats-server

    def key(self) -> str:
        if self.peek() in ('"', "'"):
            return self.quoted()
        start = self.pos
        while self.peek() and self.peek() not in _DELIMITERS:
            self.pos += 1
        if self.pos == start:
            raise self.error(f"expected a key, found {self.peek()!r}")
        return self.text[start : self.pos]

    def value(self) -> Value:
        char = self.peek()
        if char == "{":
            self.pos += 1
            return self.entries("}")
        if char == "[":
            self.pos += 1
            return self.array()
        if char in ('"', "'"):
            return self.quoted()
        start = self.pos
        while self.peek() and self.peek() not in _VALUE_DELIMITERS:
            self.pos += 1
        return self.bare(self.text[start : self.pos])

    def array(self) -> list[Value]:
        items: list[Value] = []
        while True:
            self.skip_separators()
            char = self.peek()
            if char == "]":
                self.pos += 1
                return items
            if not char:
                raise self.error("missing ']'")
            items.append(self.value())

    def quoted(self) -> str:
        quote = self.peek()
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" and quote == '"' else 1
        if end >= len(self.text):
            raise self.error("unterminated string")
        raw = self.text[self.pos : end + 1]
        self.pos = end + 1
        # Double quotes escape as JSON does; single quotes take the text as it is.
        return str(json.loads(raw)) if quote == '"' else raw[1:-1]

    def bare(self, token: str) -> Value:
        if token.startswith("$"):
            raise self.error(f"variable {token} is not supported")
        if token.lower() in _TRUE:
            return True
        if token.lower() in _FALSE:
            return False
        if _FLOAT.match(token):
            return float(token)
        match = _NUMBER.match(token)
        if match:
            number, suffix = int(match[1]), match[2].lower()
            if not suffix:
                return number
            size = _size(number, suffix)
            if size is not None:
                return size
        return token  # a bare string: a duration (2m), a host:port, a path, `always`...


def _size(number: int, suffix: str) -> int | None:
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if len(suffix) >= 2 and suffix[0] in _BINARY and suffix[1:] in ("b", "i", "ib"):
        return number * _BINARY[suffix[0]]
    return None


def loads(text: str) -> Config:
    """The configuration `text` as nested dicts and lists (keys as written)."""
    return _Reader(text).entries("")


def dumps(config: Config) -> str:
    """NATS configuration text that `loads` (and nats-server) read back as `config`."""
    return "".join(_entry(key, value, 0) for key, value in config.items())


def _entry(key: str, value: Value, depth: int) -> str:
    indent = "  " * depth
    name = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else json.dumps(key)
    if isinstance(value, dict):
        body = "".join(_entry(k, v, depth + 1) for k, v in value.items())
        return f"{indent}{name} {{\n{body}{indent}}}\n"
    return f"{indent}{name}: {_scalar_or_array(value, depth)}\n"


def _scalar_or_array(value: Value, depth: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        inner = "  " * (depth + 1)
        items = "".join(f"{inner}{_scalar_or_array(item, depth + 1)}\n" for item in value)
        return f"[\n{items}{'  ' * depth}]"
    body = "".join(_entry(k, v, depth + 1) for k, v in value.items())
    return f"{{\n{body}{'  ' * depth}}}"
