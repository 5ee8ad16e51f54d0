"""Write Quiver plugins in Python.

A plugin is a WebAssembly component implementing the ``quiver:plugin`` world
(``plugin-sdk/wit/quiver.wit``). This module wraps the bindings componentize-py
generates for that world in the shape of the Rust SDK: a :class:`Plugin` base class
with a per-event default, outcome values, and the host functions. A filter is a few
lines::

    from quiver_plugin import Drop, Keep, Plugin, export

    class OnlyErrors(Plugin):
        def on_event(self, topic, event):
            return Keep if event.payload.startswith(b"ERROR") else Drop

    WitWorld = export(OnlyErrors)

Build it with::

    componentize-py -d plugin-sdk/wit -w plugin componentize --stub-wasi app -o app.wasm

``--stub-wasi`` is required: without it the Python runtime reads the environment
through ``wasi:cli/environment`` at the first call, which the broker does not link
(the call traps). With it, every WASI import is replaced by a stub inside the
component that traps when called (``wasm `unreachable` instruction executed``), and
``random`` and ``hash()`` are seeded once, at build time.

Host functions: :func:`param`, :func:`params`, :func:`now`, :data:`log` and
:data:`state`. A plugin reaches nothing else: files, sockets, the environment,
clocks (``time.time()``: use :func:`now`), ``os.urandom`` and stdio (``print``: use
:data:`log`) trap, which fails the call.

Errors: raising :class:`PluginError` fails the batch with its message; any other
exception fails it with ``Type: message`` as the reason and logs where it was raised
at error level. Either way the Python runtime goes on; only a trap discards the
instance.
"""

from __future__ import annotations

from typing import Iterable, Optional

from componentize_py_types import Err
from wit_world.imports import host, types

__all__ = [
    "Drop",
    "Event",
    "Header",
    "Keep",
    "NewEvent",
    "Outcome",
    "Plugin",
    "PluginError",
    "Reject",
    "Replace",
    "Route",
    "export",
    "header",
    "log",
    "new_event",
    "now",
    "param",
    "params",
    "state",
    "to_new",
]

#: A record as a plugin sees it: ``offset``, ``timestamp`` (ms since the Unix epoch),
#: ``key`` (bytes or None), ``headers`` (a list of :class:`Header`) and ``payload``.
Event = types.Event
#: A record header: ``name`` (str) and ``value`` (bytes).
Header = types.Header
#: A record a plugin makes: ``key``, ``headers`` and ``payload`` (see :func:`new_event`).
NewEvent = types.NewEvent
#: What becomes of one input event: one of the five values below.
Outcome = types.Outcome

#: Pass the event on unchanged.
Keep = types.Outcome_Keep()
#: Remove the event.
Drop = types.Outcome_Drop()
#: ``Replace([new_event(...), ...])``: replace the event with zero or more records.
Replace = types.Outcome_Replace
#: ``Route(["topic", ...])``: send the event, unchanged, to these topics instead
#: (name its own topic to keep a copy there). Ingress only.
Route = types.Outcome_Route
#: ``Reject("reason")``: send the event to the topic's dead-letter topic.
Reject = types.Outcome_Reject


class PluginError(Exception):
    """Fails the whole batch with this message as the reason.

    Raise it from :meth:`Plugin.process` or :meth:`Plugin.on_event` (for instance
    for a bad parameter): every event of the call goes to the dead-letter topic with
    the message. It is the Python form of the Rust SDK's ``Err(String)``. Any other
    exception fails the batch too, with its type and message as the reason.
    """


class Plugin:
    """A Quiver plugin: override :meth:`on_event` to decide each event alone, or
    :meth:`process` to see the whole batch.

    One object is made per plugin instance, at its first call (so ``__init__`` may
    call the host functions), and reused for later calls. The broker makes one
    instance per attachment and a fresh one after a failed call, so anything kept on
    ``self`` is a cache, not state: use :data:`state` for what must last.
    """

    def on_event(self, topic: str, event: Event) -> Outcome:
        """What becomes of one event of ``topic``. The default keeps it."""
        return Keep

    def process(self, topic: str, events: list[Event]) -> list[Outcome]:
        """Processes a batch: exactly one outcome per event, in order.

        The default calls :meth:`on_event` for each event. Raising fails the whole
        batch (every event goes to the dead-letter topic with the message).
        """
        on_event = self.on_event
        return [on_event(topic, event) for event in events]


def export(plugin: type[Plugin]) -> type:
    """Exports ``plugin`` as the component's ``process`` function.

    componentize-py looks for a class named ``WitWorld`` in the app module, so bind
    the result to that name: ``WitWorld = export(MyPlugin)``.
    """
    instance: list[Plugin] = []

    class WitWorld:
        def process(self, topic: str, events: list[Event]) -> list[Outcome]:
            try:
                if not instance:
                    instance.append(plugin())
                outcomes = instance[0].process(topic, events)
                if type(outcomes) is not list:
                    outcomes = list(outcomes)
                _check_outcomes(outcomes)
                return outcomes
            except PluginError as error:
                raise Err(str(error)) from None
            except Exception as error:
                log.error(f"{plugin.__name__} failed: {_describe(error, trace=True)}")
                raise Err(_describe(error, trace=False)) from None

    WitWorld.__qualname__ = WitWorld.__name__ = f"WitWorld[{plugin.__name__}]"
    return WitWorld


