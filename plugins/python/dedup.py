"""Drops a record whose key was already seen within a time window. Stateful: the time
each key was last let through is kept in the plugin's state, which the broker
persists with the records and keeps across restarts and upgrades.

The Python port of plugins/dedup: it decides alike and its state is the same (key:
the record key or the field's text; value: the time as 8 bytes, big-endian), so
either version can take over from the other.

Parameters:
- ``window``: how long a key stays seen: a number with ``ms``, ``s``, ``m``, ``h`` or
  ``d`` (default ``10m``);
- ``field``: a dotted JSON path to deduplicate by instead of the record key;
- ``missing``: what to do with records without a key (or field): ``keep`` (default)
  or ``drop``.

Time is the record's own timestamp (the publish time), so replays decide alike. A key
seen once stays in the state until it is seen again: state grows with the number of
distinct keys.
"""

import re
import string

import quiver_json
from quiver_plugin import Drop, Keep, Plugin, PluginError, export, param, state

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# A number as Rust's `u64::from_str` reads it.
_U64 = re.compile(r"\+?[0-9]+")
_U64_MAX = (1 << 64) - 1


def parse_window(s):
    """The window in ms."""
    digits = s.rstrip(string.ascii_letters)
    unit = s[len(digits):]
    if not _U64.fullmatch(digits) or int(digits) > _U64_MAX:
        raise PluginError(f"`window` must be like 10m, not `{s}`")
    if unit not in _UNITS:
        raise PluginError(f"`window` unit must be ms, s, m, h or d, not `{unit}`")
    # u64 arithmetic, wrapping as the Rust version's does.
    return int(digits) * _UNITS[unit] & _U64_MAX


def key_of(event, path):
    if path is None:
        return event.key
    try:
        value = quiver_json.field(quiver_json.loads(event.payload), path)
    except quiver_json.JSONError:
        return None
    return None if value is quiver_json.MISSING else quiver_json.text(value).encode()


class Dedup(Plugin):
    def process(self, topic, events):
        window = param("window")
        window = parse_window("10m" if window is None else window)
        path = param("field")
        missing = param("missing")
        if missing is None or missing == "keep":
            missing = Keep
        elif missing == "drop":
            missing = Drop
        else:
            raise PluginError(f"`missing` must be keep or drop, not `{missing}`")
        return [self.decide(event, path, window, missing) for event in events]

    def decide(self, event, path, window, missing):
        key = key_of(event, path)
        if key is None:
            return missing
        seen = state.get(key)
        if seen is not None and len(seen) == 8:
            if max(event.timestamp - int.from_bytes(seen, "big"), 0) < window:
                return Drop
        state.set(key, event.timestamp.to_bytes(8, "big"))
        return Keep


WitWorld = export(Dedup)
