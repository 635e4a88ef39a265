#!/usr/bin/env bash
# Interop test: a real Rails 6.1 + Doorkeeper 5.5 deployment (Debian's packages only, served by
# puma) behind pkce-proxy, driven as a browser and as real client libraries drive it, plus the
# Rails / Rack 2.2 / puma parser differentials at the token endpoint.
#
#   tests/interop/doorkeeper/run.sh PROXY_BIN
#
# Two Doorkeeper deployments, each on its own SQLite database in a temp dir:
#   A  the PKCE columns were never migrated: Doorkeeper ignores code_challenge altogether;
#   B  they were (PKCE optional: 5.5 has no force_pkce): Doorkeeper verifies a challenge it
#      received itself, so the checks read its request log to tell the proxy's refusals apart.
# In front of each: pkce-proxy (strict), one with --other-route /oauth/token/info, and for A one
# with --exempt-client dk-conf. Runs browser.py and tricks.py against each, checks the proxies'
# logs, prints the RESULT lines and a last line `N passed, N failed`; exits non-zero on any
# failure. Every step has a time limit; everything started is stopped on exit. Nothing is built
# here: PROXY_BIN is used as is.
#
# Installs what is missing: (as root) `apt-get install ruby-doorkeeper ruby-rails ruby-sqlite3
# puma` (no gem from the network), and the venv of the other interop drivers
# (tests/interop/.venv from tests/interop/requirements.txt: Authlib, requests-oauthlib).
#
# Environment:
#   DK_INTEROP_VENV        venv directory (default tests/interop/.venv)
#   DK_INTEROP_PROXY_ARGS  extra flags for every proxy ("--mode report": the PROXY refusals FAIL)
#   DK_INTEROP_MODES       the deployments to run (default "A B")
#   DK_INTEROP_KEEP=1      keep the work directory (databases, logs)
#   PYTHON                 interpreter for the venv (default python3)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -ge 1 ]] || { echo "usage: $0 PROXY_BIN" >&2; exit 2; }
PROXY_BIN=$(realpath "$1")
VENV=${DK_INTEROP_VENV:-$(cd "$HERE/.." && pwd)/.venv}
PYTHON=${PYTHON:-python3}
MODES=${DK_INTEROP_MODES:-A B}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-interop-dk.XXXXXX")
START=$SECONDS

