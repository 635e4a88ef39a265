#!/usr/bin/env python3
"""Turns run.sh's results.tsv into the markdown table.

Each line of results.tsv: round, target, scenario, then the RESULT line of flow.lua or
passthrough.lua (key=value pairs). Per target and scenario the table shows the median over
rounds of the rate and of each round's p50 and p99, the refused/unmatched total over all
rounds, the ratio of the median rate to nginx's, and the median over rounds of the target's
own CPU time per completed flow or request (and its ratio to nginx's), split into user space
(the program's own work) and the kernel's (system calls, loopback delivery).

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


def per_op_median(kvs, ticks):
    """The median over rounds of `ticks(round)` CPU ticks per completed operation, in
    microseconds; None if no round recorded them."""
    per_op = []
    for k in kvs:
        t = ticks(k)
        if t is not None and int(k["completed"]) > 0:
            per_op.append(t / int(k["clk_tck"]) * 1e6 / int(k["completed"]))
    return statistics.median(per_op) if per_op else None


def total_ticks(k):
    return int(k["cpu_ticks"]) if "cpu_ticks" in k else None


def user_ticks(k):
    return int(k["cpu_user_ticks"]) if "cpu_user_ticks" in k else None


def kernel_ticks(k):
    if "cpu_ticks" not in k or "cpu_user_ticks" not in k:
        return None
    return int(k["cpu_ticks"]) - int(k["cpu_user_ticks"])


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

    medians, cpu, split = {}, {}, {}
    for (scenario, target), kvs in groups.items():
        medians[(scenario, target)] = statistics.median(float(k["rate"]) for k in kvs)
        cpu[(scenario, target)] = per_op_median(kvs, total_ticks)
        split[(scenario, target)] = (per_op_median(kvs, user_ticks),
                                     per_op_median(kvs, kernel_ticks))

    unit = {"flow": "flows/s", "passthrough": "req/s"}
    print("| target | scenario | rate (median) | per round | p50 ms | p99 ms | refused/unmatched "
          "| socket errors | vs nginx | CPU µs/op | CPU vs nginx | user / kernel µs/op |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
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
        u, kern = split[(scenario, target)]
        split_text = f"{u:.1f} / {kern:.1f}" if u is not None and kern is not None else "-"
        # flow-https (LOAD_TLS=1) counts what flow does.
        what = unit.get(scenario.removesuffix("-https"), "/s")
        print(f"| {target} | {scenario} | {rate:,.0f} {what} | {per_round} "
              f"| {ms(p50)} | {ms(p99)} | {refused} | {sock} | {ratio} | {cpu_text} | {cpu_ratio} "
              f"| {split_text} |")
    reasons = sorted({f"{t} {s}: {k['reasons']}" for (s, t), kvs in groups.items()
                      for k in kvs if k.get("reasons", "-") != "-"})
    if reasons:
        print()
        print("Refused/unmatched by reason (per round): " + "; ".join(reasons))


if __name__ == "__main__":
    main()
