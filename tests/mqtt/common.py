"""What the MQTT test clients share: the command line (broker, protocol, credentials,
TLS), one connected paho-mqtt 2.x client with its events gathered under a condition
variable, and the output: one JSON object per line on stdout, flushed at once, so the
Rust side (tests/src/mqtt.rs) can act on each as it comes.

Every line has an "event"; a client that fails prints a last line saying why and exits
non-zero:

    1  a usage or internal error (a Python traceback on stderr)
    2  the broker closed the connection or it was lost ("disconnected")
    3  the connection was refused or never came up ("connect_failed")
    4  something awaited did not come in time ("timeout")

Every wait is bounded by --timeout (20 s by default).
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

EXIT_DISCONNECTED = 2
EXIT_CONNECT_FAILED = 3
EXIT_TIMEOUT = 4

# paho reports a 3.1.1 CONNACK return code as the MQTT 5 reason code of the same
# meaning; the tests want the code on the wire too.
V311_RETURN_CODES = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}

_print_lock = threading.Lock()


def emit(event, **fields):
    """Prints one JSON line: {"event": event, ...fields}."""
    line = json.dumps({"event": event, **fields}, sort_keys=True)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def finish(code, event, **fields):
    """Prints the last line and exits with `code` (from the main thread: paho's network
    thread is a daemon and ends with it)."""
    emit(event, **fields)
    sys.stderr.write(f"{event}: {json.dumps(fields, sort_keys=True)}\n")
    sys.stderr.flush()
    sys.exit(code)


def parser(description):
    """The options every client takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--broker", required=True, help="HOST:PORT of the MQTT listener")
    p.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    p.add_argument("--client-id", default="", help="default: one the library makes up")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--cafile", help="TLS: the CA (or self-signed certificate) to trust")
    p.add_argument("--cert", help="TLS: client certificate (PEM)")
    p.add_argument("--key", help="TLS: client certificate's key (PEM)")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--timeout", type=float, default=20.0, help="bound of every wait, seconds")
    return p


def reason_string(properties):
    """The Reason String property of an MQTT 5 acknowledgement, if any."""
    if properties is not None and hasattr(properties, "ReasonString"):
        return properties.ReasonString
    return None


def text(value):
    """Bytes as UTF-8 text (replacing what is not), anything else as is."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


class Connection:
    """One paho client, connected by `connect`, its callbacks recorded under `cond`."""

    def __init__(self, args, clean=True, session_expiry=None, will=None):
        self.args = args
        self.v5 = args.protocol == "5"
        self.cond = threading.Condition()
        self.connack = None  # (reason_code, session_present, properties) once it came
        self.lost = None  # how the connection ended, if it did
        self.leaving = False  # we sent DISCONNECT ourselves
        self.acks = {}  # mid -> (reason code, reason string) of PUBACK/PUBCOMP (or sent, QoS 0)
        self.subacks = {}  # mid -> [reason codes]
        host, _, port = args.broker.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.clean = clean
        self.session_expiry = session_expiry
        kwargs = {}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **kwargs,
        )
        if args.username is not None:
            self.client.username_pw_set(args.username, args.password)
        if args.cafile:
            self.client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
        if will is not None:
            self.client.will_set(**will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def deadline(self):
        return time.monotonic() + self.args.timeout

    def wait(self, what, done, deadline=None):
        """Waits under `cond` until done() holds; fails on a lost connection (unless
        we are leaving) or at the deadline. `what` (text, or a function giving it when
        the wait fails) says what was awaited."""
        deadline = deadline or self.deadline()
        with self.cond:
            while not done():
                if self.lost is not None and not self.leaving:
                    finish(EXIT_DISCONNECTED, "disconnected", waiting_for=_say(what), **self.lost)
                left = deadline - time.monotonic()
                if left <= 0:
                    finish(EXIT_TIMEOUT, "timeout", waiting_for=_say(what),
                           timeout_s=self.args.timeout)
                self.cond.wait(left)

    def connect(self):
        """Connects and waits for a successful CONNACK ("connected" is printed from the
        network thread, before any message that follows it)."""
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        try:
            self.client.connect(self.host, self.port, self.args.keepalive, **kwargs)
        except Exception as e:  # refused, TLS handshake failed, ...
            finish(EXIT_CONNECT_FAILED, "connect_failed", error=f"{type(e).__name__}: {e}")
        self.client.loop_start()
        deadline = self.deadline()
        with self.cond:
            while self.connack is None and self.lost is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    finish(EXIT_TIMEOUT, "timeout", waiting_for="CONNACK")
                self.cond.wait(left)
            if self.connack is None:
                finish(EXIT_CONNECT_FAILED, "connect_failed", **self.lost)
            code, session_present, props = self.connack
        if code.is_failure:
            finish(EXIT_CONNECT_FAILED, "connect_failed", **self._connack_fields(code, props))

    def _connack_fields(self, code, props):
        fields = {"reason_code": code.value, "reason": str(code)}
        if not self.v5:
            fields["return_code"] = V311_RETURN_CODES.get(str(code))
        else:
            fields["reason_string"] = reason_string(props)
        return fields

    def disconnect(self):
        """Sends DISCONNECT and waits for the connection to end."""
        with self.cond:
            self.leaving = True
        self.client.disconnect()
        self.wait("the end of the connection", lambda: self.lost is not None)
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            emit(
                "connected",
                session_present=bool(flags.session_present),
                **self._connack_fields(reason_code, properties),
            )
        with self.cond:
            self.connack = (reason_code, bool(flags.session_present), properties)
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.lost = {
                "reason_code": getattr(reason_code, "value", reason_code),
                "reason": str(reason_code),
                "reason_string": reason_string(properties),
            }
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.acks[mid] = (reason_code.value, reason_string(properties))
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        # Printed here, before any message the subscription brings (retained ones).
        emit("ready", mid=mid, granted=[code.value for code in reason_codes])
        with self.cond:
            self.subacks[mid] = [code.value for code in reason_codes]
            self.cond.notify_all()


def _say(what):
    return what() if callable(what) else what


def user_property(value):
    """NAME=VALUE (argparse type)."""
    name, sep, val = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return (name, val)
