#!/usr/bin/env bash
# Interop test: real OAuth client libraries -> pkce-proxy -> a real legacy OAuth server
# library (Authlib + Flask, PKCE off).
#
#   tests/interop/run.sh [--clean]
#
# Installs what it needs from the package registries (a venv at tests/interop/.venv, npm
# packages under node-client/, crates for rust-client/), builds pkce-proxy, starts the legacy
# server and two proxies in front of it (strict, and one with --exempt-client conf-app), runs
# the drivers, prints a table, and exits non-zero on any failure.
#
# Environment:
#   CARGO_TARGET_DIR       honoured for both cargo builds
#   INTEROP_VENV           venv directory (default tests/interop/.venv)
#   INTEROP_SKIP_NODE=1    skip the node (openid-client) driver
#   INTEROP_SKIP_RUST=1    skip the Rust (oauth2 crate) driver
#   INTEROP_REQUIRE_ALL=1  a skipped driver is a failure (for CI)
#   INTEROP_KEEP=1         keep the work directory (logs) after the run
#   INTEROP_PROXY_ARGS     extra flags for both proxies, e.g. "--mode report" as a negative
#                          control: the attack checks must then FAIL
#   PYTHON                 interpreter for the venv (default python3)
# --clean removes the venv and node_modules first (a from-scratch install).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${INTEROP_VENV:-$HERE/.venv}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-interop.XXXXXX")
START=$SECONDS

