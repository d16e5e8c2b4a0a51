#!/usr/bin/env bash
# Video benchmark (issue 4, item 5): time from the end of an upload to "playable", against a bare ffmpeg run of
# the same ladder on the same file in the same run (goal <= 1.1x), and the files and bytes written to the ring.
# Also (issue 11) the time from the end of an upload to "watchable": the index links the video and its watch
# page plays it while it is still processing (goal: within 10 s of the upload's end, whatever the video's
# length).
#
#   bench/video.sh                                   # one 60 s 1920x1080 clip with audio
#   BENCH_CLIPS="10:1280x720" bench/video.sh         # a quick one
#   BENCH_CLIPS="30:1280x720 60:1920x1080" BENCH_REPEAT=3 bench/video.sh
#
# What it does, in one run:
#   1. builds the release binaries (cargo build --release --bins) and reader/examples/ladder_cmd.rs, which
#      prints the exact ffmpeg command the dash reader runs for a file (reader::dash::probe, ladder,
#      ffmpeg_args with the reader's TranscodeOptions);
#   2. generates each clip with ffmpeg's lavfi sources (testsrc2 + a sine tone, H.264/AAC MP4 with the index
#      at the end, ffmpeg's default -movflags, i.e. what a phone or camera writes); clips are cached in
#      bench/out/video/clips/ and reused;
#   3. starts 3 storage nodes, a disk reader, a dash reader (READER_SINK=dash, READER_FFMPEG_PRESET) and a
#      broadcaster (BROADCASTER_HOST_LIST="disk;dash", R=2, SQLite metadata shared with the dash reader), all
#      on 127.0.0.1 with free ports (read from their "listening on ADDR" log lines);
#   4. for each clip and repetition:
#        bare   run the ladder command from ladder_cmd into an empty directory on the same file system;
#               wall time from start to exit ("bare s");
#        dist   curl -F file=@clip POST /upload; the broadcaster answers 303 once every DASH file is durable on
#               the ring and the video is listed "ready", i.e. once it is playable ("dist s" below); meanwhile
#               a poller watches GET /videos/ID and the lowest rendition's first segment ("watchable s");
#      then lists the video's blobs on every storage node (GET /v1/blobs?prefix=ID/) and fetches
#      GET /content/ID/manifest.mpd, GET /content/ID/init-0.m4s and GET /videos/ID through the broadcaster;
#   5. prints a table (stdout; also saved as table.txt in the run directory) and, per upload, where the time
#      went, from the services' logs (the dash reader runs with RUST_LOG=info,reader::dash=debug for its
#      "ffmpeg started" / "transcode done" lines, the storage nodes with storage_node=debug for "stored"),
#      placed on the wall clock read just before curl started (curl's --trace-time absolute values can be up
#      to 1 s off; their differences are exact).
#
# How "end of upload -> playable" is measured. curl 7.88 has no write-out variable for "the request body has
# been sent" (%{time_pretransfer} is before the body, %{time_starttransfer} is the first response byte, which
# here is the 303, since the broadcaster answers only when the video is playable). So curl runs with
# `-v --trace-time` (TZ=UTC) and the benchmark reads two timestamps from its trace:
#   end of upload  the line "We are completely uploaded and fine" (libcurl logs it when the last body byte has
#                  been handed to the socket);
#   playable       the line "< HTTP/1.1 303 See Other" (first response line received).
# "dist s" is their difference (exact: curl stamps its trace from a monotonic clock). The end-of-upload mark is
# early by what the kernel and the broadcaster still buffer at that moment (loopback socket buffers of a few
# MiB, plus BROADCASTER_QUEUE_DEPTH x BROADCASTER_BUFFER_SIZE per target), which drains at loopback/disk speed:
# tens of milliseconds against tens of seconds, and it makes "dist s" longer, never shorter. The breakdown
# bounds it: the dash reader can start ffmpeg only once it has the whole body staged, fsynced and probed.
# ratio = dist s / bare s.
# The bare run reads the same clip (warm in the page cache, as the staged copy is for the dash reader) and
# writes to the same file system, with the same ffmpeg binary, arguments and default thread count. It does
# not count the dash reader's other work (staging fsync, ffprobe, output validation, poster frame, ring writes
# with R=2, commit, metadata): that is exactly the overhead the ratio measures.
#
# How "end of upload -> watchable" is measured. The upload commits as soon as the dash reader holds the source;
# the dash reader then lists each DASH file in the video's record as it lands on the ring, and the video is
# watchable while still "processing" once the record lists manifest.mpd, an init-* and a chunk-* file: the
# index (GET /) then links the row's name to /videos/ID, and GET /videos/ID answers 200 with the player (404
# before; both read the same VideoRecord::is_watchable). curl's 303 still waits for "ready", so a poller runs
# beside it, started just before curl and killed (by PID) as soon as curl returns; it only talks to the
# broadcaster on 127.0.0.1 and gives up by itself after max(600 s, 20 x the clip's length) or when the script
# goes away. It asks for GET /videos/ID every 100 ms (one request at a time, so a slow answer on a busy machine
# delays the next poll instead of piling requests up) and writes the wall-clock time (time.time(), the clock
# curl's trace is re-based on, see above) at which the first 200's status line arrived; then it reads the
# index once and records the row's data-status ("processing" is what issue 11 asks for; "ready" means the
# video only became watchable when it was done) and whether the name is a link. "watchable s" = that time -
# end of upload: late by up to one poll period plus one request's latency, early by nothing. In parallel it
# asks for the first media segment of the lowest video rendition (chunk-N-00001.m4s, N = the number of video
# renditions in ladder_cmd's command - 1: 0 is the highest, audio comes last), what a player starting on a
# slow link fetches first; the broadcaster holds such a request up to 15 s for a processing video (see
# broadcaster::content::PROCESSING_WAIT), so that one is a long poll and its first 200 is shown in the
# breakdown ("first segment ... served"), next to when the first chunk-* was stored on the ring (the dash
# reader rewrites the record at most once a second, reader::video::RECORD_EVERY, so watchable can trail that
# by up to a second). The poller's requests (about 10/s, tiny) count in the broadcaster's CPU. It is a
# measurement, not a pass/fail check: the exit status does not depend on it.
#
# Ring numbers: "files" = distinct blobs under ID/ (DASH files + poster.jpg), "unique MB" = their total size,
# "replicated MB" = bytes stored over all nodes (R x unique when every blob has R copies), "bare files/MB" =
# what the bare ffmpeg run wrote (the ring should hold those files plus poster.jpg).
#
# Timings are wall-clock and noisy on a small shared machine: ffmpeg wants every core, so anything else
# running (other builds, tests) lands in both measurements unequally. Use BENCH_REPEAT to alternate the order
# and repeat; look at the per-upload breakdown ("ffmpeg in reader" vs "bare") to tell CPU contention from
# pipeline overhead.
#
# Environment:
#   BENCH_CLIPS          space-separated SECONDS:WIDTHxHEIGHT clips (default "60:1920x1080")
#   BENCH_PRESET         libx264 preset for the reader (READER_FFMPEG_PRESET) and the bare run (default veryfast)
#   BENCH_REPEAT         uploads per clip; the bare/dist order alternates between repetitions (default 1)
#   BENCH_FPS            clip frame rate (default 30)
#   BENCH_SOURCE_KBPS    clip video bitrate in kb/s (default: 0.12 bit per pixel per frame, 7.5 Mb/s at 1080p30)
#   BENCH_MOVFLAGS       -movflags for the generated clips (default none: index at the end; +faststart moves it)
#   BENCH_OUT            output directory (default bench/out/video; bench/out is gitignored)
#   BENCH_KEEP=1         keep the run's data (storage blobs, staging, meta.db); logs are always kept
#   BENCH_SKIP_BUILD=1   use the existing target/release binaries and example
# Requires: cargo, ffmpeg/ffprobe, curl, jq, python3.
#
# Every process is started and stopped (by PID) by the script itself, also when it fails. Progress goes to
# stderr, the table to stdout. Exit status: 0 when every upload answered 303 and every video is playable
# (goal met or not), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

