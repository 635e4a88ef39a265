#!/usr/bin/env bash
# User-space instructions per operation in pkce-proxy (or in one of run.sh's reference
# targets, INSTR_TARGET below), counted by callgrind: a figure that,
# unlike rates and CPU time on a shared VM, moves by well under 1 % between runs, so it shows
# the effect of a change that saves a few percent. Kernel time is not in it.
#
#   benches/load/instructions.sh WORKDIR [flow|passthrough ...]
#
# WORKDIR is a work directory left by run.sh (it holds the upstream's nginx.conf and the PKCE
# pairs). The proxy is the one in $CARGO_TARGET_DIR (default target-load/) unless
# LOAD_PROXY_BIN names another. Needs valgrind (apt-get install -y valgrind), nginx and wrk;
# uses the ports run.sh uses (LOAD_BASE_PORT, default 18180). Knobs: INSTR_SECONDS=10
# (counted load per scenario) and INSTR_CONNECTIONS=8. INSTR_TARGET=pkce-proxy (default),
# pkce-proxy-off (the same binary with its OAuth paths moved away, as in run.sh) or hyper-floor
# (benches/tools/hyper_floor.rs: LOAD_FLOOR_BIN, or the one in $CARGO_TARGET_DIR).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORKDIR=${1:?usage: instructions.sh WORKDIR [flow|passthrough ...]}
shift
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(flow passthrough)
SECONDS_COUNTED=${INSTR_SECONDS:-10}
CONNECTIONS=${INSTR_CONNECTIONS:-8}
BASE_PORT=${LOAD_BASE_PORT:-18180}
UPSTREAM_PORT=$((BASE_PORT + 1))
PROXY_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
PROXY_BIN=${LOAD_PROXY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target-load}/release/pkce-proxy}
FLOOR_BIN=${LOAD_FLOOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target-load}/release/examples/hyper_floor}
TARGET=${INSTR_TARGET:-pkce-proxy}
NGINX=${LOAD_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

die() { printf 'instructions.sh: %s\n' "$*" >&2; exit 1; }
for tool in valgrind callgrind_control wrk; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y valgrind wrk)"
done
[ -x "$NGINX" ] || die "nginx is missing (apt-get install -y nginx)"
PROXY_CMD=("$PROXY_BIN" --upstream "http://127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$PROXY_PORT"
    --admin-listen "127.0.0.1:$ADMIN_PORT" --max-pending 10000000
    --upstream-timeout 60s --shutdown-grace 1s)
case $TARGET in
    pkce-proxy) ;;
    pkce-proxy-off) PROXY_CMD+=(--authorize-path /off/authorize --token-path /off/token --par-path /off/par) ;;
    hyper-floor)
        [ -x "$FLOOR_BIN" ] || die "no hyper_floor at $FLOOR_BIN (cargo build --release --example hyper_floor, or set LOAD_FLOOR_BIN)"
        PROXY_CMD=("$FLOOR_BIN" --upstream "127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$PROXY_PORT")
        ;;
    *) die "unknown INSTR_TARGET $TARGET (pkce-proxy, pkce-proxy-off, hyper-floor)" ;;
esac
if [ ! -f "$WORKDIR/upstream/nginx.conf" ] || [ ! -f "$WORKDIR/pairs.lua" ]; then
    die "$WORKDIR is not a work directory left by run.sh"
fi
[ "$TARGET" = hyper-floor ] || [ -x "$PROXY_BIN" ] || die "no pkce-proxy at $PROXY_BIN (run run.sh first, or set LOAD_PROXY_BIN)"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() { # port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1"
}

"$NGINX" -p "$WORKDIR/upstream/" -c "$WORKDIR/upstream/nginx.conf" -e "$WORKDIR/upstream/error.log" &
PIDS+=($!)
wait_port "$UPSTREAM_PORT"

export LOAD_PAIRS=$WORKDIR/pairs.lua
export LOAD_CLIENT_ID=${LOAD_CLIENT_ID:-load-client}
export LOAD_REDIRECT_URI=${LOAD_REDIRECT_URI:-https://client.example/callback}

for scenario in "${SCENARIOS[@]}"; do
    case $scenario in
        flow) url=http://127.0.0.1:$PROXY_PORT/ ;;
        passthrough) url=http://127.0.0.1:$PROXY_PORT/static/x ;;
        *) die "unknown scenario $scenario (flow, passthrough)" ;;
    esac
    out=$WORKDIR/callgrind.$scenario
    rm -f "$out".*
    # A fresh proxy per scenario, instrumented only while the counted load runs.
    env RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out.%p" "${PROXY_CMD[@]}" >"$WORKDIR/callgrind.log" 2>&1 &
    proxy=$!
    PIDS+=("$proxy")
    wait_port "$PROXY_PORT"
    # Warm-up (connections opened, pools filled), not counted.
    wrk -t1 -c"$CONNECTIONS" -d2s --timeout 30s -s "$HERE/$scenario.lua" "$url" >/dev/null
    callgrind_control -i on "$proxy" >/dev/null 2>&1
    wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_COUNTED}s" --timeout 30s -s "$HERE/$scenario.lua" "$url" \
        >"$WORKDIR/callgrind.wrk.$scenario"
    callgrind_control -i off "$proxy" >/dev/null 2>&1
    callgrind_control -d "$proxy" >/dev/null 2>&1
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
    ops=$(sed -n 's/^RESULT .* completed=\([0-9]*\).*/\1/p' "$WORKDIR/callgrind.wrk.$scenario")
    refused=$(sed -n 's/^RESULT .* refused=\([0-9]*\).*/\1/p' "$WORKDIR/callgrind.wrk.$scenario")
    if [ -z "$ops" ] || [ "$ops" -eq 0 ]; then die "no completed $scenario operations"; fi
    [ "$refused" = 0 ] || die "$refused $scenario operations were refused"
    instructions=$(cat "$out".* | sed -n 's/^totals: \([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
    printf '%s (%s): %d operations, %d instructions, %d instructions per operation\n' \
        "$scenario" "$TARGET" "$ops" "$instructions" "$((instructions / ops))"
done