log() { printf '[interop %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        # up to ~5 s each for a clean exit, then KILL
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for f in "$WORK"/*.err; do
            [[ -s $f ]] || continue
            log "---- last lines of $(basename "$f")"
            tail -n 15 "$f" >&2 || true
        done
    fi
    if [[ ${INTEROP_KEEP:-0} == 1 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command with a time limit (coreutils timeout), naming the step on failure.
step() {
    local limit=$1 name=$2
    shift 2
    log "$name"
    timeout --kill-after=10 "$limit" "$@" || {
        local rc=$?
        [[ $rc -eq 124 ]] && die "$name: timed out after ${limit}s"
        die "$name: failed (exit $rc)"
    }
}

# Starts a background server whose stdout says "listening on HOST:PORT"; waits (bounded) for
# that line and for the port to accept connections; sets ADDR to HOST:PORT. (Not run in a
# command substitution: the pid must be recorded in this shell, for the trap.)
start_server() {
    local name=$1
    shift
    # Created here, not by the child's redirection, so reading them cannot race its start.
    : >"$WORK/$name.out"
    : >"$WORK/$name.err"
    "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    local addr="" deadline=$((SECONDS + 60))
    while [[ -z $addr ]]; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before listening"
        ((SECONDS < deadline)) || die "$name: no 'listening on' line within 60 s"
        addr=$(sed -n 's/^listening on \(.*\)$/\1/p' "$WORK/$name.out" | head -n 1)
        [[ -n $addr ]] || sleep 0.1
    done
    local host=${addr%:*} port=${addr##*:}
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$name exited"
        ((SECONDS < deadline)) || die "$name: $addr does not accept connections"
        sleep 0.1
    done
    ADDR=$addr
}

[[ ${1:-} == --clean ]] && {
    log "--clean: removing $VENV and node-client/node_modules"
    rm -rf "$VENV" "$HERE/node-client/node_modules"
}

command -v cargo >/dev/null || die "cargo not found"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

# ------------------------------------------------------------------ install
REQ_HASH=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$REQ_HASH" ]]; then
    step 120 "creating venv $VENV" "$PYTHON" -m venv --clear "$VENV"
    step 600 "pip install -r requirements.txt" "$VENV/bin/python" -m pip install \
        --quiet --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
    echo "$REQ_HASH" >"$VENV/.requirements.sha256"
else
    log "venv up to date ($VENV)"
fi

# Where cargo puts binaries (honours CARGO_TARGET_DIR and .cargo/config).
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') ||
    die "cargo metadata failed"
[[ -n $TARGET_DIR ]] || die "cannot find cargo's target directory"

step 1200 "cargo build -p pkce-proxy" \
    bash -c 'cd "$1" && cargo build --quiet -p pkce-proxy --bin pkce-proxy' _ "$ROOT"
PROXY_BIN=$TARGET_DIR/debug/pkce-proxy
[[ -x $PROXY_BIN ]] || die "no binary at $PROXY_BIN"

RUST_CLIENT=""
if [[ ${INTEROP_SKIP_RUST:-0} != 1 ]]; then
    # The same target directory as the proxy's: shared dependencies build once.
    step 1200 "cargo build rust-client (oauth2 crate)" \
        env CARGO_TARGET_DIR="$TARGET_DIR" bash -c \
        'cd "$1" && cargo build --quiet --locked' _ "$HERE/rust-client"
    RUST_CLIENT=$TARGET_DIR/debug/pkce-proxy-interop-rust-client
fi

NODE_OK=0
if [[ ${INTEROP_SKIP_NODE:-0} != 1 ]] && command -v node >/dev/null && command -v npm >/dev/null; then
    if [[ ! -d $HERE/node-client/node_modules/openid-client ]]; then
        step 300 "npm ci (openid-client)" bash -c \
            'cd "$1" && npm ci --no-audit --no-fund --loglevel=error' _ "$HERE/node-client"
    fi
    NODE_OK=1
fi

# ------------------------------------------------------------------ start
start_server legacy "$VENV/bin/python" "$HERE/legacy_server.py" --port 0
LEGACY=$ADDR
log "legacy server (Authlib, no PKCE) on $LEGACY"
export RUST_LOG=${RUST_LOG:-info}
read -r -a EXTRA <<<"${INTEROP_PROXY_ARGS:-}"
start_server proxy "$PROXY_BIN" --upstream "http://$LEGACY" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 "${EXTRA[@]+"${EXTRA[@]}"}"
PROXY=$ADDR
log "pkce-proxy (strict) on $PROXY"
start_server proxy-exempt "$PROXY_BIN" --upstream "http://$LEGACY" \
    --listen 127.0.0.1:0 --exempt-client conf-app "${EXTRA[@]+"${EXTRA[@]}"}"
EXEMPT=$ADDR
log "pkce-proxy (--exempt-client conf-app) on $EXEMPT"

# ------------------------------------------------------------------ drivers
RESULTS=$WORK/results.txt
: >"$RESULTS"
DRIVER_FAIL=()
run_driver() {
    local name=$1 limit=$2
    shift 2
    log "driver: $name"
    local rc=0
    timeout --kill-after=5 "$limit" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.err" || rc=$?
    grep '^RESULT|' "$WORK/$name.stdout" >>"$RESULTS" || true
    if [[ $rc -ne 0 ]]; then
        local why="exit $rc"
        if [[ $rc -eq 124 ]]; then why="timed out after ${limit}s"; fi
        DRIVER_FAIL+=("$name ($why)")
        tail -n 20 "$WORK/$name.err" >&2 || true
    fi
}
skip() { echo "RESULT|$1|$2|SKIP|$3" >>"$RESULTS"; }

INTEROP_SECRETS_FILE=$WORK/secrets.txt run_driver python 180 \
    "$VENV/bin/python" "$HERE/driver.py" --proxy "http://$PROXY" --legacy "http://$LEGACY" \
    --exempt-proxy "http://$EXEMPT"

if [[ -n $RUST_CLIENT ]]; then
    run_driver rust 120 "$RUST_CLIENT" "http://$PROXY"
else
    skip rust-oauth2 "driver" "INTEROP_SKIP_RUST=1"
fi

if [[ $NODE_OK == 1 ]]; then
    run_driver node 120 node "$HERE/node-client/client.mjs" "http://$PROXY" "http://$LEGACY"
else
    skip node-openid-client "driver" "node/npm not found or INTEROP_SKIP_NODE=1"
fi

# ------------------------------------------------------------------ after-checks
# The proxies are still up (no crash), logged no panic, and no secret seen on the wire (codes,
# verifiers, tokens, client states, client secrets) appears in their logs.
for name in proxy proxy-exempt legacy; do
    i=0
    case $name in proxy) i=1 ;; proxy-exempt) i=2 ;; legacy) i=0 ;; esac
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "RESULT|process|$name still running after all drivers|PASS|" >>"$RESULTS"
    else
        echo "RESULT|process|$name still running after all drivers|FAIL|it exited" >>"$RESULTS"
    fi
done
if grep -qi 'panic' "$WORK/proxy.err" "$WORK/proxy-exempt.err"; then
    echo "RESULT|logs|no panic in proxy logs|FAIL|$(grep -hi panic "$WORK"/proxy*.err | head -n 1)" >>"$RESULTS"
else
    echo "RESULT|logs|no panic in proxy logs|PASS|" >>"$RESULTS"
fi
if [[ -s $WORK/secrets.txt ]]; then
    n=$(wc -l <"$WORK/secrets.txt")
    if leaked=$(grep -hoF -f "$WORK/secrets.txt" "$WORK/proxy.err" "$WORK/proxy-exempt.err" | head -n 3); then
        echo "RESULT|logs|no code/verifier/token/state in proxy logs|FAIL|leaked: $leaked" >>"$RESULTS"
    else
        echo "RESULT|logs|no code/verifier/token/state in proxy logs|PASS|$n secrets checked, $(cat "$WORK"/proxy*.err | wc -l) log lines" >>"$RESULTS"
    fi
else
    echo "RESULT|logs|no code/verifier/token/state in proxy logs|FAIL|the python driver recorded no secrets" >>"$RESULTS"
fi

# ------------------------------------------------------------------ report
echo
echo "pkce-proxy interop: legacy Authlib server on $LEGACY, proxy on $PROXY (exempt: $EXEMPT)"
echo
awk -F'|' '
    { suite=$2; check=$3; res=$4; d=$5; if (length(d) > 90) d=substr(d, 1, 87) "..."
      printf "%-5s  %-20s  %-66s  %s\n", res, suite, substr(check, 1, 66), d }
' "$RESULTS"
echo
ADMIN=$(sed -n 's/^admin listening on \(.*\)$/\1/p' "$WORK/proxy.out" | head -n 1)
if [[ -n $ADMIN ]] && command -v curl >/dev/null; then
    echo "strict proxy's decisions (from /metrics):"
    curl -fsS --max-time 5 "http://$ADMIN/metrics" | grep '^pkce_decisions_total' |
        grep -v ' 0$' | sed 's/^/  /' || true
    echo
fi
PASSED=$(grep -c '|PASS|' "$RESULTS" || true)
FAILED=$(grep -c '|FAIL|' "$RESULTS" || true)
SKIPPED=$(grep -c '|SKIP|' "$RESULTS" || true)
KNOWN=$(grep -c '|KNOWN|' "$RESULTS" || true)
if ((KNOWN > 0)); then
    echo "KNOWN: $KNOWN reproduced divergence(s) between the proxy and a real library (not failures):"
    grep '|KNOWN|' "$RESULTS" | cut -d'|' -f3,5 | sed 's/^/  /; s/|/: /'
fi
echo "took $((SECONDS - START)) s"
echo "interop: $PASSED passed, $FAILED failed, $SKIPPED skipped"

status=0
((FAILED == 0)) || status=1
((PASSED > 0)) || status=1
if ((${#DRIVER_FAIL[@]} > 0)); then
    log "drivers that exited non-zero: ${DRIVER_FAIL[*]}"
    status=1
fi
if ((SKIPPED > 0)) && [[ ${INTEROP_REQUIRE_ALL:-0} == 1 ]]; then
    log "INTEROP_REQUIRE_ALL=1 and $SKIPPED skipped"
    status=1
fi
exit "$status"
