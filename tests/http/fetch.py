"""Request a URL of the broker's HTTP listener and print what came back as one JSON
line: {"status": 200, "body": "..."}; with --metrics, also the samples of the body as
the Prometheus project's own OpenMetrics parser reads them (a body it cannot parse is
an error, exit 2). GET unless --method; --json sends a body as application/json
(--content-type another type), --host another Host header.

Usage: fetch.py URL [--token TOKEN] [--ca CERT.pem] [--metrics] [--method M]
                [--json BODY] [--content-type TYPE] [--host HOST]
"""

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--ca")
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--host")
    args = parser.parse_args()

    data = args.json.encode() if args.json is not None else None
    request = urllib.request.Request(args.url, data=data, method=args.method)
    if data is not None:
        request.add_header("Content-Type", args.content_type)
    if args.host:
        request.add_header("Host", args.host)
    if args.token:
        request.add_header("Authorization", "Bearer " + args.token)
    context = ssl.create_default_context(cafile=args.ca) if args.ca else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            status, body = response.status, response.read().decode()
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
        content_type = e.headers.get("Content-Type", "")
    out = {"status": status, "body": body, "content_type": content_type}
    if args.metrics and status == 200:
        try:
            out["samples"] = [
                {"name": s.name, "labels": s.labels, "value": s.value}
                for family in text_string_to_metric_families(body)
                for s in family.samples
            ]
        except Exception as e:  # the parser's own message says what is wrong
            print(json.dumps({"error": f"not valid OpenMetrics: {e}", "body": body}))
            sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
