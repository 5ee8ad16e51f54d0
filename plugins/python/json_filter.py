"""Keeps JSON records whose field passes a comparison; drops the others.

The Python port of plugins/json-filter, deciding every record alike.

Parameters:
- ``where`` (required): ``FIELD OP VALUE`` or ``FIELD exists``, with OP one of
  ``==``, ``!=``, ``>``, ``>=``, ``<``, ``<=``; FIELD is a dotted path (``meta.level``);
- ``order`` (optional): a comma-separated scale for comparing words
  (``trace,debug,info,warn,error`` makes ``level >= warn`` mean warn or error);
- ``invalid`` (optional): what to do with a payload that is not JSON: ``reject`` (the
  default: dead-letter it), ``drop`` or ``keep``.

Values compare by their place in ``order`` when both are in it, as numbers when both
are numbers, and as text otherwise. A record without the field is dropped.
"""

import re

import quiver_json
from quiver_plugin import Drop, Keep, Plugin, PluginError, Reject, export, param

# Whitespace as Rust's `char::is_whitespace` (Unicode White_Space) has it: Python's
# `str.split()` also splits on U+001C..U+001F.
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WORDS = re.compile(f"[^{_SPACE}]+")
_TRIM = re.compile(f"^[{_SPACE}]+|[{_SPACE}]+$")
# A number as Rust's `f64::from_str` reads it (Python's `float()` also takes
# underscores, surrounding whitespace and non-ASCII digits).
_FLOAT = re.compile(r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.I)

_OPS = {"==", "!=", ">", ">=", "<", "<=", "exists"}


def _number(text):
    """``text`` as a number, as Rust's ``str::parse::<f64>`` reads it, or None."""
    return float(text) if _FLOAT.fullmatch(text) else None


def _cmp(a, b):
    """-1, 0 or 1 as a is less than, equal to or greater than b; None if unordered
    (NaN)."""
    if a < b:
        return -1
    if a > b:
        return 1
    return 0 if a == b else None


class Condition:
    """The parsed parameters."""

    def __init__(self):
        expr = param("where")
        if expr is None:
            raise PluginError("parameter `where` is required, e.g. --param 'where=level >= warn'")
        parts = _WORDS.findall(expr)
        if not parts:
            raise PluginError("`where` is empty")
        if len(parts) < 2:
            raise PluginError("`where` needs an operator")
        self.path, self.op = parts[0], parts[1]
        if self.op not in _OPS:
            raise PluginError(f"unknown operator `{self.op}` in `where`")
        value = " ".join(parts[2:])
        if self.op != "exists" and not value:
            raise PluginError("`where` needs a value to compare with")
        order = param("order")
        self.order = [_TRIM.sub("", o) for o in order.split(",")] if order is not None else []
        invalid = param("invalid")
        if invalid is None or invalid == "reject":
            self.invalid = Reject("payload is not JSON")
        elif invalid == "drop":
            self.invalid = Drop
        elif invalid == "keep":
            self.invalid = Keep
        else:
            raise PluginError(f"`invalid` must be reject, drop or keep, not `{invalid}`")
        self.value = value.strip('"')
        self.number = _number(self.value)

    def _rank(self, text):
        try:
            return self.order.index(text)
        except ValueError:
            return None

    def compare(self, found):
        """How ``found`` compares with the value: -1, 0, 1, or None if unordered."""
        # A JSON number against a number, with no scale of words: no text needed.
        if not self.order and self.number is not None and type(found) in (int, float):
            return _cmp(float(found), self.number)
        found = quiver_json.text(found)
        a, b = self._rank(found), self._rank(self.value)
        if a is not None and b is not None:
            return _cmp(a, b)
        number = _number(found)
        if number is not None and self.number is not None:
            return _cmp(number, self.number)
        return _cmp(found, self.value)

    def decide(self, payload):
        # Only the field is read; the rest of the payload is checked and skipped.
        try:
            found = quiver_json.find(payload, self.path)
        except quiver_json.JSONError:
            return self.invalid
        if found is quiver_json.MISSING:
            return Drop
        if self.op == "exists":
            return Keep
        ordering = self.compare(found)
        if self.op == "==":
            passes = ordering == 0
        elif self.op == "!=":
            passes = ordering != 0
        elif self.op == ">":
            passes = ordering == 1
        elif self.op == ">=":
            passes = ordering in (0, 1)
        elif self.op == "<":
            passes = ordering == -1
        else:
            passes = ordering in (-1, 0)
        return Keep if passes else Drop


class JsonFilter(Plugin):
    def process(self, topic, events):
        condition = Condition()
        return [condition.decide(event.payload) for event in events]


WitWorld = export(JsonFilter)
