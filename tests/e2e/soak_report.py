"""The soak's figures over time as a Markdown table (docs/benchmarks.md), from the JSON
lines `python3 -m e2e.soak --out FILE` appends, one per server and window:

  python3 -m e2e.soak_report FILE.jsonl"""

import json
import sys

COLUMNS = (
    ("server", "server"), ("window", "min"), ("requests", "requests"), ("failed", "failed"),
    ("unexcused", "unexcused"), ("events", "events"), ("master_fds", "master fds"),
    ("master_rss_kib", "master RSS KiB"), ("workers", "workers"), ("worker_fds_max", "worker fds"),
    ("worker_rss_kib_max", "worker RSS KiB"), ("processes", "processes"), ("listen_sockets", "listeners"),
    ("bpf_progs", "BPF progs"), ("bpf_maps", "BPF maps"),
)


def cell(record, key):
    if key == "events":
        return str(sum(record["events"].values()))
    return str(record[key])


def table(records):
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, key) for key, _ in COLUMNS) + " |" for r in records]
    return "\n".join(lines)


def event_counts(records):
    """{event: how many} over the windows' records."""
    events = {}
    for r in records:
        for k, v in r["events"].items():
            events[k] = events.get(k, 0) + v
    return events


def totals(records):
    events = event_counts(records)
    return (f"{sum(r['requests'] for r in records)} requests, {sum(r['failed'] for r in records)} failed "
            f"({sum(r['unexcused'] for r in records)} unexcused); events: "
            + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))


def main():
    with open(sys.argv[1]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for server in sorted({r["server"] for r in records}):
        mine = [r for r in records if r["server"] == server]
        print(f"{server}: {totals(mine)}\n")
    print(table(records))


if __name__ == "__main__":
    main()
