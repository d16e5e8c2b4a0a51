#!/usr/bin/env bash
# Read benchmark (issue 11): DASH segments read through the gateway (GET /content/ID/FILE on the broadcaster,
# which fetches each file from the storage ring) against nginx serving byte-identical copies of the same files
# from a local directory at the same URL paths, under wrk at several connection counts; with the broadcaster's
# and the storage nodes' peak RSS per run.
#
#   bench/read.sh                                    # 10 s per run, 1, 64 and 512 connections
#   BENCH_SECS=5 BENCH_CONNS="1 16" bench/read.sh    # a quick one
#   BENCH_ORDER=random BENCH_FILES=all bench/read.sh
#
# What it does, in one run:
#   1. installs what is missing, only then, with apt-get install -y --no-install-recommends (after apt-get
#      update, and after checking with apt-cache policy that the package has a candidate): wrk, nginx (the
#      `nginx` package, or `nginx-light` where `nginx` has none), gnuplot-nox (or gnuplot) for the plot, ffmpeg
#      for the clip and the dash reader, curl, jq, and protobuf-compiler + libprotobuf-dev for the build. Needs
#      root for that, nothing else does. Installing the nginx package on a host whose init starts services also
#      starts the distribution's nginx service, as any apt install of it does; this benchmark never uses,
#      configures or stops it;
#   2. builds the release binaries (cargo build --release --bins) and starts 3 storage nodes, a disk reader, a
#      dash reader (READER_SINK=dash) and a broadcaster (BROADCASTER_HOST_LIST="disk;dash", R=2, SQLite metadata
#      shared with the dash reader), all on 127.0.0.1 with free ports read from their "listening on ADDR" log
#      lines (as bench/video.sh does);
#   3. generates a BENCH_CLIP_SECS (20) s BENCH_CLIP_SIZE (1920x1080) H.264/AAC MP4 with ffmpeg's lavfi sources
#      (testsrc2 + a sine tone; cached in bench/out/read/clips/ and reused) and uploads it with
#      curl -F file=@clip POST /upload; the broadcaster answers 303 once the dash reader has transcoded it
#      onto the ring (the video id is the file name without .mp4; GET /videos/ID must then answer 200);
#   4. lists the video's files on every storage node (GET /v1/blobs?prefix=ID/, the distinct keys: manifest,
#      init and media segments, poster) and downloads each through the gateway (GET /content/ID/FILE) into
#      the nginx root at content/ID/FILE, checking its size against the ring's listing, and its SHA-256 where
#      the listing gives a plain one (a windowed digest, "w1:...", is left to the gateway's own check);
#   5. starts nginx as a foreground process (daemon off, its master's PID is ours) with its own prefix,
#      configuration, pid file, logs and temp paths in a fresh temporary directory, listening on a free port of
#      127.0.0.1 (sendfile, access log off, keepalive_requests raised so wrk's connections are not closed every
#      1000 requests, as the gateway never closes them), and checks that every file it serves has the SHA-256
#      of the copy the gateway served;
#   6. for each connection count in BENCH_CONNS, in that order, runs wrk against the gateway then against
#      nginx: BENCH_SECS seconds, min(BENCH_THREADS, connections) threads (wrk needs at least one connection
#      per thread), --timeout 10s --latency, with bench/read.lua picking the paths /content/ID/FILE of the
#      video's segment files (init-*.m4s and chunk-*.m4s, every representation, audio included) round-robin or
#      at random; the same paths on both targets. Before each run the peak RSS (VmHWM) of the broadcaster,
#      the storage nodes and nginx's processes is reset (echo 5 > /proc/PID/clear_refs) and after it VmHWM,
#      VmRSS and CPU time are read, so each row shows that run's own peak (start-up and upload excluded);
#   7. prints the table (stdout, and table.txt) and plots p99 latency and requests/s against connections for
#      both targets (read.png, gnuplot) into the run directory bench/out/read/<UTC timestamp>/, which also
#      keeps results.txt (one line of key=value per run), each wrk output, run.txt (what was measured), the
#      paths list and the services' and nginx's logs.
#
# The table, one row per target and connection count:
#   req/s            completed requests per second over the run (wrk)
#   MB/s             response bytes per second (headers included, as wrk counts them)
#   p50 / p99 ms     latency percentiles of completed requests (wrk's histogram; requests that timed out are
#                    not in it, they are counted under errors)
#   errors           connect + read + write + timeout errors + responses with a status >= 400 (wrk's count);
#                    the breakdown is below the table when not zero
#   HWM / RSS MiB    the server's peak RSS during the run and its RSS at the end: the broadcaster for gateway
#                    rows, nginx's master and workers together for nginx rows
#   nodes HWM MiB    the largest peak RSS among the 3 storage nodes during the run (gateway rows)
#   CPU s            CPU time of the server processes during the run: broadcaster + storage nodes for gateway
#                    rows, nginx for nginx rows
#   wrk CPU s        CPU time of wrk itself: the client runs on the same cores and takes its share
#   other CPU s      CPU time the machine spent on anything else during the run (/proc/stat user + nice +
#                    system time, minus this benchmark's processes and wrk): other builds or tests running
#                    beside the benchmark. Out of BENCH_SECS x cores; when it is not near 0 the numbers are not
#                    comparable (a note says so below the table)
#   p99 x, req/s x   gateway / nginx at the same connection count (on the gateway row)
#
# Environment:
#   BENCH_SECS           seconds per wrk run (default 10)
#   BENCH_CONNS          connection counts (default "1 64 512")
#   BENCH_THREADS        wrk threads (default 2; fewer when there are fewer connections)
#   BENCH_TIMEOUT        wrk --timeout (default 10s)
#   BENCH_ORDER          roundrobin (default) or random: how read.lua picks the next path
#   BENCH_FILES          segments (default: init-*.m4s and chunk-*.m4s) or all (manifest and poster too)
#   BENCH_CLIP_SECS      clip length in seconds (default 20)
#   BENCH_CLIP_SIZE      clip WIDTHxHEIGHT (default 1920x1080)
#   BENCH_FPS            clip frame rate (default 30)
#   BENCH_PRESET         libx264 preset of the dash reader, READER_FFMPEG_PRESET (default veryfast)
#   BENCH_NGINX_WORKERS  nginx worker_processes (default auto: one per core)
#   BENCH_UPLOAD_TIMEOUT seconds to wait for the upload's 303, transcode included (default 1200)
#   BENCH_OUT            output directory (default bench/out/read; bench/out is gitignored)
#   BENCH_KEEP=1         keep the run's data (storage blobs, staging, meta.db) and the nginx directory
#   BENCH_SKIP_BUILD=1   use the existing target/release binaries
#   BENCH_BIN            a directory with other broadcaster, reader and storage-node binaries to measure (e.g. a
#                        build of an older commit); implies no build
# Other BROADCASTER_* / STORAGE_NODE_* / READER_* variables you export reach the services; the script sets the
# hosts, ports, data directories, metadata, node list, replication, host list, sink and web directory.
#
# Network: everything listens on and talks to 127.0.0.1 only (apt-get aside). Every process is started and
# stopped (SIGTERM, then SIGKILL after 10 s) by PID by the script itself, also when it fails or is interrupted.
# Progress goes to stderr, the table to stdout. Exit status: 0 when the upload, the downloads, the checks and
# every wrk run completed (whatever the latencies and error counts), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SECS=${BENCH_SECS:-10}
CONNS=${BENCH_CONNS:-"1 64 512"}
THREADS=${BENCH_THREADS:-2}
WRK_TIMEOUT=${BENCH_TIMEOUT:-10s}
ORDER=${BENCH_ORDER:-roundrobin}
FILES=${BENCH_FILES:-segments}
CLIP_SECS=${BENCH_CLIP_SECS:-20}
CLIP_SIZE=${BENCH_CLIP_SIZE:-1920x1080}
FPS=${BENCH_FPS:-30}
PRESET=${BENCH_PRESET:-veryfast}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-auto}
UPLOAD_TIMEOUT=${BENCH_UPLOAD_TIMEOUT:-1200}
OUT=${BENCH_OUT:-bench/out/read}

