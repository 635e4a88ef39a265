#!/usr/bin/env bash
# Runs every fuzz target in turn for FUZZ_SECS seconds each (default 600), with the OAuth
# dictionary, and prints one line per target. Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# A crash stops that target and leaves its input under fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
SECS=${FUZZ_SECS:-600}
TARGETS=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build -O >/dev/null || exit 1
status=0
for target in $TARGETS; do
    log="artifacts/$target.log"
    mkdir -p artifacts
    if cargo +nightly fuzz run -O "$target" -- -max_total_time="$SECS" -dict=oauth.dict \
        -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
        result="ok"
    else
        result="CRASH (see $log and artifacts/$target/)"
        status=1
    fi
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "$target: $result; ${runs:-no summary}; ${cov:-}"
done
exit $status