log() { printf '[interop-dk %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup
PIDS=()     # every process started, for the trap
STARTED=()  # NAME:PID of those that listened, for the after-checks
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for f in "$WORK"/*.err; do
            [[ -s $f ]] || continue
            log "---- last lines of $(basename "$f")"
            tail -n 10 "$f" >&2 || true
        done
    fi
    if [[ ${DK_INTEROP_KEEP:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# try_server NAME CMD...: starts CMD in the background; waits (up to 60 s) for "listening on
# HOST:PORT" on its stdout and for the port to accept connections. Sets ADDR and returns 0, or
# returns 1 with WHY set (the process exited, or did not listen in time).
try_server() {
    local name=$1
    shift
    : >"$WORK/$name.out"
    : >"$WORK/$name.err"
    "$@" >>"$WORK/$name.out" 2>>"$WORK/$name.err" </dev/null &
    local pid=$!
    PIDS+=("$pid")
    local addr="" deadline=$((SECONDS + 60))
    ADDR="" WHY=""
    while [[ -z $addr ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            WHY="exited before listening: $(tail -n 1 "$WORK/$name.err")"
            return 1
        fi
        ((SECONDS < deadline)) || { WHY="no 'listening on' line within 60 s"; return 1; }
        addr=$(sed -n 's/^listening on \(.*\)$/\1/p' "$WORK/$name.out" | head -n 1)
        [[ -n $addr ]] || sleep 0.1
    done
    until (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { WHY="exited"; return 1; }
        ((SECONDS < deadline)) || { WHY="$addr does not accept connections"; return 1; }
        sleep 0.1
    done
    ADDR=$addr
    STARTED+=("$name:$pid")
}
start_server() {
    local name=$1
    try_server "$@" || die "$name: $WHY"
}

# ------------------------------------------------------------------ install
[[ -x $PROXY_BIN ]] || die "no executable pkce-proxy at $1"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
RUBY_CHECK='require "rails"; require "doorkeeper"; require "sqlite3"; require "puma"'
if ! command -v ruby >/dev/null || ! ruby -e "$RUBY_CHECK" 2>/dev/null; then
    [[ $(id -u) == 0 ]] || die "needs Debian's ruby-doorkeeper ruby-rails ruby-sqlite3 puma (apt-get install, as root)"
    step 300 "apt-get update" apt-get update -qq
    step 900 "apt-get install ruby-doorkeeper ruby-rails ruby-sqlite3 puma" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq ruby-doorkeeper ruby-rails ruby-sqlite3 puma
    ruby -e "$RUBY_CHECK" || die "Rails, Doorkeeper, sqlite3 or puma still missing after apt-get"
fi
REQ=$HERE/../requirements.txt
REQ_HASH=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$REQ_HASH" ]]; then
    step 120 "creating venv $VENV" "$PYTHON" -m venv --clear "$VENV"
    step 600 "pip install -r tests/interop/requirements.txt" "$VENV/bin/python" -m pip install \
        --quiet --disable-pip-version-check --no-input -r "$REQ"
    echo "$REQ_HASH" >"$VENV/.requirements.sha256"
else
    log "venv up to date ($VENV)"
fi
PY=$VENV/bin/python
log "$(ruby -e 'require "rails"; require "doorkeeper"; require "puma/const"; require "rack"
  print "ruby #{RUBY_VERSION}, rails #{Rails.version}, doorkeeper #{Doorkeeper::VERSION::STRING}, puma #{Puma::Const::PUMA_VERSION}, rack #{Rack.release}"')"

# ------------------------------------------------------------------ per mode
export PYTHONDONTWRITEBYTECODE=1 RUST_LOG=${RUST_LOG:-info}
read -r -a EXTRA <<<"${DK_INTEROP_PROXY_ARGS:-}"
RESULTS=$WORK/results.txt
: >"$RESULTS"
PROXY_LOGS=()
APP=$HERE/dkapp

proxy() { # proxy NAME UPSTREAM [flags...]
    local name=$1 up=$2
    shift 2
    try_server "$name" "$PROXY_BIN" --upstream "http://$up" --listen 127.0.0.1:0 \
        --authorize-path /oauth/authorize --token-path /oauth/token "$@" "${EXTRA[@]+"${EXTRA[@]}"}"
}

for mode in $MODES; do
    suite=doorkeeper-$mode
    db=$WORK/$mode.sqlite3
    reqlog=$WORK/$mode-requests.jsonl
    : >"$reqlog"
    step 180 "mode $mode: migrations and seed (SQLite in $WORK)" \
        env DK_DB="$db" DK_LOG="$WORK/dk-$mode.setup.log" ruby "$APP/bin/setup.rb" --mode "$mode"
    start_server "dk-$mode" env DK_DB="$db" DK_MODE="$mode" DK_LOG="$WORK/dk-$mode.log" \
        DK_REQUEST_LOG="$reqlog" ruby "$APP/bin/serve.rb"
    DK=$ADDR
    log "mode $mode: $(head -n 1 "$WORK/dk-$mode.out") on $DK"

    proxy "proxy-$mode" "$DK" || die "proxy-$mode: $WHY"
    PROXY=$ADDR
    PROXY_LOGS+=("$WORK/proxy-$mode.err" "$WORK/proxy-$mode.out")
    args=(--mode "$mode" --dk "http://$DK" --proxy "http://$PROXY" --db "$db" --request-log "$reqlog")
    browser_args=()
    if proxy "proxy-$mode-other-route" "$DK" --other-route /oauth/token/info; then
        browser_args+=(--other-route-proxy "http://$ADDR")
        PROXY_LOGS+=("$WORK/proxy-$mode-other-route.err")
    else
        log "mode $mode: pkce-proxy --other-route /oauth/token/info: $WHY"
        browser_args+=(--other-route-error "pkce-proxy --other-route /oauth/token/info $WHY")
    fi
    if [[ $mode == A ]]; then
        proxy "proxy-$mode-exempt" "$DK" --exempt-client dk-conf || die "proxy-$mode-exempt: $WHY"
        browser_args+=(--exempt-proxy "http://$ADDR")
        PROXY_LOGS+=("$WORK/proxy-$mode-exempt.err")
    fi
    log "mode $mode: pkce-proxy on $PROXY"

    for driver in browser tricks; do
        log "mode $mode: $driver.py"
        rc=0
        extra=()
        if [[ $driver == browser ]]; then extra=("${browser_args[@]+"${browser_args[@]}"}"); fi
        DK_SECRETS_FILE=$WORK/secrets.txt timeout --kill-after=5 300 "$PY" "$HERE/$driver.py" "${args[@]}" \
            "${extra[@]+"${extra[@]}"}" \
            >"$WORK/$driver-$mode.stdout" 2>"$WORK/$driver-$mode.stderr" || rc=$?
        grep '^RESULT|' "$WORK/$driver-$mode.stdout" >>"$RESULTS" || true
        if [[ $driver == tricks && $rc -ne 0 ]] || [[ $rc -ne 0 && $rc -ne 1 ]]; then
            why="exit $rc"
            [[ $rc -eq 124 ]] && why="timed out after 300s"
            echo "RESULT|$suite|$driver.py ran to the end|FAIL|$why: $(tail -n 1 "$WORK/$driver-$mode.stderr")" >>"$RESULTS"
        fi
    done
done

# ------------------------------------------------------------------ after-checks
for entry in "${STARTED[@]}"; do
    name=${entry%%:*} pid=${entry##*:}
    if kill -0 "$pid" 2>/dev/null; then
        echo "RESULT|doorkeeper|process: $name still running after the drivers|PASS|" >>"$RESULTS"
    else
        echo "RESULT|doorkeeper|process: $name still running after the drivers|FAIL|it exited: $(tail -n 1 "$WORK/$name.err")" >>"$RESULTS"
    fi
done
for f in "${PROXY_LOGS[@]}"; do
    [[ $f == *.err ]] || continue
    n=$(basename "$f" .err)
    if grep -qi 'panic' "$f"; then
        echo "RESULT|doorkeeper|logs: no panic in $n's log|FAIL|$(grep -i -m 1 panic "$f")" >>"$RESULTS"
    else
        echo "RESULT|doorkeeper|logs: no panic in $n's log|PASS|" >>"$RESULTS"
    fi
done
if [[ -s $WORK/secrets.txt ]]; then
    if leaked=$(grep -hoF -f "$WORK/secrets.txt" "${PROXY_LOGS[@]}" | head -n 3); then
        echo "RESULT|doorkeeper|logs: no code/verifier/token/state/handle in the proxies' logs|FAIL|leaked: $leaked" >>"$RESULTS"
    else
        echo "RESULT|doorkeeper|logs: no code/verifier/token/state/handle in the proxies' logs|PASS|$(sort -u "$WORK/secrets.txt" | wc -l) values checked against $(cat "${PROXY_LOGS[@]}" | wc -l) log lines" >>"$RESULTS"
    fi
else
    echo "RESULT|doorkeeper|logs: no code/verifier/token/state/handle in the proxies' logs|FAIL|the drivers recorded no values" >>"$RESULTS"
fi

# ------------------------------------------------------------------ report
cat "$RESULTS"
PASSED=$(grep -c '|PASS|' "$RESULTS" || true)
FAILED=$(grep -c '|FAIL|' "$RESULTS" || true)
log "took $((SECONDS - START)) s"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0 && PASSED > 0))