log() { printf '[read-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
posint "$SECS" || die "BENCH_SECS must be a positive integer, not '$SECS'"
posint "$THREADS" || die "BENCH_THREADS must be a positive integer, not '$THREADS'"
posint "$CLIP_SECS" || die "BENCH_CLIP_SECS must be a positive integer, not '$CLIP_SECS'"
posint "$FPS" || die "BENCH_FPS must be a positive integer, not '$FPS'"
posint "$UPLOAD_TIMEOUT" || die "BENCH_UPLOAD_TIMEOUT must be a positive integer, not '$UPLOAD_TIMEOUT'"
[[ $CLIP_SIZE =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || die "BENCH_CLIP_SIZE must be WIDTHxHEIGHT, not '$CLIP_SIZE'"
[[ $WRK_TIMEOUT =~ ^[1-9][0-9]*(ms|s|m)?$ ]] || die "BENCH_TIMEOUT must be like 10s, not '$WRK_TIMEOUT'"
[[ $ORDER == roundrobin || $ORDER == random ]] || die "BENCH_ORDER must be roundrobin or random, not '$ORDER'"
[[ $FILES == segments || $FILES == all ]] || die "BENCH_FILES must be segments or all, not '$FILES'"
[[ $NGINX_WORKERS == auto ]] || posint "$NGINX_WORKERS" || die "BENCH_NGINX_WORKERS must be auto or a positive integer"
[ -n "${CONNS// /}" ] || die "BENCH_CONNS is empty"
for c in $CONNS; do posint "$c" || die "bad connection count '$c' in BENCH_CONNS"; done
# wrk, nginx and the broadcaster each hold a descriptor per connection (the broadcaster one more per read to a
# node): raise the soft limit (inherited by every process started here) when the largest count needs it.
max_conns=$(printf '%s\n' $CONNS | sort -n | tail -1)
if (( $(ulimit -n) < 2 * max_conns + 256 )); then
  hard=$(ulimit -Hn)
  [ "$hard" != unlimited ] || hard=65536
  ulimit -n "$hard" 2>/dev/null || true
  (( $(ulimit -n) >= 2 * max_conns + 256 )) || die "open files limit $(ulimit -n) is too low for $max_conns connections"
fi

# --- tools -----------------------------------------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
# The first of the named packages that apt has a candidate for.
apt_candidate() {
  local p c
  for p in "$@"; do
    c=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    if [ -n "$c" ] && [ "$c" != "(none)" ]; then echo "$p"; return 0; fi
  done
  return 1
}
need=()
have wrk || need+=("wrk")
have nginx || need+=("nginx nginx-light")
have gnuplot || need+=("gnuplot-nox gnuplot")
{ have ffmpeg && have ffprobe; } || need+=("ffmpeg")
have curl || need+=("curl")
have jq || need+=("jq")
# etcd-client (a dependency of the broadcaster) generates its gRPC code with protoc at build time, and imports
# protobuf's well-known types (libprotobuf-dev, only a recommendation of protobuf-compiler).
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN:-}" ]; then
  have protoc || need+=("protobuf-compiler")
  [ -f /usr/include/google/protobuf/descriptor.proto ] || need+=("libprotobuf-dev")
fi
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || die "missing tools (${need[*]}); run as root or install them with apt-get"
  apt_log=$(mktemp "${TMPDIR:-/tmp}/distributary-read-apt.XXXXXX")
  apt-get update -qq >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
  pkgs=()
  for alternatives in "${need[@]}"; do
    # shellcheck disable=SC2086 # the alternatives are words on purpose
    p=$(apt_candidate $alternatives) || die "no apt candidate for any of: $alternatives"
    pkgs+=("$p")
  done
  log "installing missing tools: apt-get install -y --no-install-recommends ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$apt_log" 2>&1 \
    || { tail -40 "$apt_log" >&2; die "apt-get install ${pkgs[*]} failed (log: $apt_log)"; }
  rm -f "$apt_log"
fi
for tool in wrk nginx gnuplot ffmpeg ffprobe curl jq; do have "$tool" || die "$tool still missing after install"; done
for tool in python3 sha256sum timeout getconf; do command -v "$tool" >/dev/null || die "$tool not found"; done
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN:-}" ]; then
  command -v cargo >/dev/null || die "cargo not found (install Rust with rustup, or set BENCH_SKIP_BUILD=1)"
  log "building release binaries..."
  cargo build --release --bins -q || die "cargo build --release --bins failed"
fi
BIN=${BENCH_BIN:-$ROOT/target/release}
for b in broadcaster reader storage-node; do [ -x "$BIN/$b" ] || die "$BIN/$b missing"; done

mkdir -p "$OUT/clips"
OUT=$(cd "$OUT" && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$OUT/$STAMP
mkdir -p "$RUN/logs" "$RUN/wrk"
log "run directory: $RUN"

# --- processes -------------------------------------------------------------------------------------------------
pids=()
NGX=""
# True while PID is a live process (a child that exited but is not reaped yet is a zombie: not alive).
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }
stop_all() {
  local p any
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    any=0
    for p in "${pids[@]}"; do alive "$p" && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if alive "$p"; then log "process $p did not stop on SIGTERM within 10 s; SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [ -n "$NGX" ] && [ -d "$NGX" ]; then
    cp "$NGX/error.log" "$RUN/logs/nginx-error.log" 2>/dev/null || true
    cp "$NGX/nginx.conf" "$RUN/logs/nginx.conf" 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$NGX"; else log "kept nginx directory $NGX"; fi
  fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$RUN/data"; fi
  rm -f "$RUN/.times.0" "$RUN/.times.1"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (30 s at most) for the "listening on ADDR" line of a log and prints ADDR.
addr_of() {
  local logf=$1 pid=$2 a
  for _ in $(seq 1 600); do
    a=$(grep -o 'listening on [^ ]*' "$logf" 2>/dev/null | head -1 | cut -d' ' -f3 || true)
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    alive "$pid" || { cat "$logf" >&2; die "process $pid exited; see $logf"; }
    sleep 0.05
  done
  die "timed out waiting for 'listening on' in $logf"
}

DATA=$RUN/data
META="sqlite:$DATA/meta.db"
mkdir -p "$DATA"
nodes=()
node_pids=()
for i in 1 2 3; do
  logf=$RUN/logs/storage$i.log
  STORAGE_NODE_HTTP_HOST=127.0.0.1 STORAGE_NODE_HTTP_PORT=0 STORAGE_NODE_DATA_DIR="$DATA/storage$i" \
    RUST_LOG=info "$BIN/storage-node" >"$logf" 2>&1 &
  pids+=($!)
  node_pids+=($!)
  nodes+=("$(addr_of "$logf" $!)")
done

# Not called inside $(...): the PID must land in this shell's pids.
start_reader() {
  local name=$1; shift
  env READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$DATA/$name" READER_METADATA="$META" \
    RUST_LOG=info "$@" "$BIN/reader" >"$RUN/logs/$name.log" 2>&1 &
  pids+=($!)
}
start_reader reader-disk READER_SINK=disk
disk=$(addr_of "$RUN/logs/reader-disk.log" "${pids[-1]}")
start_reader reader-dash READER_SINK=dash READER_FFMPEG_PRESET="$PRESET"
dash=$(addr_of "$RUN/logs/reader-dash.log" "${pids[-1]}")

logf=$RUN/logs/broadcaster.log
BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 BROADCASTER_HOST_LIST="$disk;$dash" \
  BROADCASTER_METADATA="$META" BROADCASTER_STORAGE_NODES="$(IFS=';'; echo "${nodes[*]}")" \
  BROADCASTER_REPLICATION=2 BROADCASTER_WEB_DIR="$ROOT/web" RUST_LOG=info \
  "$BIN/broadcaster" >"$logf" 2>&1 &
pids+=($!)
BPID=$!
B=$(addr_of "$logf" $BPID)
curl -fsS --max-time 10 "http://$B/admin/nodes" >/dev/null || die "broadcaster has no ring layout"
# The dash reader started before the layout existed (the broadcaster seeds it); it reloads the layout every
# 2 s (ring-client LAYOUT_REFRESH). Give it that before the upload.
sleep 2.5
log "storage nodes ${nodes[*]}; disk reader $disk; dash reader $dash; broadcaster $B (pid $BPID)"

# --- the video -------------------------------------------------------------------------------------------------
w=${CLIP_SIZE%x*} h=${CLIP_SIZE#*x}
kbps=$(( w * h * FPS * 12 / 100 / 1000 ))   # 0.12 bit per pixel per frame, as bench/video.sh
clip=$OUT/clips/clip-${CLIP_SECS}s-${CLIP_SIZE}-${FPS}fps-${kbps}k.mp4
if [ ! -s "$clip" ]; then
  log "generating $clip (${CLIP_SECS}s ${CLIP_SIZE} ${FPS} fps, ${kbps} kb/s, AAC stereo)..."
  ffmpeg -hide_banner -nostdin -loglevel error -y \
    -f lavfi -i "testsrc2=size=${CLIP_SIZE}:rate=${FPS}:duration=${CLIP_SECS}" \
    -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=${CLIP_SECS}" \
    -map 0:v -map 1:a -c:v libx264 -preset veryfast -pix_fmt yuv420p \
    -b:v "${kbps}k" -maxrate "${kbps}k" -bufsize "$((kbps * 2))k" -g $((FPS * 2)) \
    -c:a aac -b:a 128k -ac 2 "$clip.tmp.mp4"
  mv "$clip.tmp.mp4" "$clip"
fi

id="read-bench-$STAMP"
log "uploading $(basename "$clip") as $id.mp4 through POST /upload (the dash reader transcodes it; preset $PRESET)..."
t0=$(date +%s.%N)
code=$(curl -sS -o "$RUN/logs/upload-response.txt" -w '%{http_code}' -H 'Expect:' --max-time "$UPLOAD_TIMEOUT" \
         -F "file=@$clip;type=video/mp4;filename=$id.mp4" "http://$B/upload" 2>"$RUN/logs/upload-curl.txt") || true
t1=$(date +%s.%N)
upload_s=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$t1")
[ "$code" = 303 ] || die "POST /upload answered '$code' after ${upload_s}s, not 303 (see $RUN/logs/upload-*.txt and $RUN/logs/)"
log "  303 after ${upload_s}s (upload + transcode + ring writes)"
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "http://$B/videos/$id") || true
[ "$code" = 200 ] || die "GET /videos/$id answered '$code', not 200"
upload_hwm_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$BPID/status")

# The video's files: the distinct keys under ID/ over every storage node, as "file bytes sha256".
listing=$RUN/files.txt
for n in "${nodes[@]}"; do
  curl -fsS --max-time 10 "http://$n/v1/blobs?prefix=$id/" || die "GET http://$n/v1/blobs?prefix=$id/ failed"
done | jq -rs --arg p "$id/" '[.[].blobs[]] | unique_by(.key)[] | "\(.key | ltrimstr($p)) \(.bytes) \(.sha256)"' >"$listing"
nfiles=$(wc -l <"$listing")
((nfiles > 0)) || die "no files under $id/ on the ring"
grep -q '^manifest.mpd ' "$listing" || die "no manifest.mpd among the video's files (see $listing)"
grep -Eq '^init-[0-9]+\.m4s ' "$listing" || die "no init segment among the video's files (see $listing)"
grep -Eq '^chunk-[0-9]+-[0-9]+\.m4s ' "$listing" || die "no media segment among the video's files (see $listing)"

NGX=$(mktemp -d "${TMPDIR:-/tmp}/distributary-read-nginx.XXXXXX")
chmod 755 "$NGX"  # nginx's workers may run as another user (nobody) when the script runs as root
WWW=$NGX/www
mkdir -p "$WWW/content/$id" "$NGX/tmp"
log "downloading $nfiles files through GET /content/$id/FILE into the nginx root $WWW..."
total=0
unchecked=0
while read -r file bytes sha; do
  dst=$WWW/content/$id/$file
  curl -fsS --max-time 120 -o "$dst" "http://$B/content/$id/$file" || die "GET /content/$id/$file failed"
  got=$(stat -c %s "$dst")
  [ "$got" = "$bytes" ] || die "$file: the gateway served $got bytes, the ring lists $bytes"
  # A plain SHA-256 of the payload is checked; another digest form (a node may list e.g. a windowed digest,
  # "w1:...") is left to the gateway, which checks what it serves against the digest recorded at upload.
  if [[ $sha =~ ^[0-9a-f]{64}$ ]]; then
    got=$(sha256sum "$dst" | cut -d' ' -f1)
    [ "$got" = "$sha" ] || die "$file: the gateway served SHA-256 $got, the ring lists $sha"
  else
    unchecked=$((unchecked + 1))
  fi
  total=$((total + bytes))
done <"$listing"
chmod -R a+rX "$WWW"

paths=$RUN/paths.txt
if [ "$FILES" = all ]; then
  awk -v id="$id" '{ print "/content/" id "/" $1 }' "$listing" >"$paths"
else
  awk -v id="$id" '$1 ~ /^(init-[0-9]+|chunk-[0-9]+-[0-9]+)\.m4s$/ { print "/content/" id "/" $1 }' "$listing" >"$paths"
fi
npaths=$(wc -l <"$paths")

# --- nginx -----------------------------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# Temp paths of the modules this nginx was built with (a path for a module left out is an unknown directive).
nginx_v=$("$NGINX" -V 2>&1 || true)
temp_paths="client_body_temp_path $NGX/tmp/body;"
for m in proxy fastcgi uwsgi scgi; do
  [[ $nginx_v == *"--without-http_${m}_module"* ]] || temp_paths+=" ${m}_temp_path $NGX/tmp/$m;"
done
write_nginx_conf() {
  cat >"$NGX/nginx.conf" <<EOF
# bench/read.sh: nginx serving the video's files from $WWW (generated; not the system's nginx).
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
    $temp_paths
    types {
        application/dash+xml mpd;
        video/mp4 m4s mp4;
        image/jpeg jpg;
    }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$1;
        root $WWW;
        location / {
        }
    }
}
EOF
}
NPID=""
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  write_nginx_conf "$port"
  "$NGINX" -t -q -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf" 2>"$RUN/logs/nginx-t.log" \
    || { cat "$RUN/logs/nginx-t.log" >&2; die "nginx -t rejected $NGX/nginx.conf"; }
  "$NGINX" -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf" >"$RUN/logs/nginx.out" 2>&1 &
  pids+=($!)
  NPID=$!
  up=0
  for _ in $(seq 1 200); do   # 10 s
    alive "$NPID" || break
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port$(head -1 "$paths")" || true)" = 200 ]; then
      up=1; break
    fi
    sleep 0.05
  done
  ((up)) && break
  log "nginx did not come up on 127.0.0.1:$port (attempt $attempt; $(tail -1 "$NGX/error.log" 2>/dev/null || true))"
  kill -TERM "$NPID" 2>/dev/null || true
  wait "$NPID" 2>/dev/null || true
  unset 'pids[-1]'
  NPID=""
