"""Just enough of a Rust lexer to read facts out of the workspace's sources.

The infrastructure test compares Terraform with what the Rust code does: constants (Bigtable
families, BigQuery table specs, the views' SQL, object prefixes, flag defaults) and API calls. Regular
expressions over raw text break on braces inside format strings or on comments, so the sources are
tokenized first: comments are dropped, string literals (normal, raw, byte) become one token holding
their decoded value, and everything else is identifiers, numbers and punctuation. On tokens:

- ``const_value(path, NAME)`` gives the tokens of ``const NAME: T = <value>;``;
- ``struct_fields(tokens)`` splits ``Type { a: x, b: y }`` into ``{"a": [...], "b": [...]}``;
- ``fn_body(path, "Type::name")`` gives the body of ``fn name`` (inside ``impl Type``, or anywhere
  in the file for a plain name);
- ``contains(tokens, "a.b(")`` looks for a token sequence, so white space and line breaks in the
  source do not matter.

Every helper raises ``LookupError`` naming what it did not find, so a refactoring that moves a fact
makes the test fail with the place to look at instead of passing on stale data.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tok:
    kind: str  # ident | str | num | punct | char | lifetime
    text: str  # decoded value for str, source text otherwise

    def __repr__(self) -> str:  # compact in assertion messages
        return repr(self.text) if self.kind == "str" else self.text


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "0": "\0", "'": "'", '"': '"'}
_PUNCT3 = ("..=", "...", "<<=", ">>=")
_PUNCT2 = ("::", "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "*=", "/=", "..", "<<", ">>")


def _decode_escapes(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "\n":  # line continuation: skip the newline and the next line's indentation
            i += 2
            while i < len(body) and body[i] in " \t\n\r":
                i += 1
        elif nxt == "x":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        elif nxt == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3 : end], 16)))
            i = end + 1
        else:
            out.append(_ESCAPES[nxt])
            i += 2
    return "".join(out)


def tokenize(src: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'b?r#*"', src[i:]):
            m = re.match(r'(b?)r(#*)"', src[i:])
            close = '"' + m.group(2)
            start = i + m.end()
            end = src.index(close, start)
            toks.append(Tok("str", src[start:end]))
            i = end + len(close)
        elif c == '"' or src.startswith('b"', i):
            j = i + (2 if c == "b" else 1)
            start = j
            while src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            toks.append(Tok("str", _decode_escapes(src[start:j])))
            i = j + 1
        elif c == "'" or src.startswith("b'", i):
            j = i + (2 if c == "b" else 1)
            if src[j] == "\\":
                end = src.index("'", j + 2)
                toks.append(Tok("char", src[i : end + 1]))
                i = end + 1
            elif j + 1 < n and src[j + 1] == "'":
                toks.append(Tok("char", src[i : j + 2]))
                i = j + 2
            else:  # a lifetime or a label: 'a, 'static
                m = re.match(r"'[A-Za-z_][A-Za-z0-9_]*", src[i:])
                toks.append(Tok("lifetime", m.group(0)))
                i += m.end()
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", src[i:])
            toks.append(Tok("ident", m.group(0)))
            i += m.end()
        elif c.isdigit():
            m = re.match(r"[0-9][0-9_]*(\.[0-9][0-9_]*)?([eE][+-]?[0-9]+)?[A-Za-z0-9_]*", src[i:])
            toks.append(Tok("num", m.group(0)))
            i += m.end()
        else:
            for p in _PUNCT3 + _PUNCT2:
                if src.startswith(p, i):
                    toks.append(Tok("punct", p))
                    i += len(p)
                    break
            else:
                toks.append(Tok("punct", c))
                i += 1
    return toks


@functools.lru_cache(maxsize=None)
def tokens_of(path: str) -> tuple[Tok, ...]:
    """Tokens of a file given relative to the repository root."""
    return tuple(tokenize((ROOT / path).read_text(encoding="utf-8")))


def _matching(toks, i: int) -> int:
    """Index of the bracket closing the one at ``i``."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    opening = toks[i].text
    closing = pairs[opening]
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "punct":
            if toks[j].text == opening:
                depth += 1
            elif toks[j].text == closing:
                depth -= 1
                if depth == 0:
                    return j
    raise LookupError(f"unbalanced {opening!r}")


def _is(tok: Tok, text: str) -> bool:
    return tok.kind != "str" and tok.text == text


