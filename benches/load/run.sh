#!/usr/bin/env bash
# Load test: full PKCE flows/s and pass-through requests/s through
#   pkce-proxy  ->  upstream      (the thing measured)
#   nginx       ->  upstream      (nginx as a plain proxy_pass reverse proxy: the baseline)
#   pkce-proxy-off -> upstream   (pkce-proxy with its OAuth paths moved away: everything is
#                                  forwarded unchecked; its proxying alone, without the layer)
#   hyper-floor ->  upstream      (hyper and tokio alone, benches/tools/hyper_floor.rs: the floor
#                                  under pkce-proxy's own stack)
#   upstream                      (straight to the upstream: the limit)
# on this machine, under the same wrk load, in alternating rounds. See README.md here.
# With LOAD_TLS=1, wrk speaks HTTPS to pkce-proxy and nginx (the same throwaway certificate;
# cleartext to the upstream behind them), and only those two targets run: the scenarios are
# then labelled flow-https and passthrough-https.
#
# Knobs (environment): ROUNDS=3 DURATION=10s CONNECTIONS=64 THREADS=2, and the LOAD_*
# variables listed in README.md. Nothing is installed; nginx, wrk, python3 and cargo (and
# openssl with LOAD_TLS=1) must be there already.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${LOAD_WARMUP:-2s}                 # per target, before round 1, not recorded; 0 to skip
PAUSE=${LOAD_PAUSE:-1}                    # seconds between two wrk runs
WRK_TIMEOUT=${LOAD_WRK_TIMEOUT:-5s}
TLS=${LOAD_TLS:-0}                        # 1: HTTPS between wrk and the targets
if [ "$TLS" = 1 ]; then
    TARGETS=${LOAD_TARGETS:-"pkce-proxy nginx"}
else
    TARGETS=${LOAD_TARGETS:-"pkce-proxy nginx pkce-proxy-off hyper-floor upstream"}
fi
SCENARIOS=${LOAD_SCENARIOS:-"flow passthrough"}
NPAIRS=${LOAD_PAIRS_COUNT:-4096}
BASE_PORT=${LOAD_BASE_PORT:-18180}
CLIENT_ID=${LOAD_CLIENT_ID:-load-client}
REDIRECT_URI=${LOAD_REDIRECT_URI:-https://client.example/callback}
STATIC_PATH=/static/x
MAX_PENDING=${LOAD_MAX_PENDING:-10000000}
PROXY_LOG=${LOAD_PROXY_LOG:-warn}
PROXY_ARGS=${LOAD_PROXY_ARGS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-load}

UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
PROXY_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
FLOOR_PORT=$((BASE_PORT + 5))
OFF_PORT=$((BASE_PORT + 6))
OFF_ADMIN_PORT=$((BASE_PORT + 7))

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

# --- LOAD_TLS: which targets and scenarios make sense over HTTPS ----------------------------
case $TLS in 0 | 1) ;; *) die "LOAD_TLS is 1 (HTTPS) or 0 (cleartext, the default), not '$TLS'" ;; esac
# The name a scenario's results go by: flow.lua over HTTPS is "flow-https".
label_of() { if [ "$TLS" = 1 ]; then echo "$1-https"; else echo "$1"; fi; }
scenarios=()
for s in $SCENARIOS; do
    case $s in
        *-https)
            [ "$TLS" = 1 ] || die "scenario $s is the HTTPS variant of ${s%-https}: set LOAD_TLS=1"
            s=${s%-https} ;;
    esac
    scenarios+=("$s")
done
SCENARIOS=${scenarios[*]}
if [ "$TLS" = 1 ]; then
    for t in $TARGETS; do
        case $t in
            pkce-proxy-off) die "LOAD_TLS=1 runs pkce-proxy and nginx only: pkce-proxy-off is left out over HTTPS (the comparison is pkce-proxy's TLS listener against nginx's); set LOAD_TARGETS=\"pkce-proxy nginx\"" ;;
            hyper-floor) die "LOAD_TLS=1 runs pkce-proxy and nginx only: hyper-floor has no TLS listener; set LOAD_TARGETS=\"pkce-proxy nginx\"" ;;
            upstream) die "LOAD_TLS=1 runs pkce-proxy and nginx only: the upstream stays cleartext (what is compared is the client side's TLS); set LOAD_TARGETS=\"pkce-proxy nginx\"" ;;
        esac
    done
