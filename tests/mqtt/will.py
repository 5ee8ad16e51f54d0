#!/usr/bin/env python3
"""Connects with a will message, prints "connected" once the broker accepted it, and
dies at once without a DISCONNECT: the process ends with os._exit, so the kernel closes
its socket under the broker, which sees the connection lost (not ended by the client)
and publishes the will.

    {"event": "connected", "session_present": false, "reason_code": 0, ...}
"""

import os
import sys

from common import Connection, parser


def main():
    p = parser(__doc__)
    p.add_argument("--will-topic", required=True)
    p.add_argument("--will-payload", default="")
    p.add_argument("--will-qos", type=int, choices=[0, 1, 2], default=0)
    p.add_argument("--will-retain", action="store_true")
    args = p.parse_args()
    will = {
        "topic": args.will_topic,
        "payload": args.will_payload.encode(),
        "qos": args.will_qos,
        "retain": args.will_retain,
    }
    conn = Connection(args, will=will)
    conn.connect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
