#!/usr/bin/env python3
"""Publishes --count messages to --topic at --qos and prints one JSON line per message
the broker acknowledged, in publishing order:

    {"event": "connected", "session_present": false, "reason_code": 0, ...}
    {"event": "ack", "seq": 0, "mid": 1, "payload": "msg-0", "qos": 1,
     "reason_code": 0, "reason_string": null}
    ...
    {"event": "done", "count": N}

"ack" is the PUBACK at QoS 1, the PUBCOMP at QoS 2 (or a PUBREC refusing it), and the
message written to the socket at QoS 0. With MQTT 5 its reason code is the broker's
(131 implementation specific error, 135 not authorized, ...: an ack with a failure code
is printed like any other, and the client goes on); with 3.1.1 it is always 0.

Payloads are PREFIX-SEQ (msg-0, msg-1, ...) unless --payload gives one for every
message ("" for an empty one). At most --inflight messages await their ack at once
(1: each is acknowledged before the next is sent). A lost connection ends the client
with "disconnected" (exit 2) after the acks that came before it.
"""

import os
import sys

from paho.mqtt.client import MQTT_ERR_NO_CONN

from common import (
    Connection,
    PacketTypes,
    Properties,
    emit,
    finish,
    parser,
    user_property,
)


def main():
    p = parser(__doc__)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--payload", help="every message's payload [default: PREFIX-SEQ]")
    p.add_argument("--prefix", default="msg")
    p.add_argument("--retain", action="store_true")
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument(
        "--user-property", action="append", type=user_property, default=[],
        metavar="NAME=VALUE", help="MQTT 5 (repeatable)",
    )
    p.add_argument("--content-type", help="MQTT 5")
    p.add_argument("--response-topic", help="MQTT 5")
    p.add_argument("--correlation-data", help="MQTT 5 (UTF-8 text)")
    p.add_argument("--no-disconnect", action="store_true",
                   help="end without DISCONNECT (the socket just closes)")
    args = p.parse_args()
    if args.inflight < 1:
        p.error("--inflight must be at least 1")

    props = None
    wanted = [args.user_property, args.content_type, args.response_topic, args.correlation_data]
    if any(wanted):
        if args.protocol != "5":
            p.error("message properties need --protocol 5")
        props = Properties(PacketTypes.PUBLISH)
        if args.user_property:
            props.UserProperty = args.user_property
        if args.content_type is not None:
            props.ContentType = args.content_type
        if args.response_topic is not None:
            props.ResponseTopic = args.response_topic
        if args.correlation_data is not None:
            props.CorrelationData = args.correlation_data.encode()

    conn = Connection(args)
    conn.client.max_inflight_messages_set(args.inflight)
    conn.connect()

    pending = []  # (seq, payload, info), oldest first

    def report_oldest():
        seq, payload, info = pending.pop(0)
        conn.wait(f"the ack of message {seq}", lambda: info.mid in conn.acks)
        with conn.cond:
            code, why = conn.acks.pop(info.mid)
        # Returns at once: the callback that recorded the ack has run.
        info.wait_for_publish(args.timeout)
        emit("ack", seq=seq, mid=info.mid, payload=payload, qos=args.qos,
             reason_code=code, reason_string=why)

    for seq in range(args.count):
        while len(pending) >= args.inflight:
            report_oldest()
        payload = args.payload if args.payload is not None else f"{args.prefix}-{seq}"
        info = conn.client.publish(args.topic, payload.encode(), args.qos, args.retain, props)
        if info.rc == MQTT_ERR_NO_CONN:
            # The connection is going: wait for paho to say how it ended (exit 2).
            conn.wait(f"sending message {seq}", lambda: False)
        elif info.rc != 0:
            finish(1, "error", error=f"publish of message {seq} failed (rc {info.rc})")
        pending.append((seq, payload, info))
    while pending:
        report_oldest()
    emit("done", count=args.count)
    if args.no_disconnect:
        sys.stdout.flush()
        os._exit(0)
    conn.disconnect()


if __name__ == "__main__":
    main()