fi
# `-p pkce-proxy` where the proxy is its own package (a tree at or after the workspace split).
package_of() { if [ -f "$1/pkce-proxy/Cargo.toml" ]; then echo "-p pkce-proxy"; fi; }

# --- tools -------------------------------------------------------------------------------
NGINX=${LOAD_NGINX:-$(command -v nginx || true)}
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
missing=()
[ -n "$NGINX" ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    say "run.sh: missing: ${missing[*]}"
    say "install them with:  apt-get install -y nginx wrk"
    exit 1
fi
command -v python3 >/dev/null || die "python3 is needed (pair generation, preflight, summary)"
if [ "$TLS" = 1 ]; then
    command -v openssl >/dev/null || die "LOAD_TLS=1 needs openssl (the throwaway certificates); apt-get install -y openssl"
fi
if [ -z "${LOAD_PROXY_BIN:-}" ]; then
    command -v cargo >/dev/null || die "cargo is needed to build pkce-proxy (or set LOAD_PROXY_BIN)"
fi

# --- the work directory, and cleanup of everything started ---------------------------------
WORKDIR=${LOAD_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/pkce-load.XXXXXX")}
mkdir -p "$WORKDIR/raw"
PIDS=()
WRK_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$WRK_PID" ]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    say "run.sh: stopped everything it started; logs and raw output in $WORKDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port name pid
    for _ in $(seq 100); do
        port_open "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at startup; see $WORKDIR"
        sleep 0.1
    done
    die "$2 did not listen on 127.0.0.1:$1 within 10 s; see $WORKDIR"
}
for p in "$UPSTREAM_PORT" "$NGINX_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$FLOOR_PORT" "$OFF_PORT" "$OFF_ADMIN_PORT"; do
    if port_open "$p"; then die "127.0.0.1:$p is in use; pick other ports with LOAD_BASE_PORT"; fi
done

# --- build ---------------------------------------------------------------------------------
# The working tree by default; with LOAD_BUILD_REF, a clean export of that commit (git archive:
# nothing in the repository changes), built in a target directory of its own.
# The target hyper-floor is benches/tools/hyper_floor.rs, built beside pkce-proxy (from the working
# tree when the exported commit predates it), or LOAD_FLOOR_BIN.
wants() { [[ " $TARGETS " == *" $1 "* ]]; }
FLOOR_BIN=${LOAD_FLOOR_BIN:-}
build_floor() { # dir target_dir
    (cd "$1" && CARGO_TARGET_DIR=$2 cargo build --release --example hyper_floor) \
        >"$WORKDIR/build-floor.log" 2>&1 || { tail -20 "$WORKDIR/build-floor.log" >&2; die "build of hyper_floor failed"; }
    FLOOR_BIN=$2/release/examples/hyper_floor
}
if [ -n "${LOAD_PROXY_BIN:-}" ]; then
    PROXY_BIN=$LOAD_PROXY_BIN
    SOURCE="given binary $PROXY_BIN"
    if wants hyper-floor && [ -z "$FLOOR_BIN" ]; then
        build_floor "$ROOT" "$CARGO_TARGET_DIR"
    fi
elif [ -n "${LOAD_BUILD_REF:-}" ]; then
    commit=$(git -C "$ROOT" rev-parse --verify "${LOAD_BUILD_REF}^{commit}") \
        || die "LOAD_BUILD_REF=$LOAD_BUILD_REF is not a commit"
    mkdir -p "$WORKDIR/src"
    git -C "$ROOT" archive "$commit" | tar -x -C "$WORKDIR/src"
    say "run.sh: building pkce-proxy at ${commit:0:7} (release, clean export, CARGO_TARGET_DIR=$CARGO_TARGET_DIR/ref)"
    (cd "$WORKDIR/src" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/ref cargo build --release --locked $(package_of "$WORKDIR/src") --bin pkce-proxy) \
        >"$WORKDIR/build.log" 2>&1 || { tail -20 "$WORKDIR/build.log" >&2; die "build failed"; }
    PROXY_BIN=$CARGO_TARGET_DIR/ref/release/pkce-proxy
    SOURCE="commit ${commit:0:7}, clean export (LOAD_BUILD_REF=$LOAD_BUILD_REF)"
    if wants hyper-floor && [ -z "$FLOOR_BIN" ]; then
        if [ -f "$WORKDIR/src/benches/tools/hyper_floor.rs" ]; then
            build_floor "$WORKDIR/src" "$CARGO_TARGET_DIR/ref"
        else
            build_floor "$ROOT" "$CARGO_TARGET_DIR"
        fi
    fi
else
    say "run.sh: building pkce-proxy from the working tree (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p pkce-proxy --bin pkce-proxy) >"$WORKDIR/build.log" 2>&1 \
        || { tail -20 "$WORKDIR/build.log" >&2; die "build failed"; }
    PROXY_BIN=$CARGO_TARGET_DIR/release/pkce-proxy
    if wants hyper-floor && [ -z "$FLOOR_BIN" ]; then
        build_floor "$ROOT" "$CARGO_TARGET_DIR"
    fi
    SOURCE="working tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if ! git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then
        SOURCE+=" with uncommitted changes in src/Cargo.* (LOAD_BUILD_REF=HEAD measures the commit alone)"
    fi
fi
[ -x "$PROXY_BIN" ] || die "no pkce-proxy binary at $PROXY_BIN"

# --- configuration -------------------------------------------------------------------------
python3 "$HERE/gen_pairs.py" "$NPAIRS" "$WORKDIR/pairs.lua"
ENCODED_REDIRECT=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="-._~"))' "$REDIRECT_URI")

