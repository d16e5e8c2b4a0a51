#!/usr/bin/env bash
# Installs what the tests need (skipping what is present) and runs every check and test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
# A real 3-member etcd cluster backs the metadata tests.
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
# etcd-client generates its gRPC code at build time.
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The dash reader runs ffmpeg; the browser test plays videos in a real headless Chromium.
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# build/docker-compose.yml is validated offline by the deploy tests (no Docker engine needed);
# --no-install-recommends keeps apt from pulling in the engine.
if ! command -v docker-compose >/dev/null; then
  log "apt-get install docker-compose"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose
fi

# The web player (dash.js) and the browser driver (playwright-core) come from web/package-lock.json.
if [ -f web/package-lock.json ] && ! (cd web && npm ls --depth=0 >/dev/null 2>&1); then
  log "npm ci (web)"
  npm ci --prefix web --no-audit --no-fund --loglevel=error
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The S3 sink's tests run against a real S3-compatible server (s3s-fs 0.14.1; newer versions need a newer rustc).
if ! command -v s3s-fs >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  log "cargo install s3s-fs"
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

log "build binaries"
# The end-to-end suites start these as real processes.
cargo build --workspace --bins --locked

log "shell scripts"
for s in build/*.sh bench/*.sh dist/*.sh .ci/run; do
  [ -f "$s" ] && bash -n "$s"
done

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# Every fuzz target briefly (each for FUZZ_SECONDS, default 10), after replaying the crashes found earlier
# (fuzz/regressions). Longer runs on demand: FUZZ_SECONDS=600 build/fuzz.sh [target...] (see fuzz/README.md).
# CI builds without ASan by default to keep a cold build short; FUZZ_SANITIZER=address for the full checks.
log "fuzz"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" bash build/fuzz.sh
