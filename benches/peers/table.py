"""Reads the JSON lines `benches/peers/run` collected (the peers' and
`amaos bench --json`'s) and prints a markdown table: per peer scenario the
median over rounds of tasks/s, p50, p99 and peak RSS, and AMAOS's comparable
figure divided by the peer's. Standard library only.

    python3 table.py RESULTS.jsonl [--amaos-label TEXT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

FIGURES = ("tasks_per_s", "p50_ms", "p99_ms", "peak_rss_mib")

# Which AMAOS run each peer scenario is held against: (scenario, backend).
# In memory against in memory; LangGraph's Postgres checkpointer against
# AMAOS's Redis store; AutoGen's round robin against AMAOS's group chat when
# that was run (else the crew).
COMPARE = {
    ("langgraph", "memory"): [("crew", "memory")],
    ("langgraph", "postgres"): [("crew", "redis")],
    ("autogen", "memory"): [("group_chat", "memory"), ("crew", "memory")],
    ("crewai", "memory"): [("crew", "memory")],
}
PEER_ORDER = ("langgraph", "autogen", "crewai")


def load(path: str) -> tuple[dict, dict, list[str]]:
    peers: dict[tuple, list[dict]] = defaultdict(list)
    amaos: dict[tuple, list[dict]] = defaultdict(list)
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            raw = raw.strip()
            if not raw.startswith("{"):
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                problems.append(f"not JSON: {raw[:120]}")
                continue
            if "peer" in row:
                key = (row["peer"], row["scenario"], row.get("backend", "memory"), row["concurrency"])
                peers[key].append(row)
            else:
                key = (row["scenario"], row["backend"], row["concurrency"])
                amaos[key].append(row)
            if row.get("failed"):
                who = row.get("peer", "amaos")
                problems.append(f"{who} {row['scenario']} (c={row['concurrency']}): {row['failed']} of "
                                f"{row['tasks']} tasks failed; first: {row.get('first_error')}")
            if row.get("network_attempts"):
                problems.append(f"{row['peer']} {row['scenario']}: {row['network_attempts']} network "
                                f"attempts refused, first: {row.get('network_first')}")
    return peers, amaos, problems


def median(rows: list[dict], figure: str) -> float:
    return statistics.median(float(r[figure]) for r in rows)


def pick_amaos(amaos: dict, peer: str, backend: str, concurrency: int) -> tuple | None:
    """The AMAOS run on the comparable scenario and backend whose concurrency
    is the peer's, or else the nearest (1 stays 1: sequential against
    sequential)."""
    for scenario, amaos_backend in COMPARE.get((peer, backend), []):
        runs = [k for k in amaos if k[0] == scenario and k[1] == amaos_backend]
        if concurrency == 1:
            runs = [k for k in runs if k[2] == 1]
        else:
            runs = [k for k in runs if k[2] > 1]
        if runs:
            return min(runs, key=lambda k: (abs(k[2] - concurrency), -k[2]))
    return None


def fmt(value: float, digits: int = 1) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "–"
    r = a / b
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--amaos-label", default="amaos")
    args = parser.parse_args()
    peers, amaos, problems = load(args.results)

    out = []
    out.append("| peer | scenario | store | c | rounds | tasks | tasks/s | p50 ms | p99 ms | peak RSS MiB "
               "| AMAOS run | AMAOS/peer tasks/s | AMAOS/peer p50 | AMAOS/peer p99 | AMAOS/peer RSS |")
    out.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|")
    order = sorted(peers, key=lambda k: (PEER_ORDER.index(k[0]) if k[0] in PEER_ORDER else 9, k[2], k[3]))
    for key in order:
        peer, scenario, backend, concurrency = key
        rows = peers[key]
        fig = {f: median(rows, f) for f in FIGURES}
        cells = [peer, scenario, backend, str(concurrency), str(len(rows)), str(rows[0]["tasks"]),
                 fmt(fig["tasks_per_s"]), fmt(fig["p50_ms"], 2), fmt(fig["p99_ms"], 2), fmt(fig["peak_rss_mib"])]
        ref = pick_amaos(amaos, peer, backend, concurrency)
        if ref is None:
            cells += ["–", "–", "–", "–", "–"]
        else:
            a = {f: median(amaos[ref], f) for f in FIGURES}
            cells += [f"{ref[0]} {ref[1]} c={ref[2]}",
                      ratio(a["tasks_per_s"], fig["tasks_per_s"]),
                      ratio(a["p50_ms"], fig["p50_ms"]),
                      ratio(a["p99_ms"], fig["p99_ms"]),
                      ratio(a["peak_rss_mib"], fig["peak_rss_mib"])]
        out.append("| " + " | ".join(cells) + " |")

    if amaos:
        out.append("")
        out.append(f"AMAOS ({args.amaos_label}), medians over rounds:")
        out.append("")
        out.append("| scenario | store | c | rounds | tasks | tasks/s | p50 ms | p99 ms | peak RSS MiB | CPU ms/task |")
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for key in sorted(amaos, key=lambda k: (k[0], k[1], k[2])):
            rows = amaos[key]
            fig = {f: median(rows, f) for f in FIGURES}
            cpu = median(rows, "cpu_ms_per_task") if all("cpu_ms_per_task" in r for r in rows) else 0.0
            out.append("| " + " | ".join([key[0], key[1], str(key[2]), str(len(rows)), str(rows[0]["tasks"]),
                                          fmt(fig["tasks_per_s"]), fmt(fig["p50_ms"], 2), fmt(fig["p99_ms"], 2),
                                          fmt(fig["peak_rss_mib"]), fmt(cpu, 2)]) + " |")

    out.append("")
    out.append("AMAOS/peer: AMAOS's median divided by the peer's. Above 1 is better for AMAOS on tasks/s; "
               "below 1 is better for AMAOS on p50, p99 and RSS. Where the concurrencies differ (the AMAOS "
               "run column) latencies are not like for like: see benches/peers/README.md.")
    if problems:
        out.append("")
        out.append("Problems:")
        for p in problems:
            out.append(f"- {p}")
    print("\n".join(out))
    sys.exit(0)


if __name__ == "__main__":
    main()
