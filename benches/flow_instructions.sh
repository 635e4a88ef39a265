#!/usr/bin/env bash
# What the layer adds to one whole flow in process, counted by callgrind: user-space
# instructions and heap allocations per flow, through `PkceLayer` and straight to the same
# in-process legacy server (the `flow/*` benches of benches/flow.rs, without criterion).
# Unlike times on a shared VM, these counts move by well under 1 % between runs.
#
#   benches/flow_instructions.sh            # FLOWS=5000
#
# Each mode runs twice, with 0 and with FLOWS flows after the same setup and warm-up; the
# difference divided by FLOWS is the per-flow figure. Needs valgrind
# (apt-get install -y valgrind). Under valgrind the CPU's SHA extensions are hidden, so each
# SHA-256 block costs about 3 400 instructions in software: the layer hashes 5 or 6 blocks
# per flow (the handle twice, the code twice, the verifier once), about half the count.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLOWS=${FLOWS:-5000}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install -y valgrind)" >&2; exit 1; }

cd "$ROOT"
cargo bench --bench flow --no-run >/dev/null   # build errors, if any, show here
BENCH=$(cargo bench --bench flow --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "flow" and m.get("executable"):
        print(m["executable"])')
[ -x "$BENCH" ] || { echo "could not build benches/flow.rs" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pkce-flow-instr.XXXXXX)
for mode in with_layer without_layer; do
    for n in 0 "$FLOWS"; do
        TOWER_PKCE_FLOW_LOOP="$n:$mode" valgrind --tool=callgrind \
            --callgrind-out-file="$WORK/$mode.$n" "$BENCH" >/dev/null 2>"$WORK/$mode.$n.log"
    done
done

python3 - "$WORK" "$FLOWS" <<'PY'
import collections, re, sys
work, flows = sys.argv[1], int(sys.argv[2])

def load(path):
    """Total instructions, and calls per function name."""
    names, calls, total, callee = {}, collections.Counter(), 0, None
    for line in open(path):
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
        m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name.strip()
            if kind == "cfn":
                callee = ident
            continue
        m = re.match(r"calls=(\d+)", line)
        if m and callee:
            calls[names.get(callee, callee)] += int(m.group(1))
    return total, calls

rows = {}
for mode in ("with_layer", "without_layer"):
    (t0, c0), (t1, c1) = load(f"{work}/{mode}.0"), load(f"{work}/{mode}.{flows}")
    per = lambda a, b: (b - a) / flows
    rows[mode] = (per(t0, t1), per(c0["malloc"], c1["malloc"]), per(c0["malloc_consolidate"], c1["malloc_consolidate"]))
print(f"| per flow ({flows} flows) | instructions | malloc calls | malloc_consolidate |")
print("|---|---|---|---|")
for mode, (instr, mallocs, consolidate) in rows.items():
    print(f"| {mode} | {instr:,.0f} | {mallocs:.1f} | {consolidate:.2f} |")
w, o = rows["with_layer"], rows["without_layer"]
print(f"| added by the layer | {w[0] - o[0]:,.0f} | {w[1] - o[1]:.1f} | {w[2] - o[2]:.2f} |")
PY
echo "callgrind files: $WORK"
