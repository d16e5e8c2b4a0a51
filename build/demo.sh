#!/usr/bin/env bash
# Starts the whole Distributary system locally, in the foreground, on loopback and embedded defaults:
# three storage nodes (the ring), a disk reader, a dash reader (ffmpeg), and a broadcaster with SQLite
# metadata. Ctrl-C or SIGTERM stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${BROADCASTER_HTTP_PORT:-8080}"
DATA="${DEMO_DATA_DIR:-./data/demo}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)  # etcd-client generates code at build time
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]}..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The watch page's player (dash.js) is served by the broadcaster from web/node_modules.
if [ ! -f web/node_modules/dashjs/dist/modern/umd/dash.all.min.js ] \
   || [ ! -f web/node_modules/tus-js-client/dist/tus.min.js ]; then
  echo "installing the web player (npm ci)..."
  npm ci --prefix web --no-audit --no-fund --loglevel=error
fi

echo "building release binaries (first time: a few minutes)..."
cargo build --release --bins -q
BIN=target/release
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
META="sqlite:$DATA/meta.db"

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
  for _ in $(seq 1 400); do
    if a=$(grep -o 'listening on [^ ]*' "$log" 2>/dev/null | head -1 | cut -d' ' -f3) && [ -n "$a" ]; then
      echo "$a"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "process exited; see $log" >&2; cat "$log" >&2; return 1; }
    sleep 0.05
  done
  echo "timed out waiting for $log" >&2; return 1
}

# Storage nodes keep their ports across demo runs, because the ring layout (in meta.db) names them.
nodes=()
for i in 1 2 3; do
  log="$DATA/storage$i.log"; : >"$log"
  port_file="$DATA/storage$i.port"
  port=$(cat "$port_file" 2>/dev/null || echo 0)
  STORAGE_NODE_HTTP_HOST=127.0.0.1 STORAGE_NODE_HTTP_PORT="$port" STORAGE_NODE_DATA_DIR="$DATA/storage$i" \
    RUST_LOG="${RUST_LOG:-info}" "$BIN/storage-node" >"$log" 2>&1 &
  pids+=($!)
  a=$(addr_of "$log" $!)
  echo "${a##*:}" >"$port_file"
  nodes+=("$a")
done

# Starts a reader and sets READER_ADDR (not via $(...): the PID must reach this shell's list).
start_reader() {
  local name=$1; shift
  local log="$DATA/$name.log"; : >"$log"
  env READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$DATA/$name" READER_METADATA="$META" \
    RUST_LOG="${RUST_LOG:-info}" "$@" "$BIN/reader" >"$log" 2>&1 &
  pids+=($!)
  READER_ADDR=$(addr_of "$log" $!)
}
start_reader reader-disk READER_SINK=disk; disk=$READER_ADDR
start_reader reader-dash READER_SINK=dash; dash=$READER_ADDR

log="$DATA/broadcaster.log"; : >"$log"
BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT="$PORT" BROADCASTER_HOST_LIST="$disk;$dash;ring" \
  BROADCASTER_METADATA="$META" BROADCASTER_STORAGE_NODES="$(IFS=';'; echo "${nodes[*]}")" \
  BROADCASTER_WEB_DIR="$PWD/web" RUST_LOG="${RUST_LOG:-info}" "$BIN/broadcaster" >"$log" 2>&1 &
pids+=($!)
baddr=$(addr_of "$log" $!)

cat <<MSG

Distributary is running (logs and data in $DATA).
  open:          http://$baddr/            (upload an MP4, watch it)
  storage ring:  ${nodes[*]}
  disk reader:   $disk      dash reader: $dash

Try:
  curl -T /etc/os-release http://$baddr/broadcast/os-release
  curl http://$baddr/files/os-release                       # back from the ring
  curl http://$disk/files/os-release                        # the disk reader's copy
  $BIN/storage-node admin list $baddr

This demo listens on loopback only and asks for no token. To require tokens, give the broadcaster an admin
token file (32+ characters) and restart: BROADCASTER_ADMIN_TOKEN_FILE=/path/to/token (then
'curl -H "Authorization: Bearer \$(cat /path/to/token)" ...', or sign in at http://$baddr/signin).
Serving other machines also needs DISTRIBUTARY_CLUSTER_SECRET_FILE on every service: README.md, "Security".

Ctrl-C stops everything.
MSG

wait -n "${pids[@]}" || true
echo "a process exited; stopping the rest" >&2