def const_value(path: str, name: str) -> list[Tok]:
    """Tokens of the value of ``const NAME: T = value;`` (or ``static``) in ``path``."""
    toks = tokens_of(path)
    for i in range(len(toks) - 2):
        if toks[i].text in ("const", "static") and _is(toks[i + 1], name) and _is(toks[i + 2], ":"):
            j = i + 3
            depth = 0
            while not (depth == 0 and _is(toks[j], "=")):
                if toks[j].text in ("<", "(", "[", "{") and toks[j].kind == "punct":
                    depth += 1
                elif toks[j].text in (">", ")", "]", "}") and toks[j].kind == "punct":
                    depth -= 1
                j += 1
            start = j + 1
            k = start
            depth = 0
            while not (depth == 0 and _is(toks[k], ";")):
                if toks[k].kind == "punct" and toks[k].text in "([{":
                    depth += 1
                elif toks[k].kind == "punct" and toks[k].text in ")]}":
                    depth -= 1
                k += 1
            return list(toks[start:k])
    raise LookupError(f"{path}: no `const {name}`")


def string_const(path: str, name: str) -> str:
    """The value of ``const NAME: &str = "...";``."""
    value = const_value(path, name)
    if len(value) != 1 or value[0].kind != "str":
        raise LookupError(f"{path}: const {name} is not a single string literal: {value}")
    return value[0].text


def split_top(toks, sep: str = ",") -> list[list[Tok]]:
    """Splits tokens on ``sep`` at bracket depth 0."""
    parts, cur, depth = [], [], 0
    for t in toks:
        if t.kind == "punct" and t.text in "([{":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}":
            depth -= 1
        if depth == 0 and _is(t, sep):
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        parts.append(cur)
    return parts


def struct_fields(toks) -> dict[str, list[Tok]]:
    """``Type { a: x, b: y }`` (the type path optional) -> ``{"a": [x], "b": [y]}``."""
    toks = list(toks)
    open_i = next(i for i, t in enumerate(toks) if _is(t, "{"))
    close_i = _matching(toks, open_i)
    fields = {}
    for part in split_top(toks[open_i + 1 : close_i]):
        if len(part) >= 3 and part[0].kind == "ident" and _is(part[1], ":"):
            fields[part[0].text] = part[2:]
        elif part and not _is(part[0], ".."):
            raise LookupError(f"not a `field: value` entry: {part}")
    return fields


def array_items(toks) -> list[list[Tok]]:
    """``[a, b, c]`` -> ``[[a], [b], [c]]``."""
    toks = list(toks)
    open_i = next(i for i, t in enumerate(toks) if _is(t, "["))
    return [p for p in split_top(toks[open_i + 1 : _matching(toks, open_i)]) if p]


def _skip_generics(toks, j: int) -> int:
    """Index after the ``<...>`` starting at ``j`` (``>>`` closes two)."""
    depth = 0
    while True:
        t = toks[j]
        if _is(t, "<"):
            depth += 1
        elif _is(t, ">"):
            depth -= 1
        elif _is(t, ">>"):
            depth -= 2
        j += 1
        if depth <= 0:
            return j


@functools.lru_cache(maxsize=None)
def functions(path: str) -> tuple[tuple[str, tuple[Tok, ...]], ...]:
    """Every ``fn`` with a body in ``path`` outside ``mod tests``: (``Type::name`` for methods, plain
    ``name`` for free functions; body tokens). The type of ``impl Trait for Type<T>`` is ``Type``."""
    toks = tokens_of(path)
    test_mods = [
        (i, _matching(toks, i + 2))
        for i in range(len(toks) - 2)
        if _is(toks[i], "mod") and _is(toks[i + 1], "tests") and _is(toks[i + 2], "{")
    ]
    impls = []
    for i, t in enumerate(toks):
        if _is(t, "impl") and i + 1 < len(toks) and (_is(toks[i + 1], "<") or toks[i + 1].kind == "ident"):
            j = _skip_generics(toks, i + 1) if _is(toks[i + 1], "<") else i + 1
            header = []
            while not _is(toks[j], "{"):
                header.append(toks[j])
                j += 1
            idents = [h.text for h in header if h.kind == "ident"]
            if "for" in idents:
                idents = idents[idents.index("for") + 1 :]
            if idents:
                impls.append((j, _matching(toks, j), idents[0]))
    out = []
    for i, t in enumerate(toks[:-1]):
        if not (_is(t, "fn") and toks[i + 1].kind == "ident"):
            continue
        if any(a <= i <= b for a, b in test_mods):
            continue
        j = i + 2
        while not _is(toks[j], "{") and not _is(toks[j], ";"):
            j += 1
        if not _is(toks[j], "{"):
            continue  # a declaration without a body (trait item)
        end = _matching(toks, j)
        owners = [ty for a, b, ty in impls if a < i < b]
        name = (owners[-1] + "::" if owners else "") + toks[i + 1].text
        out.append((name, tuple(toks[j + 1 : end])))
    return tuple(out)


