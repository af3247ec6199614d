"""A reader for the subset of Bicep that deploy/ writes, for checking templates offline.

No Bicep compiler installs from the registries this project uses (it is a .NET binary
from GitHub releases), so the suite reads the templates itself: `param`, `var`,
`resource` (with `existing`, `parent`, `if (...)` and `[for ...: {...}]`), `output`,
decorators and comments, object and array literals, strings with `${}` interpolation.
Anything else that is a value (a function call, a reference, an operator) is kept as
an `Expr` with its source text. Syntax it does not know is an error, never skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


class BicepSyntaxError(ValueError):
    """The template uses syntax this reader does not know (or is malformed)."""


@dataclass(frozen=True)
class Expr:
    """A value computed at deployment (a call, a reference, an interpolated string)."""

    text: str


@dataclass
class Resource:
    """One `resource` declaration."""

    symbol: str
    type: str
    api_version: str
    body: dict[str, Any]
    existing: bool = False
    condition: str | None = None
    loop: str | None = None


@dataclass
class Template:
    """A parsed .bicep file."""

    params: dict[str, tuple[str, Any]] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, tuple[str, Any]] = field(default_factory=dict)
    target_scope: str = "resourceGroup"


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def error(self, message: str) -> BicepSyntaxError:
        line = self.s.count("\n", 0, self.i) + 1
        return BicepSyntaxError(f"line {line}: {message}")

    def skip(self, newlines: bool = True) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif self.s.startswith("//", self.i):
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            elif self.s.startswith("/*", self.i):
                end = self.s.find("*/", self.i)
                if end < 0:
                    raise self.error("unterminated comment")
                self.i = end + 2
            else:
                return

    def peek(self, token: str) -> bool:
        return self.s.startswith(token, self.i)

    def expect(self, token: str) -> None:
        self.skip(newlines=False)
        if not self.peek(token):
            raise self.error(f"expected {token!r}")
        self.i += len(token)

    def ident(self) -> str:
        self.skip(newlines=False)
        match = _IDENT.match(self.s, self.i)
        if match is None:
            raise self.error("expected a name")
        self.i = match.end()
        return match.group()

    def string(self) -> str | Expr:
        assert self.s[self.i] == "'"
        self.i += 1
        out, interpolated = [], False
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\":
                out.append(self.s[self.i + 1])
                self.i += 2
            elif c == "'":
                self.i += 1
                text = "".join(out)
                return Expr(f"'{text}'") if interpolated else text
            elif self.peek("${"):
                start = self.i
                self.balanced()
                out.append(self.s[start : self.i])
                interpolated = True
            else:
                out.append(c)
                self.i += 1
        raise self.error("unterminated string")

    def balanced(self) -> None:
        """Move past one bracketed span (`${...}`, `(...)`, `[...]`, `{...}`), strings inside."""
        if self.peek("$"):
            self.i += 1
        stack = [_CLOSERS[self.s[self.i]]]
        self.i += 1
        while stack:
            if self.i >= len(self.s):
                raise self.error("unbalanced brackets")
            c = self.s[self.i]
            if c == "'":
                self.string()
                continue
            if c in _CLOSERS:
                stack.append(_CLOSERS[c])
            elif c == stack[-1]:
                stack.pop()
            elif c in ")]}":
                raise self.error(f"unexpected {c!r}")
            self.i += 1

    def expression(self) -> Expr:
        """Source text up to the end of the value (newline, `,` `}` `]` at depth 0)."""
        start = self.i
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in "\n,}]" or self.peek("//"):
                break
            if c == "'":
                self.string()
            elif c in _CLOSERS:
                self.balanced()
            else:
                self.i += 1
        text = self.s[start : self.i].strip()
        if not text:
            raise self.error("expected a value")
        return Expr(text)

    def value(self) -> Any:
        self.skip(newlines=False)
        c = self.s[self.i] if self.i < len(self.s) else ""
        if c == "{":
            return self.obj()
        if c == "[":
            return self.array()
        if c == "'":
            start = self.i
            text = self.string()
            self.skip(newlines=False)
            if self.i < len(self.s) and self.s[self.i] not in "\n,}]":
                self.i = start  # a string inside a larger expression
                return self.expression()
            return text
        number = _NUMBER.match(self.s, self.i)
        word = _IDENT.match(self.s, self.i)
        if number and not word:
            end = number.end()
            if end >= len(self.s) or self.s[end] in " \t\r\n,}]":
                self.i = end
                return float(number.group()) if "." in number.group() else int(number.group())
        if word and word.group() in ("true", "false", "null"):
            end = word.end()
            if end >= len(self.s) or self.s[end] in " \t\r\n,}]":
                self.i = end
                return {"true": True, "false": False, "null": None}[word.group()]
        return self.expression()

    def obj(self) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            self.skip()
            if self.peek(","):
                self.i += 1
                continue
            if self.peek("}"):
                self.i += 1
                return out
            if self.peek("'"):
                key = self.string()
                if isinstance(key, Expr):
                    raise self.error("interpolated keys are not supported")
            else:
                key = self.ident()
            self.expect(":")
            if key in out:
                raise self.error(f"duplicate key {key!r}")
            out[key] = self.value()

    def array(self) -> Any:
        self.i += 1
        self.skip()
        if self.peek("for "):
            header_start = self.i
            depth = 0
            while not (self.s[self.i] == ":" and depth == 0):
                depth += self.s[self.i] in "([{"
                depth -= self.s[self.i] in ")]}"
                self.i += 1
            header = self.s[header_start : self.i]
            self.i += 1
            body = self.value()
            self.skip()
            self.expect("]")
            return ("for", header.strip(), body)
        out = []
        while True:
            self.skip()
            if self.peek(","):
                self.i += 1
                continue
            if self.peek("]"):
                self.i += 1
                return out
            out.append(self.value())


def parse(text: str) -> Template:
    """Read a template; BicepSyntaxError on anything outside the supported subset."""
    r = _Reader(text)
    t = Template()
    while True:
        r.skip()
        if r.i >= len(r.s):
            return t
        if r.peek("@"):
            r.i += 1
            r.ident()
            r.skip(newlines=False)
            if r.peek("("):
                r.balanced()
            continue
        keyword = r.ident()
        if keyword == "targetScope":
            r.expect("=")
            r.skip(newlines=False)
            scope = r.value()
            if not isinstance(scope, str):
                raise r.error("targetScope must be a string")
            t.target_scope = scope
        elif keyword == "param":
            name, kind = r.ident(), r.ident()
            r.skip(newlines=False)
            default = None
            if r.peek("="):
                r.i += 1
                default = r.value()
            t.params[name] = (kind, default)
        elif keyword == "var":
            name = r.ident()
            r.expect("=")
            t.variables[name] = r.value()
        elif keyword == "output":
            name, kind = r.ident(), r.ident()
            r.expect("=")
            t.outputs[name] = (kind, r.value())
        elif keyword == "resource":
            t.resources.append(_resource(r))
        else:
            raise r.error(f"unsupported statement {keyword!r}")


def _resource(r: _Reader) -> Resource:
    symbol = r.ident()
    r.skip(newlines=False)
    if not r.peek("'"):
        raise r.error("expected the resource type")
    spec = r.string()
    if not isinstance(spec, str) or "@" not in spec:
        raise r.error("the resource type must be 'Type@apiVersion'")
    rtype, _, version = spec.partition("@")
    r.skip(newlines=False)
    existing = False
    if r.peek("existing"):
        existing = True
        r.i += len("existing")
    r.expect("=")
    r.skip(newlines=False)
    condition = None
    if r.peek("if"):
        r.i += 2
        r.skip(newlines=False)
        start = r.i
        r.balanced()
        condition = r.s[start + 1 : r.i - 1].strip()
        r.skip(newlines=False)
    body = r.value()
    loop = None
    if isinstance(body, tuple):
        _, loop, body = body
    if not isinstance(body, dict):
        raise r.error(f"resource {symbol}: the body must be an object")
    return Resource(symbol, rtype, version, body, existing, condition, loop)