def param(name: str) -> Optional[str]:
    """The attachment's parameter ``name`` (``--param name=value``), if set."""
    return host.param(name)


def params() -> list[tuple[str, str]]:
    """Every parameter of the attachment, as (name, value) pairs, in no particular
    order."""
    return host.params()


def now() -> int:
    """The current time in ms since the Unix epoch (the only clock a plugin has)."""
    return host.now()


def header(event: Event, name: str) -> Optional[bytes]:
    """The value of the first header of ``event`` called ``name``, if any."""
    for h in event.headers:
        if h.name == name:
            return h.value
    return None


def new_event(
    payload: bytes,
    key: Optional[bytes] = None,
    headers: Optional[Iterable[Header]] = None,
) -> NewEvent:
    """A record to return in :data:`Replace`: this payload, and by default no key
    and no headers."""
    return NewEvent(key=key, headers=list(headers or ()), payload=payload)


def to_new(event: Event) -> NewEvent:
    """``event`` as a new record (same key, headers and payload), to modify and
    return in :data:`Replace`."""
    headers = [Header(name=h.name, value=h.value) for h in event.headers]
    return NewEvent(key=event.key, headers=headers, payload=event.payload)


class _Log:
    """Logging into the broker's log, tagged with the plugin's name and version.

    The broker keeps 100 lines per call and 4 KiB per line. An error line is also
    attached to the reason of a call that traps.
    """

    def trace(self, message: str) -> None:
        """Logs at trace level."""
        host.log(host.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        """Logs at debug level."""
        host.log(host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        """Logs at info level."""
        host.log(host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        """Logs at warn level."""
        host.log(host.Level.WARN, str(message))

    def error(self, message: str) -> None:
        """Logs at error level."""
        host.log(host.Level.ERROR, str(message))


class _State:
    """The plugin's key-value state: bytes keys and values, per plugin name, kept
    across restarts and upgrades, and persisted together with the records of the
    call that changed it. A call's writes are visible to its later reads.

    Limits: keys up to 1 KiB, values up to 256 KiB, 4 MiB written per call; going
    over fails the call.
    """

    def get(self, key: bytes) -> Optional[bytes]:
        """The value under ``key``, if any."""
        return host.state_get(_bytes(key, "state keys"))

    def set(self, key: bytes, value: bytes) -> None:
        """Sets ``key`` to ``value``."""
        host.state_set(_bytes(key, "state keys"), _bytes(value, "state values"))

    def delete(self, key: bytes) -> None:
        """Removes ``key``."""
        host.state_delete(_bytes(key, "state keys"))


#: Logging: ``log.info("…")``, and likewise ``trace``, ``debug``, ``warn``, ``error``.
log = _Log()
#: The plugin's state: ``state.get(key)``, ``state.set(key, value)``,
#: ``state.delete(key)``.
state = _State()


def _bytes(value: bytes, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} are bytes, not {type(value).__name__}")


_KEEP_OR_DROP = (types.Outcome_Keep, types.Outcome_Drop)


def _check_outcomes(outcomes: list) -> None:
    """Raises TypeError for a value the bindings cannot pass to the broker (which
    would trap with no explanation) rather than let it through."""
    for outcome in outcomes:
        kind = type(outcome)
        if kind in _KEEP_OR_DROP:
            continue
        if kind is Reject:
            ok = type(outcome.value) is str
        elif kind is Route:
            ok = type(outcome.value) is list and all(type(t) is str for t in outcome.value)
        elif kind is Replace:
            ok = type(outcome.value) is list and all(map(_is_new_event, outcome.value))
        else:
            raise TypeError(
                f"not an outcome: {outcome!r} (return Keep, Drop, Replace, Route or Reject)"
            )
        if not ok:
            raise TypeError(
                f"malformed outcome: {outcome!r} (Replace takes a list of records with "
                "bytes payloads and keys, Route a list of str, Reject a str)"
            )


def _is_new_event(record: object) -> bool:
    try:
        return (
            type(record.payload) is bytes
            and (record.key is None or type(record.key) is bytes)
            and type(record.headers) is list
            and all(type(h.name) is str and type(h.value) is bytes for h in record.headers)
        )
    except AttributeError:
        return False


# The innermost frames an error's log line shows.
_FRAMES = 8


def _describe(error: BaseException, trace: bool) -> str:
    """``Type: message``, and with ``trace`` the innermost frames it was raised
    through (file and line only: source files are not readable inside the
    component)."""
    text = type(error).__name__
    if str(error):
        text += f": {error}"
    if trace:
        frames = []
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            frames.append(f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}")
            tb = tb.tb_next
        if frames:
            shown = " <- ".join(reversed(frames[-_FRAMES:]))
            text += f" (at {shown}{' <- …' if len(frames) > _FRAMES else ''})"
    return text