CLIPS=${BENCH_CLIPS:-"60:1920x1080"}
PRESET=${BENCH_PRESET:-veryfast}
REPEAT=${BENCH_REPEAT:-1}
FPS=${BENCH_FPS:-30}
MOVFLAGS=${BENCH_MOVFLAGS:-}
OUT=${BENCH_OUT:-bench/out/video}

log() { printf '[video-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in cargo ffmpeg ffprobe curl jq python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install ffmpeg curl jq python3)"
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer, not '$REPEAT'"
[[ $FPS =~ ^[1-9][0-9]*$ ]] || die "BENCH_FPS must be a positive integer, not '$FPS'"
for c in $CLIPS; do
  [[ $c =~ ^[1-9][0-9]*:[1-9][0-9]*x[1-9][0-9]*$ ]] || die "bad clip '$c' in BENCH_CLIPS (want SECONDS:WIDTHxHEIGHT)"
done

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries and the ladder_cmd example..."
  cargo build --release --bins -q
  cargo build --release -q -p reader --example ladder_cmd
fi
BIN=$ROOT/target/release
LADDER_CMD=$BIN/examples/ladder_cmd
for b in broadcaster reader storage-node; do [ -x "$BIN/$b" ] || die "$BIN/$b missing"; done
[ -x "$LADDER_CMD" ] || die "$LADDER_CMD missing"

mkdir -p "$OUT/clips"
OUT=$(cd "$OUT" && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$OUT/run-$STAMP
mkdir -p "$RUN/logs"
log "run directory: $RUN"

# --- processes -------------------------------------------------------------------------------------------------
pids=()
poll_pid=   # the watchable poller of the upload in progress, if any (see watch_start)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$poll_pid" ]; then
    kill -TERM "$poll_pid" 2>/dev/null || true
  fi
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$RUN/data" "$RUN/bare"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits for the "listening on ADDR" line of a log and prints ADDR.
addr_of() {
  local logf=$1 pid=$2 a
  for _ in $(seq 1 600); do
    a=$(grep -o 'listening on [^ ]*' "$logf" 2>/dev/null | head -1 | cut -d' ' -f3 || true)
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "process $pid exited; see $logf"; }
    sleep 0.05
  done
  die "timed out waiting for 'listening on' in $logf"
}

DATA=$RUN/data
META="sqlite:$DATA/meta.db"
mkdir -p "$DATA"
# Each service may log more than info where the breakdown needs it; the user's RUST_LOG is not used.
nodes=()
declare -A role_pid=()
for i in 1 2 3; do
  logf=$RUN/logs/storage$i.log
  STORAGE_NODE_HTTP_HOST=127.0.0.1 STORAGE_NODE_HTTP_PORT=0 STORAGE_NODE_DATA_DIR="$DATA/storage$i" \
    RUST_LOG=info,storage_node=debug "$BIN/storage-node" >"$logf" 2>&1 &
  pids+=($!)
  role_pid[storage$i]=$!
  nodes+=("$(addr_of "$logf" $!)")
done

# Not called inside $(...): the PID must land in this shell's pids.
start_reader() {
  local name=$1 filter=$2; shift 2
  env READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$DATA/$name" READER_METADATA="$META" \
    RUST_LOG="$filter" "$@" "$BIN/reader" >"$RUN/logs/$name.log" 2>&1 &
  pids+=($!)
}
start_reader reader-disk info READER_SINK=disk
role_pid[reader-disk]=${pids[-1]}
disk=$(addr_of "$RUN/logs/reader-disk.log" "${pids[-1]}")
# reader::dash=debug: "ffmpeg started" and "transcode done" (elapsed, ffmpeg_elapsed) for the breakdown.
start_reader reader-dash info,reader::dash=debug READER_SINK=dash READER_FFMPEG_PRESET="$PRESET"
role_pid[reader-dash]=${pids[-1]}
dash=$(addr_of "$RUN/logs/reader-dash.log" "${pids[-1]}")

logf=$RUN/logs/broadcaster.log
BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 BROADCASTER_HOST_LIST="$disk;$dash" \
  BROADCASTER_METADATA="$META" BROADCASTER_STORAGE_NODES="$(IFS=';'; echo "${nodes[*]}")" \
  BROADCASTER_REPLICATION=2 BROADCASTER_WEB_DIR="$ROOT/web" RUST_LOG=info \
  "$BIN/broadcaster" >"$logf" 2>&1 &
pids+=($!)
role_pid[broadcaster]=$!
B=$(addr_of "$logf" $!)
curl -fsS "http://$B/admin/nodes" >/dev/null || die "broadcaster has no ring layout"
# The dash reader started before the layout existed (the broadcaster seeds it); it reloads the layout every
# 2 s (ring-client LAYOUT_REFRESH). Give it that before the first upload.
sleep 2.5
log "storage nodes ${nodes[*]}; disk reader $disk; dash reader $dash; broadcaster $B"

# --- clips -----------------------------------------------------------------------------------------------------
# Prints the path of the clip for SECONDS:WxH, generating it if it is not cached.
make_clip() {
  local secs=${1%%:*} size=${1#*:}
  local w=${size%x*} h=${size#*x}
  local kbps=${BENCH_SOURCE_KBPS:-$(( w * h * FPS * 12 / 100 / 1000 ))}
  local mf=${MOVFLAGS:+-movflags $MOVFLAGS}
  local tag=${MOVFLAGS//[^a-z]/}
  local f=$OUT/clips/clip-${secs}s-${size}-${FPS}fps-${kbps}k${tag:+-$tag}.mp4
  if [ ! -s "$f" ]; then
    log "generating $f (${secs}s ${size} ${FPS} fps, ${kbps} kb/s, AAC stereo)..."
    # shellcheck disable=SC2086 # $mf is empty or two words on purpose
    ffmpeg -hide_banner -nostdin -loglevel error -y \
      -f lavfi -i "testsrc2=size=${size}:rate=${FPS}:duration=${secs}" \
      -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=${secs}" \
      -map 0:v -map 1:a -c:v libx264 -preset veryfast -pix_fmt yuv420p \
      -b:v "${kbps}k" -maxrate "${kbps}k" -bufsize "$((kbps * 2))k" -g $((FPS * 2)) \
      -c:a aac -b:a 128k -ac 2 $mf "$f.tmp.mp4"
    mv "$f.tmp.mp4" "$f"
  fi
  echo "$f"
}

# --- measurements ----------------------------------------------------------------------------------------------
now() { date +%s.%N; }
RESULTS=$RUN/results.tsv
printf 'clip\ttrial\tid\tsize_bytes\tupload_s\tbare_s\tdist_s\tratio\thttp\tplayable\tring_files\tring_unique\tring_replicated\tbare_files\tbare_bytes\tup_end_unix\tplayable_unix\tbare_cpu\twatchable_s\twatchable_unix\twatchable_index\tsegment\tsegment_unix\n' >"$RESULTS"
failed=0

# bare CLIP DIR: runs the reader's ladder command; prints "wall_seconds cpu_seconds" (user + system).
bare() {
  local clip=$1 dir=$2 args
  rm -rf "$dir"; mkdir -p "$dir"
  mapfile -d '' args < <("$LADDER_CMD" --nul --preset "$PRESET" "$clip" "$dir" 2>>"$RUN/logs/ladder_cmd.log")
  ((${#args[@]})) || die "ladder_cmd printed no command for $clip (see $RUN/logs/ladder_cmd.log)"
  "$LADDER_CMD" --preset "$PRESET" "$clip" "$dir" >>"$RUN/logs/ladder_cmd.log" 2>&1
  python3 - "$RUN/logs/bare-ffmpeg.log" "${args[@]}" <<'PY' || die "bare ffmpeg failed on $clip (see $RUN/logs/bare-ffmpeg.log)"
import resource, subprocess, sys, time
with open(sys.argv[1], "a") as err:
    t = time.monotonic()
    # The reader's command reports progress on stdout (-progress pipe:1), which the reader reads; here it
    # would end up in this function's output, so it is dropped.
    rc = subprocess.run(["ffmpeg", *sys.argv[2:]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=err).returncode
    wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {ru.ru_utime + ru.ru_stime:.2f}")
sys.exit(rc)
PY
}

# CPU seconds used so far by each service, as "role self children" lines; "children" is what the process's
# reaped children used (for the dash reader: ffprobe, ffmpeg and the poster's ffmpeg).
cpu_snapshot() {
  local role pid tck
  tck=$(getconf CLK_TCK)
  for role in "${!role_pid[@]}"; do
    pid=${role_pid[$role]}
    # Fields after the ")" that closes the command name: utime is the 12th, stime, cutime, cstime follow.
    sed 's/.*) //' "/proc/$pid/stat" | awk -v r="$role" -v t="$tck" '{printf "%s %.2f %.2f\n", r, ($12+$13)/t, ($14+$15)/t}'
  done
}

# dist CLIP NAME TRACE: uploads through POST /upload; prints "http upload_s dist_s up_end playable_at" (the last
# two as Unix times).
dist() {
  local clip=$1 name=$2 trace=$3 w t_start
  t_start=$(now)
  w=$(TZ=UTC curl -sS -v --trace-time -o /dev/null -H 'Expect:' \
        -w '%{http_code} %{size_upload} %{time_pretransfer}' \
        -F "file=@$clip;type=video/mp4;filename=$name" "http://$B/upload" 2>"$trace") || true
  python3 - "$trace" "$w" "$t_start" <<'PY'
import re, sys
trace, w, t_start = sys.argv[1], sys.argv[2].split(), float(sys.argv[3])
code = w[0] if w else "000"
def secs(line):
    h, m, s = line.split(" ", 1)[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
first = up = resp = None
for line in open(trace, errors="replace"):
    if not re.match(r"\d\d:\d\d:\d\d\.\d+ ", line):
        continue
    if first is None:
        first = line
    if up is None and "We are completely uploaded and fine" in line:
        up = line
    if resp is None and re.search(r"< HTTP/[\d.]+ \d{3}", line):
        resp = line
if not (first and up and resp):
    print(code, "nan", "nan", "-", "-")
    sys.exit()
t0, tu, tr = secs(first), secs(up), secs(resp)
fix = lambda t: t + 86400 if t < t0 else t   # past midnight
tu, tr = fix(tu), fix(tr)
# curl's trace clock is monotonic time plus an offset taken with 1 s resolution, so its absolute values can be
# up to a second off: differences are exact, and the absolute times are re-based on the wall clock read just
# before curl started (a few ms of process start-up early).
print(code, f"{tu - t0:.3f}", f"{tr - tu:.3f}", f"{t_start + tu - t0:.3f}", f"{t_start + tr - t0:.3f}")
PY
}

# first_segment CLIP: prints the name of the first media segment of the lowest video rendition the reader makes
# for CLIP: representations are numbered in ladder order (0 = highest) and the audio comes after the video, so
# the lowest is the number of video renditions - 1, counted as the "-map [vN]" arguments of ladder_cmd's
# command (the same probe and ladder as the reader's).
first_segment() {
  local clip=$1 args a n=0
  mapfile -d '' args < <("$LADDER_CMD" --nul --preset "$PRESET" "$clip" "$RUN/bare/ladder" 2>>"$RUN/logs/ladder_cmd.log")
  for a in "${args[@]}"; do
    if [[ $a =~ ^\[v[0-9]+\]$ ]]; then n=$((n + 1)); fi
  done
  ((n)) || die "no video rendition in ladder_cmd's command for $clip (see $RUN/logs/ladder_cmd.log)"
  echo "chunk-$((n - 1))-00001.m4s"
}

# watch_start ID SEGMENT OUT LIMIT_S: starts the watchable poller (see the header) in the background and sets
# poll_pid. Not called inside $(...): the PID must land in this shell, where watch_stop and cleanup kill it.
# OUT gets one tab-separated line per event, written as it happens (a killed poller loses nothing):
#   watchable UNIX_TIME INDEX_STATUS linked|unlinked POLLS     first 200 of GET /videos/ID
#   segment   UNIX_TIME FILE BYTES POLLS                       first 200 of GET /content/ID/FILE
watch_start() {
  python3 - "$B" "$@" 2>>"$RUN/logs/watch-poller.log" <<'PY' &
import html, http.client, os, re, sys, threading, time

addr, vid, seg, out_path, limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
host, port = addr.rsplit(":", 1)
if host != "127.0.0.1":
    sys.exit(f"watch poller: {addr} is not on 127.0.0.1, not polling it")
parent = os.getppid()
deadline = time.monotonic() + limit
out = open(out_path, "a", buffering=1)
lock = threading.Lock()

def emit(*cols):
    with lock:
        out.write("\t".join(str(c) for c in cols) + "\n")

def get(path, timeout):
    """(status, wall-clock time at which the status line arrived, body)."""
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        t = time.time()
        return r.status, t, r.read()
    finally:
        c.close()

def poll(path, timeout, found):
    polls = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        polls += 1
        try:
            status, t, body = get(path, timeout)
        except (OSError, http.client.HTTPException):
            status = None
        if status == 200:
            found(t, body, polls)
            return
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))

def watchable(t, _body, polls):
    # What the index shows right after: the row's status and whether its name links to the watch page.
    status, linked = "?", "?"
    try:
        _, _, page = get("/", 10)
        m = re.search(r'<tr class="video" data-video-id="%s" data-status="([^"]*)">(.*?)</tr>'
                      % re.escape(html.escape(vid)), page.decode(errors="replace"))
        status = m.group(1) if m else "unlisted"
        linked = "linked" if m and 'href="/videos/' in m.group(2) else "unlinked"
    except (OSError, http.client.HTTPException) as e:
        print(f"watch poller: GET /: {e}", file=sys.stderr)
    emit("watchable", f"{t:.3f}", status, linked, polls)

def segment(t, body, polls):
    emit("segment", f"{t:.3f}", seg, len(body), polls)

# The segment request is a long poll (the broadcaster holds it up to 15 s while the video is processing).
threads = [threading.Thread(target=poll, args=(f"/videos/{vid}", 10, watchable), daemon=True),
           threading.Thread(target=poll, args=(f"/content/{vid}/{seg}", 20, segment), daemon=True)]
for th in threads:
    th.start()
# Bounded: stops when both are seen, at the deadline, or when the script that started it is gone.
while any(th.is_alive() for th in threads) and time.monotonic() < deadline and os.getppid() == parent:
    time.sleep(0.2)
PY
  poll_pid=$!
}

watch_stop() {
  if [ -n "$poll_pid" ]; then
    kill -TERM "$poll_pid" 2>/dev/null || true
    wait "$poll_pid" 2>/dev/null || true
    poll_pid=
  fi
}

# watch_result OUT UP_END: prints "watchable_s watchable_unix index segment segment_unix" from the poller's
# OUT ("nan"/"-" for what it did not see); index is the row's "STATUS,linked|unlinked" right after.
watch_result() {
  python3 - "$1" "$2" <<'PY'
import sys
ev = {}
try:
    for line in open(sys.argv[1]):
        cols = line.rstrip("\n").split("\t")
        ev.setdefault(cols[0], cols)
except FileNotFoundError:
    pass
up = float(sys.argv[2]) if sys.argv[2] not in ("-", "") else float("nan")
w, s = ev.get("watchable"), ev.get("segment")
print(f"{float(w[1]) - up:.3f}" if w else "nan", w[1] if w else "-", f"{w[2]},{w[3]}" if w else "-",
      s[2] if s else "-", s[1] if s else "-")
PY
}

# ring ID: prints "files unique_bytes replicated_bytes" over all storage nodes.
ring() {
  local id=$1 n
  for n in "${nodes[@]}"; do
    curl -fsS "http://$n/v1/blobs?prefix=$id/" || echo '{"blobs":[]}'
  done | jq -rs '[.[].blobs[]] as $all | ($all | unique_by(.key)) as $u
                  | "\($u | length) \($u | map(.bytes) | add // 0) \($all | map(.bytes) | add // 0)"'
}

# playable ID: 1 when the manifest, the first init segment and the watch page are served.
playable() {
  local id=$1 p c
  for p in "content/$id/manifest.mpd" "content/$id/init-0.m4s" "videos/$id"; do
    c=$(curl -sS -o /dev/null -w '%{http_code}' "http://$B/$p" || echo 000)
    [ "$c" = 200 ] || { log "GET /$p answered $c"; echo 0; return; }
  done
  echo 1
}

for spec in $CLIPS; do
  clip=$(make_clip "$spec")
  size=$(stat -c %s "$clip")
  seg=$(first_segment "$clip")
  secs=${spec%%:*}
  for trial in $(seq 1 "$REPEAT"); do
    id="bench-${spec/:/s-}-$STAMP-$trial"
    bare_dir=$RUN/bare/$id
    trace=$RUN/logs/curl-$id.trace
    watch_out=$RUN/watch-$id.tsv
    run_bare() {
      log "$spec #$trial: bare ffmpeg..."
      read -r bare_s bare_cpu < <(bare "$clip" "$bare_dir")
      log "  bare ffmpeg ${bare_s}s wall, ${bare_cpu}s CPU"
    }
    run_dist() {
      log "$spec #$trial: upload $id.mp4 through the broadcaster..."
      cpu_snapshot >"$RUN/cpu-$id.before"
      # Started before curl so it is polling before the upload can commit; stopped when curl has returned
      # (dist only parses the trace after that), so its lifetime is the upload's.
      watch_start "$id" "$seg" "$watch_out" $((secs * 20 > 600 ? secs * 20 : 600))
      read -r http upload_s dist_s up_end resp_at < <(dist "$clip" "$id.mp4" "$trace") \
        || { http=000 upload_s=nan dist_s=nan up_end=- resp_at=-; }
      watch_stop
      cpu_snapshot >"$RUN/cpu-$id.after"
      read -r watch_s watch_at watch_index seg_file seg_at < <(watch_result "$watch_out" "$up_end") \
        || { watch_s=nan watch_at=- watch_index=- seg_file=- seg_at=-; }
      log "  HTTP $http, upload ${upload_s}s, end of upload -> playable ${dist_s}s, -> watchable ${watch_s}s" \
        "(index row then: $watch_index)"
      [ "$watch_at" != - ] || log "  no 200 from GET /videos/$id before curl returned (see $RUN/logs/watch-poller.log)"
    }
    # Alternate the order so that a drift in background load does not always favour the same side.
    if ((trial % 2)); then run_bare; run_dist; else run_dist; run_bare; fi
    bare_files=$(find "$bare_dir" -type f | wc -l)
    bare_bytes=$(find "$bare_dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    rm -rf "$bare_dir"
    read -r ring_files ring_unique ring_repl < <(ring "$id")
    ok=0
    if [ "$http" = 303 ]; then ok=$(playable "$id"); fi
    if [ "$http" != 303 ] || [ "$ok" != 1 ]; then
      failed=1
      log "  FAILED: HTTP $http, playable=$ok (see $trace and $RUN/logs/)"
    fi
    ratio=$(python3 -c 'import sys,math; d,b=float(sys.argv[1]),float(sys.argv[2]); print("nan" if math.isnan(d) else f"{d/b:.2f}")' "$dist_s" "$bare_s")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
      "$spec" "$trial" "$id" "$size" "$upload_s" "$bare_s" "$dist_s" "$ratio" "$http" "$ok" \
      "$ring_files" "$ring_unique" "$ring_repl" "$bare_files" "$bare_bytes" "$up_end" "$resp_at" "$bare_cpu" \
      "$watch_s" "$watch_at" "$watch_index" "$seg_file" "$seg_at" >>"$RESULTS"
  done
done

# --- report ----------------------------------------------------------------------------------------------------
python3 - "$RESULTS" "$RUN" "$PRESET" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY' | tee "$RUN/table.txt"
import csv, glob, math, os, re, sys
from datetime import datetime, timezone

results, run, preset, cores, load = sys.argv[1:6]
logs = os.path.join(run, "logs")
rows = list(csv.DictReader(open(results), delimiter="\t"))
MB = 1e6
WATCH_GOAL = 10.0   # seconds from the end of the upload to watchable (issue 11)

def f(x, fmt="{:.2f}"):
    try:
        v = float(x)
        return "-" if math.isnan(v) else fmt.format(v)
    except ValueError:
        return "-"

print(f"Video benchmark: end of upload -> playable (303), against bare ffmpeg of the same ladder on the same file;")
print(f"end of upload -> watchable (first 200 of GET /videos/ID, polled every 0.1 s while the upload runs)")
print(f"preset {preset}, {cores} cores, load average at the end {load}; R=2, 3 storage nodes")
print(f"goals: ratio <= 1.1 (issue 4); watchable s <= {WATCH_GOAL:g} whatever the length (issue 11, \"watch goal\")")
print()
def cpu(id_):
    """CPU seconds each service (self, reaped children) used from just before the upload to the 303."""
    snap = {}
    for k in ("before", "after"):
        try:
            for l in open(os.path.join(run, f"cpu-{id_}.{k}")):
                role, own, kids = l.split()
                snap.setdefault(role, {})[k] = (float(own), float(kids))
        except FileNotFoundError:
            return {}
    return {role: (v["after"][0] - v["before"][0], v["after"][1] - v["before"][1])
            for role, v in snap.items() if "before" in v and "after" in v}

hdr = ["clip", "#", "size MB", "upload s", "bare s", "dist s", "watchable s", "ratio", "goal", "watch goal",
       "HTTP", "playable",
       "ring files", "unique MB", "replicated MB", "bare files", "bare MB", "bare CPU s", "dist CPU s", "CPU ratio"]
table = []
for r in rows:
    ratio = r["ratio"]
    goal = "-" if ratio in ("nan", "") else ("met" if float(ratio) <= 1.1 else "missed")
    ws = float(r["watchable_s"] or "nan")
    watch_goal = "-" if math.isnan(ws) else ("met" if ws <= WATCH_GOAL else "missed")
    c = cpu(r["id"])
    dist_cpu = sum(a + b for a, b in c.values()) if c else math.nan
    bare_cpu = float(r["bare_cpu"] or "nan")
    table.append([r["clip"], r["trial"], f(float(r["size_bytes"]) / MB, "{:.1f}"), f(r["upload_s"]), f(r["bare_s"]),
                  f(r["dist_s"]), f(ws), f(ratio), goal, watch_goal, r["http"], "yes" if r["playable"] == "1" else "NO",
                  r["ring_files"], f(float(r["ring_unique"] or 0) / MB), f(float(r["ring_replicated"] or 0) / MB),
                  r["bare_files"], f(float(r["bare_bytes"] or 0) / MB),
                  f(bare_cpu, "{:.1f}"), f(dist_cpu, "{:.1f}"), f(dist_cpu / bare_cpu)])
w = [max(len(str(x)) for x in col) for col in zip(hdr, *table)]
line = lambda cells: "  ".join(str(c).rjust(n) for c, n in zip(cells, w))
print(line(hdr))
for t in table:
    print(line(t))
by_clip = {}
for r in rows:
    if r["ratio"] not in ("nan", ""):
        by_clip.setdefault(r["clip"], []).append(r)
for clip, rs in by_clip.items():
    if len(rs) > 1:
        med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2
        b, d = med([float(r["bare_s"]) for r in rs]), med([float(r["dist_s"]) for r in rs])
        ws = [float(r["watchable_s"]) for r in rs if r["watchable_s"] not in ("nan", "")]
        wm = f", median watchable {med(ws):.2f} s" if ws else ""
        print(f"{clip}: median bare {b:.2f} s, median dist {d:.2f} s, ratio of medians {d / b:.2f}{wm} over {len(rs)} uploads")
print()
print("dist CPU s = CPU time of every service (and the dash reader's ffprobe/ffmpeg children) from just before the")
print("upload to the 303, upload included; bare CPU s = the bare ffmpeg's user + system time. CPU time is less")
print("sensitive than wall time to what else the machine runs, but not immune (shared cores, caches, SMT).")
print("watchable s = end of upload -> first 200 of GET /videos/ID (late by up to the 0.1 s poll period plus one")
print("request); \"-\" when the poller saw none before the 303. The breakdown gives the index row's status then.")

# Where the time went, per upload, from the logs (all UTC).
ANSI = re.compile(r"\x1b\[[0-9;]*m")
def events(path):
    out = []
    try:
        for raw in open(path, errors="replace"):
            s = ANSI.sub("", raw)
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+(\w+)\s+(.*)", s)
            if m:
                t = datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=timezone.utc).timestamp()
                out.append((t, m.group(3)))
    except FileNotFoundError:
        pass
    return out

dash = events(os.path.join(logs, "reader-dash.log"))
bcast = events(os.path.join(logs, "broadcaster.log"))
stores = [e for p in sorted(glob.glob(os.path.join(logs, "storage*.log"))) for e in events(p)]

def dur(x):
    m = re.search(r"([\d.]+)(ms|s|µs|us|ns)\b", x or "")
    if not m: return math.nan
    return float(m.group(1)) * {"s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}[m.group(2)]

print()
print("Where the time went (seconds after the end of the upload, from curl's trace and the services' logs):")
for r in rows:
    if r["up_end_unix"] in ("-", ""):
        continue
    t_up, t_303 = float(r["up_end_unix"]), float(r["playable_unix"])
    in_win = lambda evs: [(t, m) for t, m in evs if t_up - 1 <= t <= t_303 + 1]
    d = in_win(dash)
    # The dash reader names the broadcaster's upload id (not the video id) in "ffmpeg started" (its staging
    # file); "transcode done" names neither and is the first one after that start. Every file and the poster
    # are on the ring at "video ready" (older readers: "video transcoded onto the ring").
    onring, uid = next(((t, re.search(r"upload=(\w+)", m)) for t, m in d
                        if ("video ready" in m or "video transcoded onto the ring" in m)
                        and f"video={r['id']} " in m), (math.nan, None))
    committed = next((t for t, m in d if "video committed" in m and re.search(rf"video={re.escape(r['id'])}(\s|$)", m)),
                     math.nan)
    uid = uid.group(1) if uid else "?"
    start = next((t for t, m in d if "ffmpeg started" in m and re.search(rf"/{uid}\b", m)), math.nan)
    done = next(((t, m) for t, m in d if "transcode done" in m and t >= start), (math.nan, ""))
    ready = next((t for t, m in in_win(bcast) if "video ready" in m and r["id"] in m), math.nan)
    puts = sorted(t for t, m in in_win(stores) if "stored" in m and f"{r['id']}/" in m)
    first_chunk = min((t for t, m in in_win(stores) if "stored" in m and f"{r['id']}/chunk-" in m), default=math.nan)
    ffm = dur(re.search(r"ffmpeg_elapsed=(\S+)", done[1]).group(1)) if "ffmpeg_elapsed=" in done[1] else math.nan
    el = dur(re.search(r"\belapsed=(\S+)", done[1]).group(1)) if re.search(r"\belapsed=", done[1]) else math.nan
    tr_start = done[0] - el if not math.isnan(el) else math.nan
    ffmpeg_exit = tr_start + ffm
    rel = lambda t: "-" if math.isnan(t) else f"{t - t_up:+.2f}"
    late = [t for t in puts if not math.isnan(ffmpeg_exit) and t > ffmpeg_exit]
    print(f"  {r['id']}: bare ffmpeg {f(r['bare_s'])} s, ffmpeg in the dash reader {f(ffm)} s "
          f"({f(ffm / float(r['bare_s']) if r['bare_s'] not in ('', 'nan') else math.nan)}x bare)")
    print(f"    ffmpeg started {rel(start)} (staging fsync + ffprobe), exited {rel(ffmpeg_exit)}, "
          f"output validated {rel(done[0])}, all files + poster on the ring {rel(onring)}, "
          f"listed ready {rel(ready)}, 303 {rel(t_303)}")
    wat = float(r["watchable_unix"]) if r["watchable_unix"] not in ("-", "") else math.nan
    sat = float(r["segment_unix"]) if r["segment_unix"] not in ("-", "") else math.nan
    idx = r["watchable_index"].split(",") if r["watchable_index"] not in ("-", "") else ["-", "-"]
    print(f"    committed by the dash reader {rel(committed)}, first chunk-* stored {rel(first_chunk)}, "
          f"watchable {rel(wat)} (index row right after: data-status={idx[0]}, name {idx[-1]}), "
          f"lowest rendition's first segment {r['segment']} served {rel(sat)}")
    if puts:
        print(f"    ring: {len(puts)} blob writes (replicas), first {rel(puts[0])}, last {rel(puts[-1])}; "
              f"{len(late)} after ffmpeg exited")
    c = cpu(r["id"])
    if c:
        kids = c.get("reader-dash", (0, 0))[1]
        own = {role: v[0] for role, v in c.items()}
        nodes = sum(v for role, v in own.items() if role.startswith("storage"))
        print(f"    CPU s: dash reader's ffprobe+ffmpeg+poster {kids:.2f} (bare ffmpeg {f(r['bare_cpu'])}), "
              f"dash reader {own.get('reader-dash', 0):.2f}, storage nodes {nodes:.2f}, "
              f"broadcaster {own.get('broadcaster', 0):.2f}, disk reader {own.get('reader-disk', 0):.2f}")
PY

if ((failed)); then
  log "some uploads failed or are not playable"
  exit 1
fi
log "done: $RESULTS, $RUN/table.txt"