# With LOAD_TLS=1: a throwaway CA and a leaf for 127.0.0.1 (SAN IP:127.0.0.1), both ECDSA
# P-256, in $WORKDIR/tls. The front nginx and pkce-proxy serve the same files (the leaf alone
# as the chain); the preflight verifies them with the CA; wrk verifies nothing.
TLS_DIR=$WORKDIR/tls
LISTEN_SSL=
TLS_CONFIG=
PROXY_TLS_ARGS=()
PREFLIGHT_TLS_ARGS=()
make_certificates() { # dir
    local d=$1
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key"
    openssl req -x509 -new -key "$d/ca.key" -sha256 -days 7 \
        -subj "/CN=pkce-proxy load test CA (throwaway)" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$d/ca.pem"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/key.pem"
    openssl req -new -key "$d/key.pem" -subj "/CN=127.0.0.1" -out "$d/cert.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$d/cert.ext"
    openssl x509 -req -in "$d/cert.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -set_serial 2 \
        -sha256 -days 7 -extfile "$d/cert.ext" -out "$d/cert.pem"
    openssl verify -CAfile "$d/ca.pem" "$d/cert.pem"
}
if [ "$TLS" = 1 ]; then
    mkdir -p "$TLS_DIR"
    make_certificates "$TLS_DIR" >"$TLS_DIR/openssl.log" 2>&1 \
        || { cat "$TLS_DIR/openssl.log" >&2; die "making the throwaway certificates failed"; }
    LISTEN_SSL=" ssl"
    # Session cache and tickets stay at nginx's defaults (ssl_session_cache none,
    # ssl_session_tickets on); ciphers too (ssl_ciphers HIGH:!aNULL:!MD5, the client's order).
    TLS_CONFIG="
        ssl_certificate $TLS_DIR/cert.pem;
        ssl_certificate_key $TLS_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"
    PROXY_TLS_ARGS=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
    PREFLIGHT_TLS_ARGS=(--cafile "$TLS_DIR/ca.pem" --tls-report "$TLS_DIR/negotiated.txt")
fi

