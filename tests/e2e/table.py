"""The results files (the JSON lines `python3 -m e2e.run --results FILE` appends) as
Markdown tables; the last run of each scenario wins.

  python3 -m e2e.table rpserver build/scenario-results.jsonl
      scenario x strategy x tcp_migrate_req -> requests and failures by kind
  python3 -m e2e.table nginx build/nginx-results.jsonl
      scenario x build (stock, patched) x tcp_migrate_req -> the same; then the listen
      sockets each process holds (the `sockets` scenario), then the scenarios without load
      that passed
  python3 -m e2e.table nginx-versions build/nginx-results.jsonl
      scenario x (nginx version, build) -> failed of requests [in flight at death]"""

import json
import sys

ROW_HEAD = ("requests", "ok", "refused", "reset", "timeout", "other", "in flight at death")


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def markdown_row(cells):
    return "| " + " | ".join(map(str, cells)) + " |"


def head(*cells):
    return markdown_row(cells) + "\n|" + "---|" * len(cells)


def counts(r):
    lost = str(r["in_flight_at_death"]) + (f" (+{r['in_flight_slack']} possible)" if r.get("in_flight_slack") else "")
    return (r["requests"], r["ok"], r["refused"], r["reset"], r["timeout"], r["other"], lost)


def rpserver_table(records):
    rows = {(r["scenario"], r.get("strategy", "auto"), r["tcp_migrate_req"]): r for r in records}
    print(head("scenario", "strategy", "tcp_migrate_req", *ROW_HEAD))
    order = {"bpf": 0, "sysctl": 1, "auto": 2, "drain": 3, "none": 4}
    for (name, strategy, m), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), -kv[0][2])):
        print(markdown_row((name, strategy, m) + counts(r)))


def nginx_table(records):
    """One row per scenario, nginx version, build (stock, patched, or an adoption's
    "stock>patched"), steering and sysctl: the last run of each wins."""
    rows, sockets, checks = {}, {}, {}
    for r in records:
        key = (r["scenario"], r.get("nginx_version", "?"), r["server"],
               r.get("steering", "on" if "patched" in r["server"] else "-"), r["tcp_migrate_req"])
        if "listen_sockets" in r:
            sockets[key] = r["listen_sockets"]
        elif r.get("checks_passed"):
            checks[key] = r
        else:
            rows[key] = r

    def order(kv):
        name, version, server, steering, m = kv[0]
        return (name, version, {"patched": 0, "stock": 1}.get(server, 2), server, steering, -m)

    print(head("scenario", "nginx version", "build", "steering", "tcp_migrate_req", *ROW_HEAD))
    for key, r in sorted(rows.items(), key=order):
        print(markdown_row(key) + " " + markdown_row(counts(r))[2:])
    if sockets:
        print()
        print(head("nginx version", "build", "listen sockets held by the master", "by each worker"))
        for (_, version, server, _, _), c in sorted(sockets.items(), key=order):
            print(markdown_row((version, server, c["master"], " ".join(map(str, c["workers"])))))
    if checks:
        print()
        print(head("scenario (no load)", "nginx version", "build", "result"))
        for (name, version, server, _, _), _r in sorted(checks.items(), key=order):
            print(markdown_row((name, version, server, "passed")))


def failed(r):
    return r["requests"] - r["ok"]


def nginx_versions_table(records):
    """Scenario x (version, build): "failed of requests" (in flight at death in brackets
    when workers were killed or fast-stopped); adoption runs (builds "a>b") and runs with
    steering off are left to nginx_table."""
    cells, columns = {}, set()
    for r in records:
        if "requests" not in r or ">" in r["server"] or r.get("steering") in ("off", "no verdicts"):
            continue
        col = (r["nginx_version"], r["server"])
        columns.add(col)
        dead = f" [{r['in_flight_at_death']}]" if r.get("in_flight_at_death") else ""
        cells[(r["scenario"], col)] = f"{failed(r)} of {r['requests']}{dead}"
    cols = sorted(columns, key=lambda c: (c[0].split(".")[:2], c[0], c[1] != "patched"))
    print(head("scenario", *(f"{v} {k}" for v, k in cols)))
    for name in sorted({n for n, _ in cells}):
        print(markdown_row((name, *(cells.get((name, c), "") for c in cols))))


def main():
    tables = {"rpserver": rpserver_table, "nginx": nginx_table, "nginx-versions": nginx_versions_table}
    if len(sys.argv) != 3 or sys.argv[1] not in tables:
        print(__doc__, file=sys.stderr)
        return 2
    tables[sys.argv[1]](read(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
