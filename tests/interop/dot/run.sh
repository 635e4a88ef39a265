#!/usr/bin/env bash
# Interop test: a real Django OAuth Toolkit deployment (PKCE_REQUIRED=False, stock consent
# template, Django's LoginView) behind pkce-proxy, driven as a browser drives it.
#
#   tests/interop/dot/run.sh PROXY_BIN [--clean]
#
# PROXY_BIN is a built pkce-proxy binary (this script does not build it). Makes a venv
# (pip install -r requirements.txt), migrates a SQLite database in a temp dir, creates the user
# and the public client, starts DOT and the proxy on free ports of 127.0.0.1, runs browser.py,
# checks the proxy's log, prints RESULT lines and a last line `N passed, N failed`; exits
# non-zero on any failure. Every step has a time limit; everything started is stopped on exit.
#
# Environment:
#   DOT_INTEROP_VENV        venv directory (default tests/interop/.venv-dot)
#   DOT_INTEROP_PROXY_ARGS  extra flags for the proxy, e.g. "--mode report"
#   DOT_INTEROP_KEEP=1      keep the work directory (database, logs) after the run
#   PYTHON                  interpreter for the venv (default python3.11 if present, else python3)
# --clean removes the venv first.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${DOT_INTEROP_VENV:-$(cd "$HERE/.." && pwd)/.venv-dot}
if [[ -z ${PYTHON:-} ]]; then
    if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi
START=$SECONDS

log() { printf '[interop-dot %3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -ge 1 && $1 != --clean ]] || { echo "usage: $0 PROXY_BIN [--clean]" >&2; exit 2; }
PROXY_BIN=$(realpath "$1")
[[ -x $PROXY_BIN ]] || die "no executable pkce-proxy at $1"
[[ ${2:-} == --clean ]] && { log "--clean: removing $VENV"; rm -rf "$VENV"; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-interop-dot.XXXXXX")

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
    if [[ ${DOT_INTEROP_KEEP:-0} == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
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

# Starts a background server whose stdout says "listening on HOST:PORT"; waits (bounded) for
# that line and for the port to accept connections; sets ADDR. (Not in a command substitution:
# the pid must be recorded in this shell, for the trap.)
start_server() {
    local name=$1
    shift
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

# ------------------------------------------------------------------ install
REQ_HASH=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.requirements.sha256" 2>/dev/null) != "$REQ_HASH" ]]; then
    step 120 "creating venv $VENV" "$PYTHON" -m venv --clear "$VENV"
    step 600 "pip install -r dot/requirements.txt" "$VENV/bin/python" -m pip install \
        --quiet --disable-pip-version-check --no-input -r "$HERE/requirements.txt"
    echo "$REQ_HASH" >"$VENV/.requirements.sha256"
else
    log "venv up to date ($VENV)"
fi
PY=$VENV/bin/python

# ------------------------------------------------------------------ DOT
export DOT_INTEROP_DB=$WORK/db.sqlite3
export PYTHONDONTWRITEBYTECODE=1
step 120 "manage.py migrate (SQLite in $WORK)" "$PY" "$HERE/manage.py" migrate --no-input -v 0
step 60 "manage.py interop_setup (user alice, public client dot-public)" \
    "$PY" "$HERE/manage.py" interop_setup --username alice --password alice-password \
    --client-id dot-public --redirect-uri http://127.0.0.1:9/cb

start_server dot "$PY" "$HERE/serve.py" --port 0
DOT=$ADDR
log "Django OAuth Toolkit on $DOT"

export RUST_LOG=${RUST_LOG:-info}
read -r -a EXTRA <<<"${DOT_INTEROP_PROXY_ARGS:-}"
start_server proxy "$PROXY_BIN" --upstream "http://$DOT" --listen 127.0.0.1:0 \
    --authorize-path /o/authorize/ --token-path /o/token/ "${EXTRA[@]+"${EXTRA[@]}"}"
PROXY=$ADDR
log "pkce-proxy on $PROXY"

# ------------------------------------------------------------------ browser
RESULTS=$WORK/results.txt
log "browser.py"
rc=0
DOT_INTEROP_SECRETS_FILE=$WORK/secrets.txt timeout --kill-after=5 180 \
    "$PY" "$HERE/browser.py" --proxy "http://$PROXY" --dot "http://$DOT" --db "$DOT_INTEROP_DB" --dot-log "$WORK/dot.err" \
    --client-id dot-public --redirect-uri http://127.0.0.1:9/cb \
    --username alice --password alice-password >"$WORK/browser.stdout" 2>"$WORK/browser.err" || rc=$?
grep '^RESULT|' "$WORK/browser.stdout" >"$RESULTS" || true
if [[ $rc -ne 0 ]] && ! grep -q '|FAIL|' "$RESULTS"; then
    why="exit $rc"
    [[ $rc -eq 124 ]] && why="timed out after 180s"
    echo "RESULT|dot|browser.py ran to the end|FAIL|$why: $(tail -n 1 "$WORK/browser.err")" >>"$RESULTS"
fi

# ------------------------------------------------------------------ after-checks
for i in 0 1; do
    name=$([[ $i == 0 ]] && echo dot || echo proxy)
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "RESULT|dot|process: $name still running after the browser|PASS|" >>"$RESULTS"
    else
        echo "RESULT|dot|process: $name still running after the browser|FAIL|it exited" >>"$RESULTS"
    fi
done
if grep -qi 'panic' "$WORK/proxy.err"; then
    echo "RESULT|dot|logs: no panic in the proxy's log|FAIL|$(grep -i -m 1 panic "$WORK/proxy.err")" >>"$RESULTS"
else
    echo "RESULT|dot|logs: no panic in the proxy's log|PASS|" >>"$RESULTS"
fi
if [[ -s $WORK/secrets.txt ]]; then
    if leaked=$(grep -hoF -f "$WORK/secrets.txt" "$WORK/proxy.err" "$WORK/proxy.out" | head -n 3); then
        echo "RESULT|dot|logs: no code/verifier/token/state in the proxy's log|FAIL|leaked: $leaked" >>"$RESULTS"
    else
        echo "RESULT|dot|logs: no code/verifier/token/state in the proxy's log|PASS|$(wc -l <"$WORK/secrets.txt") values checked against $(wc -l <"$WORK/proxy.err") log lines" >>"$RESULTS"
    fi
else
    echo "RESULT|dot|logs: no code/verifier/token/state in the proxy's log|FAIL|browser.py recorded no values" >>"$RESULTS"
fi

# ------------------------------------------------------------------ report
cat "$RESULTS"
if [[ -s $WORK/browser.err ]]; then
    log "browser.py stderr (last lines):"
    tail -n 10 "$WORK/browser.err" >&2
fi
PASSED=$(grep -c '|PASS|' "$RESULTS" || true)
FAILED=$(grep -c '|FAIL|' "$RESULTS" || true)
log "took $((SECONDS - START)) s; DOT on $DOT, pkce-proxy on $PROXY"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0 && PASSED > 0))
