#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz) of the targets in tests/src/fuzz.rs, on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags).
#
#   scripts/fuzz-coverage.sh [SECONDS_PER_TARGET] [TARGET...]     default: 90 s, all 8
#
# Environment: SANITIZER=address|none (default address), FUZZ_SCRATCH=DIR (default
# /tmp/agentid-fuzz-coverage). One fuzzer process at a time: libFuzzer's default in-process
# mode (-jobs=1 would fork a child whose output goes to ./fuzz-0.log instead). New
# corpus entries go to $FUZZ_SCRATCH/corpus/TARGET (seeded with the built-in seeds and
# read from tests/fuzz/corpus/TARGET, which is not written); crashes to
# tests/fuzz/artifacts/TARGET/ (git-ignored); logs to $FUZZ_SCRATCH/TARGET.log.
# Not run by CI or `cargo xtask test` (its time budget has the stable driver's smoke run).
set -euo pipefail

seconds=${1:-90}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(api audit config credentials decode encode registry since)
sanitizer=${SANITIZER:-address}
scratch=${FUZZ_SCRATCH:-/tmp/agentid-fuzz-coverage}
fuzz_dir=$(cd "$(dirname "$0")/../tests/fuzz" && pwd)

export RUSTC_BOOTSTRAP=1
cd "$fuzz_dir"
cargo fuzz build -O -s "$sanitizer"

summary=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/corpus/$t" "$fuzz_dir/corpus/$t"
    log="$scratch/$t.log"
    echo "== $t: ${seconds}s, log $log" >&2
    if AGENTID_FUZZ_SEED_DIR="$scratch/corpus/$t" cargo fuzz run -O -s "$sanitizer" "$t" \
        "$scratch/corpus/$t" "$fuzz_dir/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log, tests/fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' || echo '?')
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    summary+=("$t: $result; runs $runs; $last")
done
printf '%s\n' "${summary[@]}"
exit "$status"
