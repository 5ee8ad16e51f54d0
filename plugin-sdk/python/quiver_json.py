"""JSON helpers for Quiver plugins, agreeing with the Rust SDK's ``json`` module.

The Rust SDK reads JSON with serde_json; these helpers read it the same way, so that
a plugin ported from Rust decides every payload alike, and text made from a value
(a state key, say) is byte for byte the same. Python's ``json`` module alone differs
in places: it accepts ``NaN`` and numbers out of the float range, keeps integers of
any size, reads lone UTF-16 surrogates, has no nesting limit and prints floats its
own way (``1e-05``, where serde_json prints ``0.00001``).

Values are Python's: dict (in document order; a repeated key keeps its first place
and its last value), list, str, int (for integers in the 64-bit range), float (any
other number, rounded as serde_json rounds it), bool and None (JSON ``null``).
A missing field is :data:`MISSING`, not None.

- :func:`loads`: a whole document, like ``serde_json::from_slice::<Value>``;
- :func:`find`: the value at a dotted path, like the SDK's ``json::find``: only that
  value has to be well-formed beyond the syntax (the rest is checked and skipped);
- :func:`field`: the value at a dotted path of a parsed value;
- :func:`text`: a value as text: strings as they are, everything else as JSON;
- :func:`dumps`: compact JSON, as ``serde_json::to_string`` writes it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

__all__ = ["MISSING", "JSONError", "dumps", "field", "find", "loads", "text"]


class _Missing:
    """The type of :data:`MISSING`."""

    _instance = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`find` and :func:`field` return when there is no such field (JSON
#: ``null`` is None). It is falsy.
MISSING = _Missing()


class JSONError(ValueError):
    """The document is not JSON as serde_json reads it."""


# serde_json's nesting limit: a container at this depth (the outermost being 1) is
# refused.
_MAX_DEPTH = 128
_U64_MAX = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I32_MAX = (1 << 31) - 1
# serde_json's table of powers of ten, as Rust writes the literals 1e0..1e308.
_POW10 = [float(f"1e{i}") for i in range(309)]
# A `\u` escape of a UTF-16 surrogate: the only way valid UTF-8 can yield one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# An array index in a path, as Rust's `usize::from_str` reads it.
_INDEX = re.compile(r"\+?[0-9]+")


class _OutOfRange(float):
    """A number serde_json refuses (beyond the float range), where being refused
    depends on whether the number is read or skipped (see :func:`find`)."""


def _number(token: str) -> int | float:
    """A JSON number token as serde_json reads it (without its ``float_roundtrip``
    feature): the digits that fit a u64 significand, then a multiplication or
    division by a power of ten. Returns an :class:`_OutOfRange` for a number it
    refuses."""
    positive = token[0] != "-"
    i, end = (0 if positive else 1), len(token)
    significand = exponent = 0
    overflowed = False
    while i < end and "0" <= token[i] <= "9":
        digit = ord(token[i]) - 48
        if overflowed or _overflows(significand, digit, _U64_MAX):
            overflowed = True
            exponent += 1
        else:
            significand = significand * 10 + digit
        i += 1
    if i == end and not overflowed:
        if positive:
            return significand
        # `-0` and integers below i64::MIN are floats.
        return -significand if 0 < significand <= -_I64_MIN else -float(significand)
    if i < end and token[i] == ".":
        i += 1
        overflowed = False
        while i < end and "0" <= token[i] <= "9":
            digit = ord(token[i]) - 48
            if overflowed or _overflows(significand, digit, _U64_MAX):
                overflowed = True
            else:
                significand = significand * 10 + digit
                exponent -= 1
            i += 1
    if i < end:  # an exponent
        i += 1
        positive_exp = token[i] != "-"
        if token[i] in "+-":
            i += 1
        exp = 0
        for c in token[i:]:
            digit = ord(c) - 48
            if _overflows(exp, digit, _I32_MAX):
                if significand != 0 and positive_exp:
                    return _OutOfRange("inf")
                return 0.0 if positive else -0.0
            exp = exp * 10 + digit
        exponent = exponent + exp if positive_exp else exponent - exp
        exponent = max(-_I32_MAX - 1, min(_I32_MAX, exponent))
    value = float(significand)
    while True:
        if abs(exponent) <= 308:
            if exponent >= 0:
                value *= _POW10[exponent]
                if math.isinf(value):
                    return _OutOfRange("inf")
            else:
                value /= _POW10[-exponent]
            break
        if value == 0.0:
            break
        if exponent >= 0:
            return _OutOfRange("inf")
        value /= 1e308
        exponent += 308
    return value if positive else -value


def _overflows(value: int, digit: int, limit: int) -> bool:
    return value >= limit // 10 and (value > limit // 10 or digit > limit % 10)


def _parse_int(token: str) -> int | float:
    if len(token) < 19:
        return float(token) if token == "-0" else int(token)
    return _number(token)


def _parse_float(token: str) -> float:
    # Up to 15 digits and no exponent: the significand and the power of ten are
    # exact, so serde_json's one division rounds as Python's conversion does.
    if len(token) <= 16 and "e" not in token and "E" not in token:
        return float(token)
    return _number(token)


def _refuse_constant(name: str) -> None:
    raise JSONError(f"{name} is not JSON")


def _refuse_out_of_range(parse: Any) -> Any:
    def parse_in_range(token: str) -> int | float:
        value = parse(token)
        if type(value) is _OutOfRange:
            raise JSONError(f"number out of range: {token}")
        return value

    return parse_in_range


# Whole documents: every number is read.
_DOCUMENTS = json.JSONDecoder(
    parse_int=_refuse_out_of_range(_parse_int),
    parse_float=_refuse_out_of_range(_parse_float),
    parse_constant=_refuse_constant,
)
# For `find`: numbers out of range are refused only where read, and objects are
# tuples of (key, value) pairs, so that every occurrence of a key is seen.
_PAIRS = json.JSONDecoder(
    object_pairs_hook=tuple,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_refuse_constant,
)


def _decode(decoder: json.JSONDecoder, document: str) -> Any:
    try:
        return decoder.decode(document)
    except JSONError:
        raise
    except (ValueError, RecursionError) as error:
        raise JSONError(str(error)) from None


def loads(data: bytes) -> Any:
    """The JSON document ``data`` (UTF-8), read as ``serde_json::from_slice::<Value>``
    reads it. Raises :class:`JSONError` if it is not JSON."""
    try:
        document = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONError(str(error)) from None
    if _depth(data) >= _MAX_DEPTH:
        raise JSONError("recursion limit exceeded")
    value = _decode(_DOCUMENTS, document)
    if _SURROGATE_ESCAPE.search(data):
        # Read again keeping repeated keys: serde_json reads their earlier values too.
        _check_strings(_decode(_PAIRS, document))
    return value


def find(data: bytes, path: str) -> Any:
    """The value at a dotted ``path`` (``meta.level``; array elements by index,
    ``tags.0``) of the JSON document ``data``, or :data:`MISSING`.

    Like the Rust SDK's ``json::find``, it checks the whole document's syntax but
    reads only what lies on the path: a string or number elsewhere that serde_json
    would refuse to read (invalid UTF-8, a lone surrogate, 1e999) does not make the
    document invalid, nor does nesting deeper than 128 elsewhere. Raises
    :class:`JSONError` if it is not JSON.
    """
    try:
        document = data.decode("utf-8")
        check = _SURROGATE_ESCAPE.search(data) is not None
    except UnicodeDecodeError:
        document = data.decode("utf-8", "surrogateescape")
        check = True
    if _depth(data) < _MAX_DEPTH:
        root = _decode(_PAIRS, document)
    else:
        root = _decode_deep(document)
    return _find(root, path.split("."), 0, check)


def _find(node: Any, tokens: list[str], at: int, check: bool) -> Any:
    """The value at ``tokens[at:]`` in ``node``; ``check``: strings may hold
    surrogates."""
    if at == len(tokens):
        return _value(node, check)
    kind = type(node)
    if kind is list:
        token = tokens[at]
        index = int(token) if _INDEX.fullmatch(token) else -1
        if 0 <= index < len(node):
            return _find(node[index], tokens, at + 1, check)
        return MISSING
    if kind is tuple:
        found = MISSING
        for key, value in node:
            if check:
                _check_text(key)
            if key == tokens[at]:
                found = _find(value, tokens, at + 1, check)
        return found
    # The path goes on past a scalar: nothing there (but the scalar is read).
    _value(node, check)
    return MISSING


def _value(node: Any, check: bool) -> Any:
    """``node`` read as a whole (tuples of pairs become dicts), checked."""
    kind = type(node)
    if kind is tuple:
        value = {}
        for key, item in node:
            if check:
                _check_text(key)
            value[key] = _value(item, check)
        return value
    if kind is list:
        return [_value(item, check) for item in node]
    if kind is _OutOfRange:
        raise JSONError("number out of range")
    if node is _TOO_DEEP:
        raise JSONError("recursion limit exceeded")
    if check and kind is str:
        _check_text(node)
    return node


def _check_strings(value: Any) -> None:
    """Raises JSONError if a string of ``value`` (read by the pairs decoder, so that
    the earlier values of repeated keys are seen too) holds a lone surrogate."""
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is tuple:
            for key, item in node:
                _check_text(key)
                stack.append(item)
        elif kind is list:
            stack.extend(node)
        elif kind is str:
            _check_text(node)


def _check_text(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("invalid unicode (a lone surrogate or invalid UTF-8)") from None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def _depth(data: bytes) -> int:
    """How deep containers nest in ``data`` (exact for JSON, and for the part of
    anything else that reads as JSON)."""
    if data.count(b"[") + data.count(b"{") < _MAX_DEPTH:
        return 0
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


class _TooDeep:
    """The type of :data:`_TOO_DEEP`."""

    def __repr__(self) -> str:
        return "<nested too deep>"


#: Stands for a container nested beyond serde_json's limit: reading it is an error.
_TOO_DEEP = _TooDeep()

_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERAL = re.compile("true|false|null")
_LITERALS = {"true": True, "false": False, "null": None}


def _decode_deep(document: str) -> Any:
    """What the pairs decoder makes of ``document``, for a document nested beyond
    serde_json's limit: read with a loop and a stack rather than recursion (CPython's
    json module recurses once per level, which exhausts the WebAssembly stack long
    before its own limit, and so does freeing a deeply nested list), and with every
    container nested beyond the limit checked but not kept: it becomes
    :data:`_TOO_DEEP`."""
    scanstring = json.decoder.scanstring
    space = _SPACE.match
    # Open containers: (items, or None when too deep to keep; key, None in arrays).
    stack: list[tuple[Any, Any]] = []
    pos = space(document).end()
    try:
        while True:
            # A value starts at `pos`.
            char = document[pos]
            if char in "[{":
                keep = len(stack) + 1 < _MAX_DEPTH
                pos = space(document, pos + 1).end()
                if document[pos] == ("]" if char == "[" else "}"):
                    value = ([] if char == "[" else ()) if keep else _TOO_DEEP
                    pos += 1
                else:
                    key = None
                    if char == "{":
                        key, pos = _key(document, pos)
                    stack.append(([] if keep else None, key))
                    continue
            elif char == '"':
                value, pos = scanstring(document, pos + 1, True)
            elif (number := _NUMBER.match(document, pos)) is not None:
                token, pos = number.group(), number.end()
                value = _parse_int(token) if number.lastindex == 1 else _parse_float(token)
            elif (word := _LITERAL.match(document, pos)) is not None:
                value, pos = _LITERALS[word.group()], word.end()
            else:
                raise JSONError(f"expecting a value at {pos}")
            # The value ends at `pos`: add it to its container; close containers.
            while True:
                pos = space(document, pos).end()
                if not stack:
                    if pos != len(document):
                        raise JSONError(f"extra data at {pos}")
                    return value
                items, key = stack[-1]
                if items is not None:
                    items.append(value if key is None else (key, value))
                char = document[pos]
                if char == ",":
                    pos = space(document, pos + 1).end()
                    if key is not None:
                        key, pos = _key(document, pos)
                        stack[-1] = (items, key)
                    break
                if char != ("]" if key is None else "}"):
                    raise JSONError(f"expecting ',' or the container's end at {pos}")
                stack.pop()
                if items is None:
                    value = _TOO_DEEP
                else:
                    value = items if key is None else tuple(items)
                pos += 1
    except IndexError:
        raise JSONError("unexpected end of the document") from None
    except ValueError as error:
        raise JSONError(str(error)) from None


def _key(document: str, pos: int) -> tuple[str, int]:
    """An object key and its colon at ``pos``; returns the key and where its value
    starts."""
    if document[pos] != '"':
        raise JSONError(f"expecting a key at {pos}")
    key, pos = json.decoder.scanstring(document, pos + 1, True)
    pos = _SPACE.match(document, pos).end()
    if document[pos] != ":":
        raise JSONError(f"expecting ':' at {pos}")
    return key, _SPACE.match(document, pos + 1).end()


def field(value: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a parsed value, or :data:`MISSING`."""
    for token in path.split("."):
        if type(value) is dict:
            value = value.get(token, MISSING)
            if value is MISSING:
                return MISSING
        elif type(value) is list:
            index = int(token) if _INDEX.fullmatch(token) else -1
            if not 0 <= index < len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def text(value: Any) -> str:
    """A value as text: strings as they are, everything else as compact JSON."""
    return value if type(value) is str else dumps(value)


