#!/usr/bin/env python3
"""Prints the nginx scenario results (the JSON lines tests/nginx/run.py --results appends)
as a table: scenario x server (stock, patched) x tcp_migrate_req -> requests and failures
by kind, then the listen sockets each process holds (the `sockets` scenario), then the
scenarios that run no load (error_log) and passed. The last run of each wins.
Usage: table.py build/nginx-results.jsonl"""

import json
import sys


def main():
    rows, sockets, checks = {}, {}, {}
    with open(sys.argv[1]) as f:
        for line in f:
            r = json.loads(line)
            key = (r["scenario"], r["server"], r["tcp_migrate_req"])
            if "listen_sockets" in r:
                sockets[key] = r["listen_sockets"]
            elif r.get("checks_passed"):
                checks[key] = r
            else:
                rows[key] = r
    head = ("scenario", "nginx", "tcp_migrate_req", "requests", "ok", "refused", "reset", "timeout", "other",
            "in flight at death")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    order = {"patched": 0, "stock": 1}
    for (name, server, m), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), -kv[0][2])):
        lost = str(r["in_flight_at_death"]) + (f" (+{r['in_flight_slack']} possible)" if r.get("in_flight_slack") else "")
        cells = (name, server, m, r["requests"], r["ok"], r["refused"], r["reset"], r["timeout"], r["other"], lost)
        print("| " + " | ".join(map(str, cells)) + " |")
    if sockets:
        print()
        print("| nginx | listen sockets held by the master | by each worker |")
        print("|---|---|---|")
        for (_, server, _), c in sorted(sockets.items(), key=lambda kv: order.get(kv[0][1], 9)):
            print(f"| {server} | {c['master']} | {' '.join(map(str, c['workers']))} |")
    if checks:
        print()
        print("| scenario (no load) | nginx | result |")
        print("|---|---|---|")
        for (name, server, _) in sorted(checks, key=lambda k: (k[0], order.get(k[1], 9))):
            print(f"| {name} | {server} | passed |")


if __name__ == "__main__":
    main()
