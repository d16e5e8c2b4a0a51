#!/usr/bin/env bash
# Starts a local Distributary on loopback in the foreground: a broadcaster and two disk readers.
# Ctrl-C or SIGTERM stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${BROADCASTER_HTTP_PORT:-8080}"
DATA="${DEMO_DATA_DIR:-./data/demo}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)  # etcd-client generates code at build time
if ((${#need_apt[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

echo "building release binaries (first time: about a minute)..."
cargo build --release --bins -q
BIN=target/release
mkdir -p "$DATA"

pids=()
stop() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  echo "stopped"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# Waits for the `listening on ADDR` line in a log and prints ADDR.
addr_of() {
  local log=$1 pid=$2
  for _ in $(seq 1 200); do
    if a=$(grep -o 'listening on [^ ]*' "$log" 2>/dev/null | head -1 | cut -d' ' -f3) && [ -n "$a" ]; then
      echo "$a"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "process exited; see $log" >&2; cat "$log" >&2; return 1; }
    sleep 0.05
  done
  echo "timed out waiting for $log" >&2; return 1
}

readers=()
for i in 1 2; do
  log="$DATA/reader$i.log"; : >"$log"
  READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$DATA/reader$i" RUST_LOG="${RUST_LOG:-info}" \
    "$BIN/reader" >"$log" 2>&1 &
  pids+=($!)
  readers+=("$(addr_of "$log" $!)")
done

hosts=$(IFS=';'; echo "${readers[*]}")
log="$DATA/broadcaster.log"; : >"$log"
BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT="$PORT" BROADCASTER_HOST_LIST="$hosts" \
  RUST_LOG="${RUST_LOG:-info}" "$BIN/broadcaster" >"$log" 2>&1 &
pids+=($!)
baddr=$(addr_of "$log" $!)

cat <<MSG

Distributary is running (logs in $DATA/*.log).
  broadcaster: http://$baddr/
  readers:     ${readers[*]}

Try:
  curl -T /etc/os-release http://$baddr/broadcast/os-release
  curl http://${readers[0]}/files/os-release

Ctrl-C stops everything.
MSG

wait -n "${pids[@]}" || true
echo "a process exited; stopping the rest" >&2