def dumps(value: Any) -> str:
    """``value`` as compact JSON, as ``serde_json::to_string`` writes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is str:
        return json.dumps(value, ensure_ascii=False)
    if kind is int:
        return str(value)
    if kind is float or kind is _OutOfRange:
        return _float(value)
    if kind is list:
        return "[" + ",".join(map(dumps, value)) + "]"
    if kind is dict:
        return "{" + ",".join(f"{dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def _float(value: float) -> str:
    """A finite float as serde_json writes it (with the zmij crate): the shortest
    digits that read back as the same float, as fixed-point text when the decimal
    exponent is within -5..=15 (``0.00001``, ``123.0``), else as ``1.5e+16``."""
    if not math.isfinite(value):
        return "null"
    sign, mantissa, _, exp = "", *repr(value).partition("e")
    if mantissa[0] == "-":
        sign, mantissa = "-", mantissa[1:]
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return sign + "0.0"
    # The decimal exponent of the first significant digit.
    point = len(whole) + int(exp or 0) - (len(whole + fraction) - len(digits)) - 1
    digits = digits.rstrip("0")
    if -5 <= point <= 15:
        if len(digits) - 1 <= point:
            return sign + digits + "0" * (point + 1 - len(digits)) + ".0"
        if point >= 0:
            return sign + digits[: point + 1] + "." + digits[point + 1 :]
        return sign + "0." + "0" * (-point - 1) + digits
    if len(digits) > 1:
        digits = digits[0] + "." + digits[1:]
    return f"{sign}{digits}e{'+' if point >= 0 else '-'}{abs(point)}"