render() { # template out KEY=VALUE...
    python3 - "$@" <<'EOF'
import sys
template, out, *pairs = sys.argv[1:]
text = open(template, encoding="utf-8").read()
for pair in pairs:
    key, value = pair.split("=", 1)
    text = text.replace("@" + key + "@", value)
if "@" in "".join(l for l in text.splitlines() if not l.lstrip().startswith("#")):
    sys.exit(f"render: unreplaced placeholder left in {out}")
open(out, "w", encoding="utf-8").write(text)
EOF
}
for name in upstream front; do mkdir -p "$WORKDIR/$name/tmp"; done
render "$HERE/upstream.nginx.conf.in" "$WORKDIR/upstream/nginx.conf" \
    DIR="$WORKDIR/upstream" PORT="$UPSTREAM_PORT" \
    REDIRECT_URI="$REDIRECT_URI" REDIRECT_URI_ENCODED="$ENCODED_REDIRECT"
render "$HERE/front.nginx.conf.in" "$WORKDIR/front/nginx.conf" \
    DIR="$WORKDIR/front" PORT="$NGINX_PORT" UPSTREAM_PORT="$UPSTREAM_PORT" \
    KEEPALIVE="$CONNECTIONS" LISTEN_SSL="$LISTEN_SSL" TLS_CONFIG="$TLS_CONFIG"

# --- start ---------------------------------------------------------------------------------
start_nginx() { # name
    local dir=$WORKDIR/$1
    "$NGINX" -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" \
        || die "nginx -t failed for $dir/nginx.conf"
    "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
    PIDS+=($!)
}
start_nginx upstream
UPSTREAM_PID=${PIDS[-1]}
wait_port "$UPSTREAM_PORT" "upstream nginx" "$UPSTREAM_PID"
start_nginx front
FRONT_PID=${PIDS[-1]}
wait_port "$NGINX_PORT" "front nginx" "$FRONT_PID"

# The proxy reads PKCE_PROXY_* from its environment: start it with none but ours.
unset_env=()
while IFS='=' read -r name _; do
    case $name in PKCE_PROXY_*) unset_env+=(-u "$name") ;; esac
done < <(env)
# Starts pkce-proxy as target NAME on PORT (its admin listener on ADMIN), with EXTRA flags and
# LOAD_PROXY_ARGS; sets STARTED_CMD and STARTED_PID.
start_proxy() { # name port admin [extra flag...]
    local name=$1 port=$2 admin=$3
    shift 3
    STARTED_CMD=("$PROXY_BIN" --upstream "http://127.0.0.1:$UPSTREAM_PORT"
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin"
        --max-pending "$MAX_PENDING" --shutdown-grace 2s "$@"
        # The token endpoint forwards only the headers it knows: name the flow's echo header.
        --token-forward-header X-Load-Flow)
    # shellcheck disable=SC2206  # LOAD_PROXY_ARGS is split on purpose
    STARTED_CMD+=($PROXY_ARGS)
    env "${unset_env[@]}" RUST_LOG="$PROXY_LOG" "${STARTED_CMD[@]}" \
        >"$WORKDIR/$name.out" 2>"$WORKDIR/$name.log" &
    PIDS+=($!)
    STARTED_PID=${PIDS[-1]}
    wait_port "$port" "$name" "$STARTED_PID"
}
start_proxy pkce-proxy "$PROXY_PORT" "$ADMIN_PORT" "${PROXY_TLS_ARGS[@]}"
PROXY_PID=$STARTED_PID
PROXY_CMD=("${STARTED_CMD[@]}")
# The same binary and options, with the authorization, token and PAR paths moved where no
# request goes: every request takes the pass-through path.
OFF_PID=
if wants pkce-proxy-off; then
    start_proxy pkce-proxy-off "$OFF_PORT" "$OFF_ADMIN_PORT" \
        --authorize-path /off/authorize --token-path /off/token --par-path /off/par
    OFF_PID=$STARTED_PID
    OFF_CMD=("${STARTED_CMD[@]}")
fi
FLOOR_PID=
if wants hyper-floor; then
    [ -x "$FLOOR_BIN" ] || die "no hyper_floor binary at $FLOOR_BIN"
    "$FLOOR_BIN" --listen "127.0.0.1:$FLOOR_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" \
        >"$WORKDIR/hyper-floor.log" 2>&1 &
    PIDS+=($!)
    FLOOR_PID=${PIDS[-1]}
    wait_port "$FLOOR_PORT" "hyper-floor" "$FLOOR_PID"
