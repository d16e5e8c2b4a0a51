#!/usr/bin/env bash
# Fuzzing (issue 9, item 8): builds the cargo-fuzz targets in fuzz/ and runs each for a while.
#
# Usage:
#   build/fuzz.sh                              every target, 10 s each (what CI runs)
#   FUZZ_SECONDS=600 build/fuzz.sh [target…]   longer runs on demand, of some targets or all
#   build/fuzz.sh --list                       the targets
#
# Environment:
#   FUZZ_SECONDS      seconds per target (libFuzzer -max_total_time), default 10
#   FUZZ_SANITIZER    address (default) or none (faster builds and runs, no ASan checks on dependencies' unsafe code)
#   FUZZ_ARGS         extra libFuzzer flags, e.g. "-jobs=2 -workers=2" or "-max_len=65536"
#   CARGO_TARGET_DIR  default fuzz/target (instrumented builds never share the workspace's target/)
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes); on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1 for the fuzz build only. Builds use -a (debug assertions and overflow checks on), so an
# arithmetic overflow that would panic in a debug build is a finding here too.
#
# Per target: the corpus grows in fuzz/corpus/<target> (git-ignored), seeded from fuzz/seeds/<target>, with
# fuzz/dicts/<target>.dict as the dictionary. Every input in fuzz/regressions/<target> (crashes found earlier) is
# replayed first, so a regression fails the run at once. A crash (panic, failed assertion, timeout over 10 s,
# one allocation over 256 MB, RSS over 2 GB) fails the script after the other targets ran, naming the artifact
# under fuzz/artifacts/<target>/. Reproduce one with
#   fuzz/target/<host triple>/release/<target> fuzz/artifacts/<target>/crash-…
# then save it under fuzz/regressions/<target>/ and add a unit test in the crate that owns the parser.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-10}"
SANITIZER="${FUZZ_SANITIZER:-address}"
CARGO_FUZZ_VERSION="0.13.2"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ/target}"
export PATH="$HOME/.cargo/bin:$PATH"

all_targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^distributary-fuzz$'
}

if [[ "${1:-}" == "--list" ]]; then
    all_targets
    exit 0
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        all_targets | grep -qx "$t" || { echo "fuzz.sh: unknown target $t (see build/fuzz.sh --list)" >&2; exit 2; }
    done
else
    mapfile -t targets < <(all_targets)
fi

start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

echo "== building ${#targets[@]} fuzz target(s) (sanitizer: $SANITIZER) in $CARGO_TARGET_DIR"
cd "$ROOT"
if [[ $# -gt 0 ]]; then
    for t in "${targets[@]}"; do
        cargo fuzz build --fuzz-dir "$FUZZ" -a --sanitizer "$SANITIZER" "$t"
    done
else
    cargo fuzz build --fuzz-dir "$FUZZ" -a --sanitizer "$SANITIZER"
fi
built=$(date +%s)
echo "== built in $((built - start)) s"

triple="$(rustc -vV | sed -n 's/^host: //p')"
bindir="$CARGO_TARGET_DIR/$triple/release"
failed=()
for t in "${targets[@]}"; do
    corpus="$FUZZ/corpus/$t"
    artifacts="$FUZZ/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    for d in "$FUZZ/seeds/$t" "$FUZZ/regressions/$t"; do
        [[ -d "$d" ]] && dirs+=("$d")
    done
    flags=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -malloc_limit_mb=256 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$artifacts/")
    [[ -f "$FUZZ/dicts/$t.dict" ]] && flags+=(-dict="$FUZZ/dicts/$t.dict")
    # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
    [[ -n "${FUZZ_ARGS:-}" ]] && flags+=(${FUZZ_ARGS})
    log="$artifacts/last-run.log"
    : >"$log"
    if RUST_BACKTRACE=1 "$bindir/$t" "${flags[@]}" "${dirs[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
        printf '== %-16s ok: %s runs, %s exec/s, %s\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-cov: ?}"
    else
        failed+=("$t")
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        echo "== $t FAILED"
        grep -m1 -A3 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR" "$log" | sed 's/^/   /' || true
        echo "   artifact: ${artifact:-none written; see $log}"
        echo "   log:      $log"
        echo "   replay:   $bindir/$t ${artifact:-<input>}"
    fi
done

echo "== done in $(( $(date +%s) - start )) s (build $((built - start)) s)"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crash in: ${failed[*]}" >&2
    exit 1
fi