def fn_body(path: str, name: str) -> list[Tok]:
    """Body tokens of ``fn name`` in ``path``: ``Type::name`` for a method of ``impl Type`` (or of
    ``impl Trait for Type``), a plain name for a free function (or a method, when only one has it)."""
    fns = functions(path)
    found = [body for qual, body in fns if qual == name]
    if not found and "::" not in name:
        found = [body for qual, body in fns if qual.rpartition("::")[2] == name]
    if not found:
        raise LookupError(f"{path}: no `fn {name}`")
    if len(found) > 1:
        raise LookupError(f"{path}: `fn {name}` is defined {len(found)} times: qualify it as Type::{name}")
    return list(found[0])


def call_args(toks, callee: str) -> list[list[list[Tok]]]:
    """Arguments of every call ``callee(...)`` in ``toks`` (``callee`` a token sequence such as
    ``FamilySpec::max_versions``)."""
    want = tokenize(callee + "(")
    toks = list(toks)
    n = len(want)
    out = []
    for i in range(len(toks) - n + 1):
        if all(toks[i + k].kind == want[k].kind and toks[i + k].text == want[k].text for k in range(n)):
            open_i = i + n - 1
            out.append(split_top(toks[open_i + 1 : _matching(toks, open_i)]))
    return out


def contains(toks, needle: str) -> bool:
    """Whether the token sequence of ``needle`` occurs in ``toks``."""
    want = tokenize(needle)
    n = len(want)
    toks = list(toks)
    for i in range(len(toks) - n + 1):
        if all(toks[i + k].kind == want[k].kind and toks[i + k].text == want[k].text for k in range(n)):
            return True
    return False


def ident_value(path: str, toks: list[Tok]) -> str:
    """A string value given as a literal or as the name of a string const of ``path``."""
    if len(toks) == 1 and toks[0].kind == "str":
        return toks[0].text
    if len(toks) == 1 and toks[0].kind == "ident":
        return string_const(path, toks[0].text)
    raise LookupError(f"{path}: expected a string literal or const name, got {toks}")


def int_value(toks: list[Tok]) -> int:
    if len(toks) != 1 or toks[0].kind != "num":
        raise LookupError(f"expected an integer literal, got {toks}")
    return int(re.sub(r"[_a-z].*$", "", toks[0].text.replace("_", "")) or "0")


def clap_args(path: str) -> dict[str, dict[str, str]]:
    """Fields of clap ``#[arg(...)]`` attributes: field name -> {"long", "env", "default_value", ...}
    (values as written: strings decoded, other expressions as source text)."""
    toks = tokens_of(path)
    out: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(toks) - 3:
        if _is(toks[i], "#") and _is(toks[i + 1], "[") and _is(toks[i + 2], "arg") and _is(toks[i + 3], "("):
            close = _matching(toks, i + 3)
            attrs = {}
            for part in split_top(toks[i + 4 : close]):
                if part and part[0].kind == "ident":
                    key = part[0].text
                    val = part[2:] if len(part) > 2 and _is(part[1], "=") else []
                    attrs[key] = (
                        val[0].text if len(val) == 1 and val[0].kind == "str" else " ".join(t.text for t in val)
                    )
            # The field follows the attribute (after doc comments, which the lexer dropped, and
            # possibly other attributes): `name: Type,`.
            j = _matching(toks, i + 1) + 1
            while _is(toks[j], "#"):
                j = _matching(toks, j + 1) + 1
            if _is(toks[j], "pub"):
                j += 1
            if toks[j].kind == "ident" and _is(toks[j + 1], ":"):
                out[toks[j].text] = attrs
            i = close
        i += 1
    return out
