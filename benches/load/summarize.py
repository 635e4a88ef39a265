#!/usr/bin/env python3
"""Turns run.sh's results.tsv into the markdown table.

Each line of results.tsv: round, target, scenario, then the RESULT line of flow.lua or
passthrough.lua (key=value pairs). Per target and scenario the table shows the median over
rounds of the rate and of each round's p50 and p99, the refused/unmatched total over all
rounds, the ratio of the median rate to nginx's, and the median over rounds of the target's
own CPU time per completed flow or request (and its ratio to nginx's).

usage: summarize.py results.tsv [--baseline nginx]
"""

import argparse
import statistics
import sys
from collections import OrderedDict


def parse(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 4:
                continue
            rnd, target, scenario, result = cols[0], cols[1], cols[2], cols[3]
            kv = dict(p.split("=", 1) for p in result.split()[1:] if "=" in p)
            runs.append((int(rnd), target, scenario, kv))
    return runs


def ms(us):
    return f"{us / 1000:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--baseline", default="nginx")
    args = ap.parse_args()
    runs = parse(args.results)
    if not runs:
        sys.exit("summarize: no results")

    groups = OrderedDict()
    for rnd, target, scenario, kv in runs:
        groups.setdefault((scenario, target), []).append(kv)

    medians, cpu = {}, {}
    for (scenario, target), kvs in groups.items():
        medians[(scenario, target)] = statistics.median(float(k["rate"]) for k in kvs)
        per_op = [int(k["cpu_ticks"]) / int(k["clk_tck"]) * 1e6 / int(k["completed"])
                  for k in kvs if "cpu_ticks" in k and int(k["completed"]) > 0]
        cpu[(scenario, target)] = statistics.median(per_op) if per_op else None

    unit = {"flow": "flows/s", "passthrough": "req/s"}
    print("| target | scenario | rate (median) | per round | p50 ms | p99 ms | refused/unmatched "
          "| socket errors | vs nginx | CPU µs/op | CPU vs nginx |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (scenario, target), kvs in groups.items():
        rate = medians[(scenario, target)]
        base = medians.get((scenario, args.baseline))
        ratio = f"{rate / base:.2f}×" if base else "-"
        p50 = statistics.median(float(k["p50_us"]) for k in kvs)
        p99 = statistics.median(float(k["p99_us"]) for k in kvs)
        refused = sum(int(k["refused"]) for k in kvs)
        sock = sum(int(k["socket_errors"]) for k in kvs)
        per_round = ", ".join(f"{float(k['rate']):.0f}" for k in kvs)
        c, cbase = cpu[(scenario, target)], cpu.get((scenario, args.baseline))
        cpu_text = f"{c:.1f}" if c is not None else "-"
        cpu_ratio = f"{c / cbase:.2f}×" if c is not None and cbase else "-"
        print(f"| {target} | {scenario} | {rate:,.0f} {unit.get(scenario, '/s')} | {per_round} "
              f"| {ms(p50)} | {ms(p99)} | {refused} | {sock} | {ratio} | {cpu_text} | {cpu_ratio} |")
    reasons = sorted({f"{t} {s}: {k['reasons']}" for (s, t), kvs in groups.items()
                      for k in kvs if k.get("reasons", "-") != "-"})
    if reasons:
        print()
        print("Refused/unmatched by reason (per round): " + "; ".join(reasons))


if __name__ == "__main__":
    main()