done
[ -n "$NPID" ] || die "nginx did not start (see $RUN/logs/nginx-t.log, $NGX/error.log)"
N=127.0.0.1:$port
nginx_version=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
log "nginx $nginx_version on $N (pid $NPID, prefix $NGX)"

# Every file nginx serves is byte-identical to what the gateway served (its SHA-256, computed on the copy).
while read -r file _ _; do
  want=$(sha256sum "$WWW/content/$id/$file" | cut -d' ' -f1)
  got=$(curl -fsS --max-time 30 "http://$N/content/$id/$file" | sha256sum | cut -d' ' -f1) || die "nginx: GET /content/$id/$file failed"
  [ "$got" = "$want" ] || die "nginx served $file with SHA-256 $got, not $want"
done <"$listing"
((unchecked == 0)) || log "$unchecked files listed by the ring with a digest other than a plain SHA-256: checked by size (and by the gateway)"
log "both targets serve the $nfiles files byte-identically ($total bytes); wrk reads $npaths of them ($FILES)"

# --- runs ------------------------------------------------------------------------------------------------------
kib() { awk -v k="$2" '$1 == k":" { print $2; f = 1 } END { if (!f) print "" }' "/proc/$1/status" 2>/dev/null || echo ""; }
cpu_s() { # CPU seconds (user + system) of the given PIDs, summed
  local p tck sum=0 t
  tck=$(getconf CLK_TCK)
  for p in "$@"; do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
    sum=$((sum + ${t:-0}))
  done
  python3 -c 'import sys; print(f"{int(sys.argv[1]) / int(sys.argv[2]):.2f}")' "$sum" "$tck"
}
nginx_pids() { # the master and its workers (the children of the master), from /proc
  echo "$NPID"
  awk -v pp="$NPID" '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); if (f[2] == pp) { split(FILENAME, p, "/"); print p[3] } }' \
    /proc/[0-9]*/stat 2>/dev/null || true
}
HWM_RESET=1
reset_hwm() {
  local p
  for p in "$@"; do
    if ! (echo 5 >"/proc/$p/clear_refs") 2>/dev/null; then
      ((HWM_RESET == 0)) || log "warning: cannot reset VmHWM (/proc/$p/clear_refs); peaks are since process start"
      HWM_RESET=0
    fi
  done
}
sum_kib() { local k=$1 p s=0 v; shift; for p in "$@"; do v=$(kib "$p" "$k"); s=$((s + ${v:-0})); done; echo "$s"; }
max_kib() { local k=$1 p m=0 v; shift; for p in "$@"; do v=$(kib "$p" "$k"); ((${v:-0} > m)) && m=$v; done; echo "$m"; }

