#!/usr/bin/env python3
"""Prints the scenario results (the JSON lines run.py --results appends) as a table:
scenario x strategy x tcp_migrate_req -> requests and failures by kind. The last run of each pair
wins. Usage: table.py build/scenario-results.jsonl"""

import json
import sys


def main():
    rows = {}
    with open(sys.argv[1]) as f:
        for line in f:
            r = json.loads(line)
            rows[(r["scenario"], r.get("strategy", "auto"), r["tcp_migrate_req"])] = r
    head = ("scenario", "strategy", "tcp_migrate_req", "requests", "ok", "refused", "reset", "timeout", "other", "in flight at death")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    order = {"bpf": 0, "sysctl": 1, "auto": 2, "drain": 3, "none": 4}
    for (name, strategy, m), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), -kv[0][2])):
        cells = (name, strategy, m, r["requests"], r["ok"], r["refused"], r["reset"], r["timeout"], r["other"],
                 r["in_flight_at_death"])
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