fi

port_of() {
    case $1 in
        pkce-proxy) echo "$PROXY_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        pkce-proxy-off) echo "$OFF_PORT" ;;
        hyper-floor) echo "$FLOOR_PORT" ;;
        upstream) echo "$UPSTREAM_PORT" ;;
        *) die "unknown target $1 (pkce-proxy, nginx, pkce-proxy-off, hyper-floor, upstream)" ;;
    esac
}

# --- preflight: real flows, and PKCE really enforced by the proxy alone ---------------------
preflight=()
for t in $TARGETS; do
    if [ "$t" = pkce-proxy ]; then
        preflight+=(--target "$t=127.0.0.1:$(port_of "$t"):enforces")
    else
        preflight+=(--target "$t=127.0.0.1:$(port_of "$t")")
    fi
done
python3 "$HERE/preflight.py" --pairs "$WORKDIR/pairs.lua" --client-id "$CLIENT_ID" \
    --redirect-uri "$REDIRECT_URI" --static-path "$STATIC_PATH" "${preflight[@]}" "${PREFLIGHT_TLS_ARGS[@]}"

metrics() { # out: the proxy's /metrics
    python3 - "$ADMIN_PORT" >"$1" <<'EOF' || true
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode())
EOF
}
# The preflight's own refusals (a wrong verifier, a missing challenge) are expected: only
# what the load adds after this point counts.
metrics "$WORKDIR/metrics-preflight.txt"
LOG_LINES_PREFLIGHT=$(wc -l <"$WORKDIR/pkce-proxy.log")

# --- load ----------------------------------------------------------------------------------
export LOAD_PAIRS=$WORKDIR/pairs.lua LOAD_CLIENT_ID=$CLIENT_ID LOAD_REDIRECT_URI=$REDIRECT_URI

# CPU time used so far by a process and its children that are alive (nginx's workers), in
# clock ticks: "user system". What the target itself spends, whatever else runs on the
# machine; the split shows whether a difference is the program's own work or the kernel's.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid
    local pids
    # No children is not an error (ps exits 1 then).
    pids="$1 $( (ps -o pid= --ppid "$1" 2>/dev/null || true) | tr '\n' ' ')"
    # shellcheck disable=SC2086
    for p in $pids; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null; done \
        | awk '{ u += $12; s += $13 } END { print u + 0, s + 0 }'
}
pid_of() {
    case $1 in
        pkce-proxy) echo "$PROXY_PID" ;;
        nginx) echo "$FRONT_PID" ;;
        pkce-proxy-off) echo "$OFF_PID" ;;
        hyper-floor) echo "$FLOOR_PID" ;;
        upstream) echo "$UPSTREAM_PID" ;;
    esac
}

