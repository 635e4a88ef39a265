#!/usr/bin/env bash
# Parser-differential tricks against three real legacy OAuth stacks (Express 4 + qs, PHP's
# built-in server with $_REQUEST, Flask on gunicorn 21.2.0), each alone and behind pkce-proxy.
#
#   tests/interop/stacks/run.sh PROXY_BIN
#
# Installs what is missing (php-cli with apt-get when root, `npm ci` in express/, a venv at
# stacks/.venv from requirements.txt), starts each stack and a pkce-proxy in front of it on
# free 127.0.0.1 ports, runs tricks.py, prints the RESULT lines, a table and "N passed,
# N failed"; exits non-zero on any failure. Nothing is built here: PROXY_BIN is used as is.
#
# Environment:
#   STACKS_VENV        venv directory (default tests/interop/stacks/.venv)
#   STACKS_PROXY_ARGS  extra flags for every proxy ("--mode report": every PROXY check FAILs)
#   STACKS_KEEP=1      keep the work directory (logs)
#   PYTHON             interpreter for the venv (default python3)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROXY_BIN=${1:?usage: run.sh PROXY_BIN}
PROXY_BIN=$(cd "$(dirname "$PROXY_BIN")" && pwd)/$(basename "$PROXY_BIN")
VENV=${STACKS_VENV:-$HERE/.venv}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-stacks.XXXXXX")
START=$SECONDS

log() { printf '[stacks %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
HARNESS_ERROR=0
die() { log "ERROR: $*"; HARNESS_ERROR=1; exit 1; }

PIDS=()
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $HARNESS_ERROR == 1 ]]; then
        for f in "$WORK"/*.err; do
            [[ -s $f ]] || continue
            log "---- last lines of $(basename "$f")"
            tail -n 10 "$f" >&2 || true
        done
    fi
    if [[ ${STACKS_KEEP:-0} == 1 ]]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    local limit=$1 name=$2
    shift 2
    log "$name"
    timeout --kill-after=10 "$limit" "$@" || die "$name: failed or timed out (exit $?)"
}

# start_server NAME SED_EXPR CMD...: starts CMD in the background, waits up to 30 s for SED_EXPR to print HOST:PORT from its
# output and for that port to accept connections; sets ADDR.
start_server() {
    local name=$1 expr=$2
    shift 2
    : >"$WORK/$name.out"
    : >"$WORK/$name.err"
    "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" </dev/null &
    local pid=$!
    PIDS+=("$pid")
    local addr="" deadline=$((SECONDS + 30))
    while [[ -z $addr ]]; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before listening"
        ((SECONDS < deadline)) || die "$name: not listening within 30 s"
        addr=$(sed -n "$expr" "$WORK/$name.out" "$WORK/$name.err" | head -n 1)
        [[ -n $addr ]] || sleep 0.1
    done
    until (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$name exited"
        ((SECONDS < deadline)) || die "$name: $addr does not accept connections"
        sleep 0.1
    done
    ADDR=$addr
}

# ------------------------------------------------------------------ install
[[ -x $PROXY_BIN ]] || die "no executable at $PROXY_BIN"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
if ! command -v php >/dev/null; then
    [[ $(id -u) == 0 ]] || die "php not found (apt-get install php-cli)"
    step 300 "apt-get update" apt-get update -qq
    step 600 "apt-get install php-cli" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends php-cli
fi
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed"
if [[ ! -d $HERE/express/node_modules/express ]]; then
    step 300 "npm ci (express)" bash -c \
        'cd "$1" && npm ci --no-audit --no-fund --loglevel=error' _ "$HERE/express"
fi
REQ_HASH=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$REQ_HASH" ]]; then
    step 120 "creating venv $VENV" "$PYTHON" -m venv --clear "$VENV"
    step 600 "pip install -r requirements.txt" "$VENV/bin/python" -m pip install \
        --quiet --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
    echo "$REQ_HASH" >"$VENV/.requirements.sha256"
fi

# ------------------------------------------------------------------ stacks, proxies, tricks
RESULTS=$WORK/results.txt
: >"$RESULTS"
read -r -a EXTRA <<<"${STACKS_PROXY_ARGS:-}"
LISTENING='s/^listening on \(.*\)$/\1/p'

# run_suite SUITE STACK_ADDR [proxy flags...]
run_suite() {
    local suite=$1 stack=$2
    shift 2
    start_server "proxy-$suite" "$LISTENING" "$PROXY_BIN" --upstream "http://$stack" \
        --listen 127.0.0.1:0 "$@" "${EXTRA[@]+"${EXTRA[@]}"}"
    log "$suite on $stack, pkce-proxy on $ADDR"
    local rc=0
    timeout --kill-after=5 180 "$VENV/bin/python" "$HERE/tricks.py" --suite "$suite" \
        --stack "http://$stack" --proxy "http://$ADDR" >"$WORK/$suite.stdout" \
        2>"$WORK/tricks-$suite.err" || rc=$?
    grep '^RESULT|' "$WORK/$suite.stdout" >>"$RESULTS" || true
    if [[ $rc -ne 0 ]]; then
        echo "RESULT|stack-$suite|tricks.py ran to the end|FAIL|exit $rc" >>"$RESULTS"
        tail -n 20 "$WORK/tricks-$suite.err" >&2 || true
    fi
}

start_server express "$LISTENING" node "$HERE/express/server.js" 0
run_suite express "$ADDR"

mkdir -p "$WORK/php-state"
start_server php 's/.*Development Server (http:\/\/\(.*\)) started.*/\1/p' \
    env STACK_STATE="$WORK/php-state" php -n -S 127.0.0.1:0 -t "$HERE/php"
run_suite php "$ADDR" --authorize-path /authorize.php --token-path /token.php

start_server gunicorn 's/.*Listening at: http:\/\/\([0-9.:]*\) .*/\1/p' \
    "$VENV/bin/gunicorn" --bind 127.0.0.1:0 --workers 1 --chdir "$HERE/gunicorn" app:app
run_suite gunicorn "$ADDR"

# ------------------------------------------------------------------ report
cat "$RESULTS"
PASSED=$(grep -c '|PASS|' "$RESULTS" || true)
FAILED=$(grep -c '|FAIL|' "$RESULTS" || true)
log "took $((SECONDS - START)) s"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0 && PASSED > 0))
