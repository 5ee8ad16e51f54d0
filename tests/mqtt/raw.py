#!/usr/bin/env python3
"""Talks raw bytes to a TCP port, for what no well-behaved client sends: garbage, a
PUBLISH before CONNECT, an unknown protocol level, an oversized packet, or nothing.

    raw.py --broker HOST:PORT [STEP ...]

Steps, in order:

    send:HEX    write these bytes
    read:N      read until N bytes in all have come (or the connection closes)
    packets:N   read until N whole MQTT packets in all have come (or it closes)

then it reads until the broker closes the connection or --timeout passes, and prints
one JSON line:

    {"event": "result", "received": "20020000", "closed": true, "how": "eof",
     "after_ms": 512}

"received" is every byte that came, as hex; "closed" whether the broker closed the
connection ("how": "eof" for an orderly close, "reset" for a reset, "send" if a write
failed on it); "after_ms" the time from the last send (or the connect) to the close.
Exit 0 whatever happened: the test judges it. A connection that cannot be opened ends
with "connect_failed" (exit 3).
"""

import argparse
import json
import socket
import sys
import time


def whole_packets(data):
    """How many complete MQTT packets `data` starts with."""
    count, pos = 0, 0
    while pos < len(data):
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= len(data) or i - pos > 4:
                return count
            byte = data[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if i + length > len(data):
            return count
        pos = i + length
        count += 1
    return count


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the close")
    p.add_argument("steps", nargs="*")
    args = p.parse_args()
    steps = []
    for step in args.steps:
        kind, _, value = step.partition(":")
        if kind == "send":
            steps.append((kind, bytes.fromhex(value)))
        elif kind in ("read", "packets"):
            steps.append((kind, int(value)))
        else:
            p.error(f"unknown step {step!r}")

    host, _, port = args.broker.rpartition(":")
    try:
        sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=args.timeout)
    except OSError as e:
        print(json.dumps({"event": "connect_failed", "error": str(e)}), flush=True)
        sys.exit(3)
    deadline = time.monotonic() + args.timeout
    received = bytearray()
    closed, how = False, None
    since = time.monotonic()

    def read_some():
        """Reads what comes next; False once the connection is closed or the time is up."""
        nonlocal closed, how
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            closed, how = True, "reset"
            return False
        if not chunk:
            closed, how = True, "eof"
            return False
        received.extend(chunk)
        return True

    for kind, value in steps:
        if closed:
            break
        if kind == "send":
            try:
                sock.sendall(value)
            except (BrokenPipeError, ConnectionResetError):
                closed, how = True, "send"
                break
            since = time.monotonic()
        elif kind == "read":
            while len(received) < value and read_some():
                pass
        else:
            while whole_packets(received) < value and read_some():
                pass
    while not closed and read_some():
        pass
    after_ms = int((time.monotonic() - since) * 1000)
    sock.close()
    print(json.dumps({
        "event": "result",
        "received": received.hex(),
        "closed": closed,
        "how": how,
        "after_ms": after_ms,
    }, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