RESULTS=$RUN/results.txt
: >"$RESULTS"
failed=0
# Busy CPU seconds of the whole machine: user + nice + system from /proc/stat. Interrupt and softirq time
# (loopback TCP is partly processed there) is left out: the kernel may not charge it to any process, so it
# would show up as "other" work.
sys_busy_s() { awk -v t="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4) / t; exit }' /proc/stat; }
# CPU seconds of this shell's reaped children (wrk among them) in a file written by the builtin `times`, which
# must run in this shell itself (in a $(...) subshell it would count the subshell's children).
TIMES=$RUN/.times
kids_cpu_s() {
  tail -1 "$1" | awk '{ for (i = 1; i <= NF; i++) { f = $i; sub(/s$/, "", f); split(f, a, "m"); s += a[1] * 60 + a[2] } }
                      END { printf "%.2f\n", s }'
}
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
run_wrk() {
  local target=$1 conns=$2 base t out line srv_pids all_pids ok=1 up=1 p
  local cpu0 ncpu0 all0 sys0 kid0 cpu1 ncpu1 all1 sys1 kid1
  t=$(( conns < THREADS ? conns : THREADS ))
  out=$RUN/wrk/$target-c$conns.txt
  if [ "$target" = gateway ]; then base=http://$B; srv_pids=("$BPID"); else base=http://$N; mapfile -t srv_pids < <(nginx_pids); fi
  # Every process of this benchmark (services, nginx's master and workers), for the CPU left to others.
  mapfile -t all_pids < <(printf '%s\n' "${pids[@]}"; nginx_pids | tail -n +2)
  reset_hwm "${srv_pids[@]}" "${node_pids[@]}"
  log "wrk $target: $conns connections, $t threads, ${SECS}s..."
  cpu0=$(cpu_s "${srv_pids[@]}"); ncpu0=$(cpu_s "${node_pids[@]}"); all0=$(cpu_s "${all_pids[@]}")
  times >"$TIMES.0"; sys0=$(sys_busy_s)
  timeout --signal=INT --kill-after=10 $((SECS + 60)) \
    wrk -t "$t" -c "$conns" -d "${SECS}s" --timeout "$WRK_TIMEOUT" --latency -s "$ROOT/bench/read.lua" "$base" \
    -- "$paths" "$ORDER" "$t" >"$out" 2>&1 || { log "  wrk exited non-zero (see $out)"; ok=0; }
  sys1=$(sys_busy_s); times >"$TIMES.1"
  kid0=$(kids_cpu_s "$TIMES.0"); kid1=$(kids_cpu_s "$TIMES.1")
  cpu1=$(cpu_s "${srv_pids[@]}"); ncpu1=$(cpu_s "${node_pids[@]}"); all1=$(cpu_s "${all_pids[@]}")
  line=$(grep -m1 '^READ_RESULT ' "$out" || true)
  if [ -z "$line" ]; then log "  no READ_RESULT line from wrk (see $out)"; ok=0; line="READ_RESULT"; fi
  for p in "${srv_pids[@]}"; do alive "$p" || up=0; done
  if ((up == 0)); then log "  the $target server died during the run"; ok=0; fi
  ((ok)) || failed=1
  local wrk_cpu other
  wrk_cpu=$(minus "$kid0" "$kid1")
  # What the machine did besides this benchmark during the run (other builds, tests...): it shares the cores.
  other=$(awk -v s="$(minus "$sys0" "$sys1")" -v a="$(minus "$all0" "$all1")" -v w="$wrk_cpu" 'BEGIN { o = s - a - w; printf "%.2f", o < 0 ? 0 : o }')
  echo "${line#READ_RESULT } target=$target conns=$conns threads=$t secs=$SECS ok=$ok alive=$up hwm_reset=$HWM_RESET" \
       "srv_hwm_kib=$(sum_kib VmHWM "${srv_pids[@]}") srv_rss_kib=$(sum_kib VmRSS "${srv_pids[@]}")" \
       "srv_procs=${#srv_pids[@]} srv_cpu_s=$(minus "$cpu0" "$cpu1")" \
       "nodes_hwm_max_kib=$(max_kib VmHWM "${node_pids[@]}") nodes_hwm_sum_kib=$(sum_kib VmHWM "${node_pids[@]}")" \
       "nodes_rss_sum_kib=$(sum_kib VmRSS "${node_pids[@]}") nodes_cpu_s=$(minus "$ncpu0" "$ncpu1")" \
       "wrk_cpu_s=$wrk_cpu other_cpu_s=$other machine_busy_s=$(minus "$sys0" "$sys1")" >>"$RESULTS"
  log "  $(tail -1 "$RESULTS" | cut -d' ' -f1,4,5,7,10-14) wrk CPU ${wrk_cpu}s, other CPU ${other}s"
  sleep 1   # let the closed connections and the servers settle before the next run
}

{
  echo "video=$id"
  echo "clip=$(basename "$clip")"
  echo "clip_bytes=$(stat -c %s "$clip")"
  echo "upload_s=$upload_s"
  echo "files=$nfiles"
  echo "files_bytes=$total"
  echo "paths=$npaths"
  echo "paths_bytes=$(awk -v id="$id" 'NR == FNR { want[$1] = 1; next } want["/content/" id "/" $1] { s += $2 } END { print s + 0 }' "$paths" "$listing")"
  echo "paths_max_bytes=$(awk -v id="$id" 'NR == FNR { want[$1] = 1; next } want["/content/" id "/" $1] && $2 > m { m = $2 } END { print m + 0 }' "$paths" "$listing")"
  echo "order=$ORDER"
  echo "file_set=$FILES"
  echo "secs=$SECS"
  echo "timeout=$WRK_TIMEOUT"
  echo "conns=$CONNS"
  echo "threads=$THREADS"
  echo "cores=$(nproc)"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{ print $2 }')"
  echo "nginx=$nginx_version"
  echo "nginx_workers=$(($(nginx_pids | wc -l) - 1))"
  echo "bcast_hwm_after_upload_kib=$upload_hwm_kb"
  echo "git=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo -)$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo +dirty)"
  echo "git_modified=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | awk '{ print $2 }' | paste -sd, -)"
  echo "bin=$BIN"
  echo "stamp=$STAMP"
} >"$RUN/run.txt"

echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/run.txt"
for c in $CONNS; do
  run_wrk gateway "$c"
  run_wrk nginx "$c"
done
echo "load=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/run.txt"

stop_all
python3 "$ROOT/bench/read_report.py" "$RUN" | tee "$RUN/table.txt"

if ((failed)); then
  log "some wrk runs failed (see $RUN/wrk/)"
  exit 1
fi
log "done: $RUN/table.txt, $RUN/read.png"