run_wrk() { # out target scenario duration
    local out=$1 target=$2 scenario=$3 duration=$4 url pid user0 sys0 user1 sys1 ticks done_ops label scheme=http
    label=$(label_of "$scenario")
    if [ "$TLS" = 1 ]; then scheme=https; fi
    url=$scheme://127.0.0.1:$(port_of "$target")
    if [ "$scenario" = passthrough ]; then url+=$STATIC_PATH; else url+=/; fi
    {
        echo "# $(date -Is) target=$target scenario=$label loadavg: $(cat /proc/loadavg)"
        echo "# wrk -t$THREADS -c$CONNECTIONS -d$duration --timeout $WRK_TIMEOUT -s $HERE/$scenario.lua $url"
    } >"$out"
    pid=$(pid_of "$target")
    read -r user0 sys0 <<<"$(cpu_ticks "$pid")"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --timeout "$WRK_TIMEOUT" \
        -s "$HERE/$scenario.lua" "$url" >>"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=; cat "$out" >&2; die "wrk failed ($target, $scenario)"; }
    WRK_PID=
    read -r user1 sys1 <<<"$(cpu_ticks "$pid")"
    grep -q '^RESULT ' "$out" || { cat "$out" >&2; die "no RESULT line from wrk ($target, $scenario)"; }
    # The target's own CPU per completed flow (or served request), in microseconds.
    done_ops=$(sed -n 's/^RESULT .* completed=\([0-9]*\).*/\1/p' "$out")
    ticks=$(((user1 - user0) + (sys1 - sys0)))
    awk -v t="$ticks" -v u="$((user1 - user0))" -v hz="$CLK_TCK" -v n="$done_ops" \
        'BEGIN { printf "CPU of the target itself: %.2f s (%.2f s user), %.1f us per op\n", t / hz, u / hz, (n > 0 ? t / hz * 1e6 / n : 0) }' >>"$out"
    sed -i "s/^RESULT .*/& cpu_ticks=$ticks cpu_user_ticks=$((user1 - user0)) clk_tck=$CLK_TCK/" "$out"
    if [ "$label" != "$scenario" ]; then sed -i "s/^RESULT scenario=$scenario /RESULT scenario=$label /" "$out"; fi
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

LOAD_START=$(cat /proc/loadavg)
if [ "$WARMUP" != 0 ]; then
    for t in $TARGETS; do
        for s in $SCENARIOS; do
            label=$(label_of "$s")
            out=$WORKDIR/raw/warmup-$label-$t.txt
            run_wrk "$out" "$t" "$s" "$WARMUP"
            line=$(grep '^RESULT ' "$out")
            say "warm-up  $label $t: $(field rate "$line")/s, refused/unmatched $(field refused "$line")"
            sleep "$PAUSE"
        done
    done
fi

RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
read -r -a targets <<<"$TARGETS"
n=${#targets[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $SCENARIOS; do
        label=$(label_of "$s")
        # Rotate the order every round, so no target always runs first (or after another).
        for ((i = 0; i < n; i++)); do
            t=${targets[$(((i + r - 1) % n))]}
            out=$WORKDIR/raw/round$r-$label-$t.txt
            run_wrk "$out" "$t" "$s" "$DURATION"
            line=$(grep '^RESULT ' "$out")
            printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$label" "$line" >>"$RESULTS"
            say "round $r/$ROUNDS  $label $t: $(field rate "$line")/s, p50 $(field p50_us "$line") µs," \
                "p99 $(field p99_us "$line") µs, refused/unmatched $(field refused "$line")," \
                "socket errors $(field socket_errors "$line"), target CPU $(field cpu_ticks "$line") ticks"
            sleep "$PAUSE"
        done
    done
done
LOAD_END=$(cat /proc/loadavg)

# --- after: the proxy's own view ----------------------------------------------------------
metrics "$WORKDIR/metrics.txt"
PROXY_RSS=$(sed -n 's/^VmRSS:[[:space:]]*//p' "/proc/$PROXY_PID/status" 2>/dev/null || echo "?")
# Counters that grew during the load: refusals (or report-mode findings) and errors.
PROXY_PROBLEMS=$(python3 - "$WORKDIR/metrics-preflight.txt" "$WORKDIR/metrics.txt" <<'EOF'
import re, sys
PATTERN = re.compile(r'^((?:pkce_decisions_total\{outcome="(?:refused|reported)"'
                     r'|pkce_proxy_upstream_errors_total|pkce_proxy_body_timeouts_total)\S*) (\d+)$')
def read(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        m = PATTERN.match(line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
before, after = read(sys.argv[1]), read(sys.argv[2])
for key, value in sorted(after.items()):
    if value > before.get(key, 0):
        print(f"{key} +{value - before.get(key, 0)}")
EOF
)
PROXY_DECISIONS=$(grep -E '^pkce_decisions_total' "$WORKDIR/metrics.txt" || true)
PROXY_LOG_LINES=$(($(wc -l <"$WORKDIR/pkce-proxy.log") - LOG_LINES_PREFLIGHT))

# --- report --------------------------------------------------------------------------------
REPORT=$WORKDIR/results.md
{
    if [ "$TLS" = 1 ]; then
        echo "## pkce-proxy load test over HTTPS, LOAD_TLS=1 ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    else
        echo "## pkce-proxy load test ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    fi
    echo
    echo "- pkce-proxy built from: $SOURCE"
    echo "- machine: nproc $(nproc), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "- load average (1/5/15 min): at start $(cut -d' ' -f1-3 <<<"$LOAD_START"), at end $(cut -d' ' -f1-3 <<<"$LOAD_END")"
    echo "- $("$NGINX" -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    echo "- load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, targets rotated each round, warm-up $WARMUP per target"
    if [ "$TLS" = 1 ]; then
        echo "- **HTTPS** between wrk and the targets (https:// URLs; scenarios named *-https), cleartext HTTP/1.1 from them to"
        echo "  the upstream. Both serve the same certificate: an ECDSA P-256 leaf for IP 127.0.0.1 from a throwaway CA"
        echo "  ($TLS_DIR). wrk keeps its $CONNECTIONS connections alive: one handshake per connection per run, so this is"
        echo "  mostly the cost of TLS records, not of handshakes. wrk offers no ALPN: HTTP/1.1 over TLS on both."
        echo "- front nginx: ssl_protocols TLSv1.2 TLSv1.3, session cache and tickets at nginx's defaults"
        echo "  (ssl_session_cache none, ssl_session_tickets on), ssl_ciphers at its default; pkce-proxy: --tls-cert/--tls-key"
        echo "  (rustls with ring: TLS 1.2 and 1.3, ALPN h2 and http/1.1, rustls' default session resumption)"
        echo "- negotiated, as the preflight's client saw it (Python's ssl on $(python3 -c 'import ssl; print(ssl.OPENSSL_VERSION)'), no ALPN, as wrk):"
        sed 's/^/  - /' "$TLS_DIR/negotiated.txt"
    fi
    echo "- pkce-proxy: RUST_LOG=$PROXY_LOG ${PROXY_CMD[*]}"
    if wants pkce-proxy-off; then echo "- pkce-proxy-off: ${OFF_CMD[*]} (no request is checked)"; fi
    if wants hyper-floor; then echo "- hyper-floor: $FLOOR_BIN (benches/tools/hyper_floor.rs: hyper and tokio alone, no PKCE)"; fi
    echo "- pkce-proxy after the run: RSS $PROXY_RSS; $PROXY_LOG_LINES log lines (RUST_LOG=$PROXY_LOG) during the load"
    echo
    python3 "$HERE/summarize.py" "$RESULTS"
    echo
    echo "$(label_of flow): flows/s = completed flows / duration; p50/p99 = whole flow, authorize sent to token 200."
    echo "$(label_of passthrough): GET $STATIC_PATH, req/s of 200s with the expected body; p50/p99 per request."
    echo "CPU µs/op: user+system CPU of the target's own processes (pkce-proxy; the front nginx's master"
    echo "and workers; the pkce-proxy-off and hyper_floor processes; the upstream nginx for \"upstream\") during the run, per"
    echo "completed flow or request;"
    echo "the upstream's CPU is not in the proxies' figures. Less sensitive than the rates to other load."
    echo "user / kernel: the same CPU split into user space (the program's own work) and the kernel's."
    echo
    echo "pkce-proxy decisions over the whole run, preflight included (/metrics):"
    echo
    sed 's/^/    /' <<<"$PROXY_DECISIONS"
    if [ -n "$PROXY_PROBLEMS" ]; then
        echo
        echo "pkce-proxy refusals and errors during the load (/metrics, after minus before):"
        echo
        sed 's/^/    /' <<<"$PROXY_PROBLEMS"
    fi
} >"$REPORT"
cat "$REPORT"

bad=$(awk -F'\t' '{ if (match($4, / refused=[0-9]+/)) s += substr($4, RSTART + 9, RLENGTH - 9) } END { print s + 0 }' "$RESULTS")
if [ "$bad" -gt 0 ] || [ -n "$PROXY_PROBLEMS" ]; then
    say "run.sh: WARNING: $bad refused/unmatched flows or requests; see $WORKDIR/raw and $WORKDIR/pkce-proxy.log"
    exit 3
fi
