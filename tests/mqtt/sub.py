#!/usr/bin/env python3
"""Subscribes to one or more --topic filters at --qos and prints one JSON line per
message received:

    {"event": "connected", "session_present": false, "reason_code": 0, ...}
    {"event": "ready", "mid": 1, "granted": [1]}        (after the SUBACK)
    {"event": "message", "client": "c1", "topic": "a/b", "payload": "hi", "qos": 1,
     "retain": false, "dup": false, "user_properties": [["k", "v"]],
     "content_type": null, "response_topic": null, "correlation_data": null}
    ...
    {"event": "done", "received": N}

"granted" holds the SUBACK's codes: the granted QoS, or a failure code (128 in 3.1.1,
the MQTT 5 reason code otherwise). Payloads and correlation data are shown as UTF-8.

With --count N the client disconnects after N messages and exits 0 ("timeout", exit 4,
if they do not come within --timeout of the SUBACK); --count 0 disconnects right after
the SUBACK (to leave a persistent session behind). Without --count it prints messages
until --timeout, then exits 0. --persistent asks for a session that outlives the
connection (3.1.1: clean session 0; 5: clean start 0, with --session-expiry);
--no-subscribe relies on the subscriptions such a session kept.
"""

import time

from common import Connection, emit, finish, parser, text


def main():
    p = parser(__doc__)
    p.add_argument("--topic", action="append", required=True, help="filter (repeatable)")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    p.add_argument("--count", type=int)
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--session-expiry", type=int, help="MQTT 5: seconds")
    p.add_argument("--no-subscribe", action="store_true")
    args = p.parse_args()
    if args.session_expiry is not None and args.protocol != "5":
        p.error("--session-expiry needs --protocol 5")

    conn = Connection(args, clean=not args.persistent, session_expiry=args.session_expiry)
    received = [0]
    client_id = args.client_id

    def on_message(client, userdata, message):
        with conn.cond:
            if args.count is not None and received[0] >= args.count:
                return  # past --count: not printed (the library still acknowledges it)
            received[0] += 1
            props = message.properties
            emit(
                "message",
                client=client_id,
                topic=message.topic,
                payload=text(message.payload),
                qos=message.qos,
                retain=bool(message.retain),
                dup=bool(message.dup),
                user_properties=[list(p) for p in getattr(props, "UserProperty", [])],
                content_type=getattr(props, "ContentType", None),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=text(getattr(props, "CorrelationData", None)),
                message_expiry=getattr(props, "MessageExpiryInterval", None),
            )
            conn.cond.notify_all()

    conn.client.on_message = on_message
    conn.connect()
    if not args.no_subscribe:
        result, mid = conn.client.subscribe([(f, args.qos) for f in args.topic])
        if result != 0:
            finish(1, "error", error=f"SUBSCRIBE not sent (rc {result})")
        conn.wait("the SUBACK", lambda: mid in conn.subacks)
    else:
        emit("ready", mid=None, granted=[])

    if args.count is None:
        deadline = time.monotonic() + args.timeout
        with conn.cond:
            while conn.lost is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.cond.wait(left)
            if conn.lost is not None:
                finish(2, "disconnected", received=received[0], **conn.lost)
    else:
        conn.wait(
            lambda: f"{args.count} messages ({received[0]} came)",
            lambda: received[0] >= args.count,
        )
    with conn.cond:
        n = received[0]
    conn.disconnect()
    emit("done", received=n)


if __name__ == "__main__":
    main()
