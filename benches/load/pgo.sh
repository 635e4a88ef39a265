#!/usr/bin/env bash
# Builds pkce-proxy with profile-guided optimization: an instrumented build is run under this
# directory's load (whole PKCE flows, then pass-through requests, through run.sh), and the
# profile it records steers the optimized build. See BENCHMARKS.md, "Profile-guided build".
#
#   benches/load/pgo.sh        # prints the optimized binary's path on its last line
#
# Needs what run.sh needs (nginx, wrk, python3, cargo) and llvm-profdata from the toolchain
# (rustup component add llvm-tools). Knobs: PGO_TRAIN=10s (load per scenario),
# CARGO_TARGET_DIR (default target-load/; the builds go in pgo-gen/ and pgo/ under it).
#
# The profile is only as good as the load it was recorded under: this one is the benchmark's
# own, an authorization-code flow and a static GET, which is also what a login proxy mostly
# sees. Code paths the load never takes (errors, PAR, form_post, Redis) are optimized as
# cold ones.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target-load}
TRAIN=${PGO_TRAIN:-10s}
say() { printf '%s\n' "$*" >&2; }
die() { say "pgo.sh: $*"; exit 1; }

command -v cargo >/dev/null || die "cargo is missing"
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
[ -x "$PROFDATA" ] || die "llvm-profdata is missing (rustup component add llvm-tools)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pkce-pgo.XXXXXX")
DATA=$WORK/profiles

say "pgo.sh: building the instrumented pkce-proxy (CARGO_TARGET_DIR=$TARGET/pgo-gen)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$TARGET/pgo-gen \
    cargo build --release --locked -p pkce-proxy --bin pkce-proxy) >"$WORK/build-gen.log" 2>&1 \
    || { tail -20 "$WORK/build-gen.log" >&2; die "instrumented build failed"; }
# Build scripts were instrumented too and wrote their own profiles: only the proxy's count.
rm -rf "$DATA"

say "pgo.sh: recording a profile under $TRAIN of flows and $TRAIN of pass-through requests"
# run.sh stops the proxy with SIGTERM: it drains and exits, and writes its profile on exit.
LOAD_PROXY_BIN=$TARGET/pgo-gen/release/pkce-proxy LOAD_TARGETS=pkce-proxy ROUNDS=1 \
    DURATION=$TRAIN LOAD_WARMUP=0 LOAD_WORKDIR=$WORK/load "$HERE/run.sh" >"$WORK/train.log" 2>&1 \
    || { tail -20 "$WORK/train.log" >&2; die "the training load failed"; }
compgen -G "$DATA/*.profraw" >/dev/null || die "the instrumented proxy wrote no profile in $DATA"
"$PROFDATA" merge -o "$WORK/pkce-proxy.profdata" "$DATA"

say "pgo.sh: building the optimized pkce-proxy (CARGO_TARGET_DIR=$TARGET/pgo)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$WORK/pkce-proxy.profdata" CARGO_TARGET_DIR=$TARGET/pgo \
    cargo build --release --locked -p pkce-proxy --bin pkce-proxy) >"$WORK/build-use.log" 2>&1 \
    || { tail -20 "$WORK/build-use.log" >&2; die "optimized build failed"; }
say "pgo.sh: profile and logs in $WORK"
echo "$TARGET/pgo/release/pkce-proxy"
