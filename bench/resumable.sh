#!/usr/bin/env bash
# Resumable-upload benchmark (issue 10, DESIGN.md section 7): tus 1.0 appends on /uploads against one plain
# PUT /broadcast of the same file, in the same run, on the same machine, to the same targets.
#
#   bench/resumable.sh                       # 1 GiB file, 16 appends of 64 MiB, 2 disk readers + the ring
#   SIZE_MIB=256 bench/resumable.sh          # a quicker one
#   TARGETS=disk bench/resumable.sh          # the 2 disk readers only
#
# It starts (on 127.0.0.1, free ports read from the "listening on ADDR" log lines) 2 disk readers and 3 storage
# nodes (R=2, the ring is one target: BROADCASTER_HOST_LIST="r1;r2;ring"), then, each phase on a broadcaster
# process of its own (stopped and restarted between phases, same targets and SQLite metadata), so that each
# phase has its own peak RSS (VmHWM from /proc/PID/status, start-up included):
#   1. plain      one `curl -T FILE PUT /broadcast/NAME`; MB/s from curl's time_total; then the same PUT with
#                 the body from a pipe (`dd | curl -T -`, see BODY), the way the PATCHes below send theirs, so
#                 that the cost of the pipe shows apart from the cost of resumability
#   2. resumable  POST /uploads (Tus-Resumable: 1.0.0, Upload-Length, Upload-Metadata "filename <base64>"),
#                 then SIZE_MIB/APPEND_MIB PATCHes (Content-Type: application/offset+octet-stream,
#                 Upload-Offset), each `dd … | curl -X PATCH -T -` straight from the file (no temp copies;
#                 with Content-Length, see BODY);
#                 MB/s from the start of the POST to the last 204, per-append latency = curl's time_total
#   3. reconnect  another upload of the same file: RECONNECT_TRIALS times, a `curl -X PATCH -T -` sending the
#                 rest of the file (as tus-js-client's single PATCH does) is fed CUT_MIB from a pipe and
#                 SIGKILLed as soon as the last of those bytes is in the pipe (a cut mid-append, data in
#                 flight); the client then reconnects: new connection, HEAD, PATCH of the next PROBE_KIB at the
#                 offset HEAD gave (re-sent at the offset a 409 names, if the cut append was still being
#                 checkpointed). "Reconnect to the first accepted byte" = from issuing HEAD to that PATCH's 204,
#                 whose Upload-Offset is the first advance (the bytes are fsynced on every target and the offset
#                 checkpointed). Then the rest of the file goes as one PATCH, HEAD polled every 10 ms to time its
#                 first Upload-Offset advance (its first checkpoint)
# and finally checks every upload byte for byte: SHA-256 of the file against the broadcaster's summaries, each
# disk reader's committed copy, and GET /files/NAME from the broadcaster (when the ring is a target); PASS/FAIL.
# The table (stdout, also bench/out/resumable.txt): mode | MB/s | ratio to plain PUT | broadcaster peak RSS |
# append p50/p95, then the reconnect numbers (p50/p95/max; percentiles are nearest-rank) and the checks.
# Goal: broadcaster peak RSS < 32 MiB in every phase (informational).
#
# Environment:
#   SIZE_MIB              file size in MiB (default 1024)
#   APPEND_MIB            bytes per PATCH in the resumable phase, MiB (default 64)
#   TARGETS               disk+ring (default: 2 disk readers and the ring of 3 storage nodes), disk, or ring
#   RECONNECT_TRIALS      cuts in the reconnect phase (default 10; 0 skips the phase)
#   CUT_MIB               bytes fed to each curl before it is killed, MiB (default 16)
#   PROBE_KIB             size of the first resumed PATCH after a cut, KiB (default 64, one default chunk)
#   BODY                  how curl sends a body it reads from a pipe: sized (default; Content-Length, as a tus
#                         client sending a slice of a file does) or chunked (Transfer-Encoding: chunked, what
#                         `curl -T -` does by itself)
#   BENCH_DIR             where the generated data file is kept and reused (default bench/out/data, shared with
#                         fanout.sh; same content for the same size)
#   BENCH_CURL_MAX_TIME   seconds before a single curl gives up (default 3600)
#   BENCH_KEEP=1          keep the run directory (reader data, storage nodes, meta.db); otherwise it is removed
#   BENCH_SKIP_BUILD=1    do not run cargo build (use the existing target/release binaries)
#   BENCH_BROADCASTER_BIN, BENCH_READER_BIN, BENCH_STORAGE_NODE_BIN  other binaries (default target/release/…)
# Any BROADCASTER_* / READER_* / STORAGE_NODE_* variable you export (buffer size, queue depth, checkpoint bytes…)
# reaches the services; the script sets only hosts, ports, host list, storage nodes, replication (default 2),
# metadata and data directories. Logs: bench/out/resumable-logs (wiped at start).
#
# Every process is started and stopped (by PID) by the script itself, also when it fails; all traffic goes to
# 127.0.0.1. Progress goes to stderr, the table to stdout. Exit status: 0 when every upload succeeded and every
# copy matched (goals met or not), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REPORT="$ROOT/bench/resumable_report.py"
OUT="$ROOT/bench/out"
DATA=${BENCH_DIR:-$OUT/data}
LOGS="$OUT/resumable-logs"
SIZE_MIB=${SIZE_MIB:-1024}
APPEND_MIB=${APPEND_MIB:-64}
TARGETS=${TARGETS:-disk+ring}
TRIALS=${RECONNECT_TRIALS:-10}
CUT_MIB=${CUT_MIB:-16}
PROBE_KIB=${PROBE_KIB:-64}
BODY=${BODY:-sized}
CURL_MAX_TIME=${BENCH_CURL_MAX_TIME:-3600}
N_DISK=2
N_NODES=3
REPLICATION=${BROADCASTER_REPLICATION:-2}
MIB=$((1024 * 1024))

log() { printf '[resumable-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
# arguments

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
posint SIZE_MIB "$SIZE_MIB"
posint APPEND_MIB "$APPEND_MIB"
posint CUT_MIB "$CUT_MIB"
posint PROBE_KIB "$PROBE_KIB"
case $BODY in sized | chunked) ;; *) die "BODY must be sized or chunked, got '$BODY'" ;; esac
[[ $TRIALS =~ ^[0-9]+$ ]] || die "RECONNECT_TRIALS must be a non-negative integer, got '$TRIALS'"
case $TARGETS in
    disk+ring | ring+disk | all) TARGETS=disk+ring; USE_DISK=1; USE_RING=1 ;;
    disk) USE_DISK=1; USE_RING=0 ;;
    ring) USE_DISK=0; USE_RING=1 ;;
    *) die "TARGETS must be disk+ring, disk or ring, got '$TARGETS'" ;;
esac
SIZE=$((SIZE_MIB * MIB))
APPEND=$((APPEND_MIB * MIB))
CUT=$((CUT_MIB * MIB))
PROBE=$((PROBE_KIB * 1024))
NTARGETS=$((USE_DISK * N_DISK + USE_RING))

# ---------------------------------------------------------------------------------------------------------------
# processes we start, and only those, are stopped on exit

WORK=""
declare -A LIVE=() # pid -> what
track() { LIVE[$1]=$2; }
untrack() { unset "LIVE[$1]"; }

stop_pid() { # SIGTERM, up to 10 s, then SIGKILL
    local pid=$1 t
    kill -TERM "$pid" 2>/dev/null || true
    for ((t = 0; t < 100; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "${LIVE[$pid]:-pid $pid} did not stop on SIGTERM within 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!LIVE[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${!LIVE[@]}"; do stop_pid "$pid"; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            log "keeping $WORK (BENCH_KEEP=1)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# tools and build

for tool in curl python3 openssl sha256sum dd base64 awk df flock; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
# the interpreter itself, not a version-manager shim
PY=$(python3 -c 'import sys; print(sys.executable)')
if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is required (install Rust, e.g. with rustup)"
    log "building release binaries"
    cargo build --release --bins -p broadcaster -p reader -p storage-node >&2 || die "cargo build failed"
fi
BROADCASTER=${BENCH_BROADCASTER_BIN:-$ROOT/target/release/broadcaster}
READER=${BENCH_READER_BIN:-$ROOT/target/release/reader}
NODE=${BENCH_STORAGE_NODE_BIN:-$ROOT/target/release/storage-node}
[[ -x $BROADCASTER && -x $READER && -x $NODE ]] || die "missing $BROADCASTER, $READER or $NODE"

mkdir -p "$OUT" "$DATA"
exec 9>"$OUT/.resumable.lock"
flock -n 9 || die "another bench/resumable.sh is running (it holds $OUT/.resumable.lock)"
rm -rf "$LOGS" "$OUT"/resumable-run.*
mkdir -p "$LOGS"
WORK=$(mktemp -d "$OUT/resumable-run.XXXXXX")
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
emit() { printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------------------------------
# disk space and the data file

avail() { df -P -B1 "$1" | awk 'NR == 2 { print $4 }'; }
human() { awk -v b="$1" 'BEGIN { if (b >= 2^30) printf "%.1f GiB", b / 2^30; else printf "%.0f MiB", b / 2^20 }'; }
filesize() { stat -c %s "$1" 2>/dev/null || echo -1; }

# fanout.sh's name for a file of this size (BENCH_SIZES=1G -> bench-1G.bin): the same bytes, shared
if ((SIZE_MIB % 1024 == 0)); then FILE="$DATA/bench-$((SIZE_MIB / 1024))G.bin"; else FILE="$DATA/bench-${SIZE_MIB}M.bin"; fi
# four uploads stay until the final check: disk copies + R ring copies each, plus staging and a margin
COPIES=$((USE_DISK * N_DISK + USE_RING * REPLICATION))
NEED=$((4 * COPIES * SIZE + SIZE + 512 * MIB))
[[ $(filesize "$FILE") == "$SIZE" ]] || NEED=$((NEED + SIZE))
(($(avail "$WORK") >= NEED)) || die "needs $(human "$NEED") free under $OUT, $(human "$(avail "$WORK")") available"

if [[ $(filesize "$FILE") == "$SIZE" ]]; then
    log "reusing $FILE"
else
    log "generating $FILE ($(human "$SIZE"))"
    rm -f "$FILE" "$FILE.tmp"
    # the same pseudo-random content (AES-CTR keystream) fanout.sh generates for this size
    { openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv "$(printf '%032x' "$SIZE")" \
        </dev/zero 2>/dev/null || true; } | head -c "$SIZE" >"$FILE.tmp"
    [[ $(filesize "$FILE.tmp") == "$SIZE" ]] || die "could not generate $FILE"
    mv "$FILE.tmp" "$FILE"
fi
SHA=$(sha256sum "$FILE" | cut -d' ' -f1) # also brings the file into the page cache

# ---------------------------------------------------------------------------------------------------------------
# services

strip_ansi() { sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1"; }

wait_port() { # wait_port LOGFILE PID WHAT -> prints the port from "listening on 127.0.0.1:PORT"
    local logf=$1 pid=$2 what=$3 port="" i
    for ((i = 0; i < 600; i++)); do
        port=$(strip_ansi "$logf" 2>/dev/null | grep -aoE 'listening on[^0-9]*127\.0\.0\.1:[0-9]+' | head -1 |
            sed -E 's/.*:([0-9]+)$/\1/' || true)
        [[ -n $port ]] && { echo "$port"; return 0; }
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited before listening; its log ($logf):"
            tail -n 20 "$logf" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    log "$what printed no 'listening on 127.0.0.1:PORT' line in 30 s; its log ($logf):"
    tail -n 20 "$logf" >&2 || true
    return 1
}

declare -a RPORT=() RDIR=() NADDR=()
start_reader() { # start_reader INDEX
    local i=$1 dir="$WORK/reader$1" logf="$LOGS/reader$1.log" pid port
    mkdir -p "$dir"
    : >"$logf"
    READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$dir" RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 \
        "$READER" >>"$logf" 2>&1 &
    pid=$!
    track "$pid" "reader $i"
    port=$(wait_port "$logf" "$pid" "reader $i") || die "reader $i did not start"
    RPORT[i]=$port RDIR[i]=$dir
    log "reader $i: pid $pid, http://127.0.0.1:$port, data $dir"
}

start_node() { # start_node INDEX
    local i=$1 dir="$WORK/node$1" logf="$LOGS/node$1.log" pid port
    mkdir -p "$dir"
    : >"$logf"
    STORAGE_NODE_HTTP_HOST=127.0.0.1 STORAGE_NODE_HTTP_PORT=0 STORAGE_NODE_DATA_DIR="$dir" \
        RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 "$NODE" >>"$logf" 2>&1 &
    pid=$!
    track "$pid" "storage node $i"
    port=$(wait_port "$logf" "$pid" "storage node $i") || die "storage node $i did not start"
    NADDR[i]="127.0.0.1:$port"
    log "storage node $i: pid $pid, http://127.0.0.1:$port, data $dir"
}

BPID="" BPORT=""
start_broadcaster() { # start_broadcaster PHASE: a fresh broadcaster process on the shared targets and metadata
    local phase=$1 logf="$LOGS/broadcaster-$1.log" nodes
    nodes=$(IFS=';'; echo "${NADDR[*]}")
    : >"$logf"
    mkdir -p "$WORK/bc"
    (cd "$WORK/bc" && exec env BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 \
        BROADCASTER_HOST_LIST="$HOSTLIST" BROADCASTER_METADATA="sqlite:$WORK/meta.db" \
        BROADCASTER_STORAGE_NODES="$nodes" BROADCASTER_REPLICATION="$REPLICATION" \
        RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 "$BROADCASTER" >>"$logf" 2>&1) &
    BPID=$!
    track "$BPID" "broadcaster ($phase)"
    BPORT=$(wait_port "$logf" "$BPID" "broadcaster ($phase)") || die "broadcaster ($phase) did not start"
    log "broadcaster ($phase): pid $BPID, http://127.0.0.1:$BPORT, targets $HOSTLIST"
    curl -sS -m 5 -o /dev/null "http://127.0.0.1:$BPORT/healthz" || log "warning: GET /healthz did not answer"
    if ((USE_RING)) && ! curl -fsS -m 10 -o /dev/null "http://127.0.0.1:$BPORT/admin/nodes"; then
        die "the broadcaster has no ring layout (GET /admin/nodes)"
    fi
    emit "${phase}_idle_kib" "$(hwm_kib "$BPID")"
}
stop_broadcaster() {
    [[ -n $BPID ]] || return 0
    stop_pid "$BPID"
    BPID="" BPORT=""
}

hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.3f", b / 1e6 / t; else print "" }'; }
header_of() { # header_of FILE NAME: the last value of header NAME in a curl -D dump
    awk -v k="$2" '{ sub(/\r$/, ""); n = index($0, ":");
        if (n && tolower(substr($0, 1, n - 1)) == k) { v = substr($0, n + 1); sub(/^[ \t]+/, "", v); last = v } }
        END { print last }' "$1"
}

# ---------------------------------------------------------------------------------------------------------------
# tus requests

TUS=(-H 'Tus-Resumable: 1.0.0')
# `curl -T -` sends a pipe chunked; with BODY=sized it sends Content-Length instead (as a tus client slicing a
# file does) and no Transfer-Encoding
SIZED=()
sized() { # sized LENGTH: sets SIZED, the curl arguments for a body of LENGTH bytes from a pipe
    SIZED=()
    if [[ $BODY == sized ]]; then SIZED=(-H 'Transfer-Encoding:' -H "Content-Length: $1"); fi
}

create_upload() { # create_upload NAME LENGTH -> prints the id
    local hdr="$WORK/create.hdr" body="$WORK/create.body" code loc meta
    meta=$(printf '%s' "$1" | base64 -w0)
    code=$(curl -sS -m 60 -X POST "${TUS[@]}" -H "Upload-Length: $2" -H "Upload-Metadata: filename $meta" \
        -D "$hdr" -o "$body" -w '%{http_code}' "http://127.0.0.1:$BPORT/uploads") || { log "POST /uploads: curl failed"; return 1; }
    [[ $code == 201 ]] || { log "POST /uploads answered $code: $(head -c 300 "$body")"; return 1; }
    loc=$(header_of "$hdr" location)
    [[ $loc =~ /uploads/([0-9a-f]{32})$ ]] || { log "POST /uploads: unexpected Location '$loc'"; return 1; }
    echo "${BASH_REMATCH[1]}"
}

P_CODE="" P_TIME="" P_OFFSET=""
patch_append() { # patch_append ID OFFSET LEN: bytes OFFSET..OFFSET+LEN of the file, piped, no copy on disk
    local hdr="$WORK/patch.hdr" out rc=0
    sized "$3"
    out=$(dd if="$FILE" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none |
        curl -sS -m "$CURL_MAX_TIME" -X PATCH "${TUS[@]}" -H 'Content-Type: application/offset+octet-stream' \
            -H "Upload-Offset: $2" "${SIZED[@]}" -T - -D "$hdr" -o "$WORK/patch.body" \
            -w '%{http_code} %{time_total}' "http://127.0.0.1:$BPORT/uploads/$1") || rc=$?
    read -r P_CODE P_TIME <<<"$out"
    P_OFFSET=$(header_of "$hdr" upload-offset)
    return $rc
}

upload_committed() { # upload_committed ID: GET /uploads/ID shows it committed with the file's digest on every target
    local doc="$WORK/upload-$1.json" verdict
    curl -sS -m 60 -o "$doc" "http://127.0.0.1:$BPORT/uploads/$1" || { log "GET /uploads/$1 failed"; return 1; }
    if ! verdict=$("$PY" "$REPORT" check-summary "$doc" "$SIZE" "$SHA" "$NTARGETS" summary); then
        log "upload $1: $verdict"
        return 1
    fi
    log "upload $1: $verdict"
}

# ---------------------------------------------------------------------------------------------------------------
# start

FAILED=0
fail() { log "FAILED: $*"; FAILED=1; }

BUILD_DESC="main $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && BUILD_DESC+=" (working tree has changes)"
[[ -n ${BENCH_BROADCASTER_BIN:-} ]] && BUILD_DESC="broadcaster $BROADCASTER"
emit commit "$BUILD_DESC"
emit cores "$(nproc)"
emit size_bytes "$SIZE"
emit append_bytes "$APPEND"
emit body "$BODY"
emit checkpoint_desc "${BROADCASTER_RESUMABLE_CHECKPOINT_BYTES:+$BROADCASTER_RESUMABLE_CHECKPOINT_BYTES bytes}"

log "file $FILE ($(human "$SIZE"), sha256 $SHA); appends of $APPEND_MIB MiB; targets $TARGETS; $(nproc) core(s)"
HOSTLIST=""
if ((USE_DISK)); then
    for ((i = 1; i <= N_DISK; i++)); do
        start_reader "$i"
        HOSTLIST+="${HOSTLIST:+;}127.0.0.1:${RPORT[i]}"
    done
fi
if ((USE_RING)); then
    for ((i = 1; i <= N_NODES; i++)); do start_node "$i"; done
    HOSTLIST+="${HOSTLIST:+;}ring"
fi
DESC=""
((USE_DISK)) && DESC="$N_DISK disk readers"
((USE_RING)) && DESC+="${DESC:+ + }the ring ($N_NODES storage nodes, R=$REPLICATION)"
emit targets_desc "$DESC"

# warm-up, not measured, on a broadcaster of its own: connections, directories, the ring layout, the targets'
# append paths
start_broadcaster warmup
head -c $MIB /dev/urandom >"$WORK/warmup.bin"
code=$(curl -sS -m 60 -T "$WORK/warmup.bin" "http://127.0.0.1:$BPORT/broadcast/warmup.bin" -o /dev/null \
    -w '%{http_code}') || true
[[ $code == 201 ]] || log "warning: warm-up PUT answered HTTP ${code:-nothing}"
if wid=$(create_upload warmup-resumable.bin "$MIB"); then
    FILE_SAVED=$FILE FILE="$WORK/warmup.bin"
    patch_append "$wid" 0 "$MIB" || true
    FILE=$FILE_SAVED
    [[ $P_CODE == 204 ]] || log "warning: warm-up PATCH answered HTTP ${P_CODE:-nothing}"
fi
stop_broadcaster
if ((USE_DISK)); then for ((i = 1; i <= N_DISK; i++)); do rm -f "${RDIR[i]}/files/warmup"*; done; fi

STAMP=$(date +%s)
NAME_PLAIN="resumable-bench-$STAMP-plain.bin"
NAME_PIPE="resumable-bench-$STAMP-plain-pipe.bin"
NAME_RES="resumable-bench-$STAMP-tus.bin"
NAME_RC="resumable-bench-$STAMP-cuts.bin"

# ---------------------------------------------------------------------------------------------------------------
# 1. plain PUT

log "== plain: curl -T PUT /broadcast/$NAME_PLAIN"
start_broadcaster plain
sync
rc=0
out=$(curl -sS -m "$CURL_MAX_TIME" -T "$FILE" "http://127.0.0.1:$BPORT/broadcast/$NAME_PLAIN" -o "$WORK/plain.json" \
    -w '%{http_code} %{time_total}') || rc=$?
hwm=$(hwm_kib "$BPID")
stop_broadcaster
read -r code t <<<"$out"
if ((rc != 0)); then
    fail "plain PUT: curl exit $rc ($out)"
elif [[ $code != 201 ]]; then
    fail "plain PUT: HTTP $code: $(head -c 300 "$WORK/plain.json")"
elif ! verdict=$("$PY" "$REPORT" check-summary "$WORK/plain.json" "$SIZE" "$SHA" "$NTARGETS"); then
    fail "plain PUT summary: $verdict"
else
    emit plain_mbps "$(mbps "$SIZE" "$t")"
    emit plain_hwm_kib "$hwm"
    log "plain: $(mbps "$SIZE" "$t") MB/s (${t}s), broadcaster VmHWM $hwm KiB; $verdict"
fi

# ---------------------------------------------------------------------------------------------------------------
# 1b. plain PUT with the body from a pipe, sent as the PATCHes below send theirs (dd | curl -T -, BODY): the
# cost of the pipe alone

log "== plain from a pipe: dd | curl -T - PUT /broadcast/$NAME_PIPE"
start_broadcaster pipe
sync
rc=0
sized "$SIZE"
out=$(dd if="$FILE" bs=1M status=none |
    curl -sS -m "$CURL_MAX_TIME" "${SIZED[@]}" -T - "http://127.0.0.1:$BPORT/broadcast/$NAME_PIPE" \
        -o "$WORK/pipe.json" -w '%{http_code} %{time_total}') || rc=$?
hwm=$(hwm_kib "$BPID")
stop_broadcaster
read -r code t <<<"$out"
if ((rc != 0)); then
    fail "plain PUT from a pipe: exit $rc ($out)"
elif [[ $code != 201 ]]; then
    fail "plain PUT from a pipe: HTTP $code: $(head -c 300 "$WORK/pipe.json")"
elif ! verdict=$("$PY" "$REPORT" check-summary "$WORK/pipe.json" "$SIZE" "$SHA" "$NTARGETS"); then
    fail "plain PUT from a pipe, summary: $verdict"
else
    emit pipe_mbps "$(mbps "$SIZE" "$t")"
    emit pipe_hwm_kib "$hwm"
    log "plain from a pipe: $(mbps "$SIZE" "$t") MB/s (${t}s), broadcaster VmHWM $hwm KiB; $verdict"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. resumable: POST + PATCHes

NAPP=$(((SIZE + APPEND - 1) / APPEND))
emit appends "$NAPP"
log "== resumable: POST /uploads + $NAPP PATCH of $APPEND_MIB MiB ($NAME_RES)"
start_broadcaster resumable
sync
t0=$(now)
ok=1
if ! id=$(create_upload "$NAME_RES" "$SIZE"); then
    fail "resumable: creation failed"
    ok=0
else
    for ((k = 0; k < NAPP; k++)); do
        off=$((k * APPEND))
        len=$((SIZE - off < APPEND ? SIZE - off : APPEND))
        rc=0
        patch_append "$id" "$off" "$len" || rc=$?
        if ((rc != 0)) || [[ $P_CODE != 204 || $P_OFFSET != $((off + len)) ]]; then
            fail "resumable: PATCH $((k + 1))/$NAPP at $off: curl exit $rc, HTTP ${P_CODE:-?}, Upload-Offset '${P_OFFSET}' (want $((off + len))): $(head -c 300 "$WORK/patch.body" 2>/dev/null)"
            ok=0
            break
        fi
        emit append_s "$P_TIME"
        log "  PATCH $((k + 1))/$NAPP: ${P_TIME}s, Upload-Offset $P_OFFSET"
    done
fi
t1=$(now)
hwm=$(hwm_kib "$BPID")
if ((ok)) && upload_committed "$id"; then
    t=$(elapsed "$t0" "$t1")
    emit res_mbps "$(mbps "$SIZE" "$t")"
    emit resumable_hwm_kib "$hwm"
    log "resumable: $(mbps "$SIZE" "$t") MB/s (${t}s from POST to the last 204), broadcaster VmHWM $hwm KiB"
elif ((ok)); then
    fail "resumable: the upload did not commit as expected"
fi
stop_broadcaster

# ---------------------------------------------------------------------------------------------------------------
# 3. reconnect after cuts, then the rest in one PATCH

if ((TRIALS > 0)); then
    # each trial uses up to CUT + PROBE bytes; leave at least half the file for the final PATCH
    while ((TRIALS * (CUT + PROBE) > SIZE / 2 && CUT > MIB)); do CUT=$((CUT / 2)); done
    if ((TRIALS * (CUT + PROBE) > SIZE / 2)); then
        emit rc_skipped "the file is too small for $TRIALS cuts"
        log "reconnect: skipped, the file is too small for $TRIALS cuts"
        TRIALS=0
    fi
fi
if ((TRIALS > 0)); then
    ((CUT == CUT_MIB * MIB)) || log "reconnect: CUT_MIB lowered to $((CUT / MIB)) so that $TRIALS cuts fit"
    emit cut_bytes "$CUT"
    emit probe_bytes "$PROBE"
    log "== reconnect: $TRIALS cuts of $((CUT / MIB)) MiB, resumed PATCH of $PROBE_KIB KiB, then the rest ($NAME_RC)"
    start_broadcaster reconnect
    sync
    if ! rid=$(create_upload "$NAME_RC" "$SIZE"); then
        fail "reconnect: creation failed"
    elif ! BODY=$BODY "$PY" "$REPORT" reconnect "$BPORT" "$rid" "$FILE" "$TRIALS" "$CUT" "$PROBE" "$RESULTS"; then
        fail "reconnect: a trial failed (see above)"
    elif ! BODY=$BODY "$PY" "$REPORT" resume-rest "$BPORT" "$rid" "$FILE" "$RESULTS"; then
        fail "reconnect: the final PATCH failed"
    else
        hwm=$(hwm_kib "$BPID")
        emit reconnect_hwm_kib "$hwm"
        rest=$(awk -F'\t' '$1 == "rest_bytes" { v = $2 } END { print v }' "$RESULTS")
        rest_s=$(awk -F'\t' '$1 == "rest_s" { v = $2 } END { print v }' "$RESULTS")
        emit rest_mbps "$(mbps "$rest" "$rest_s")"
        log "reconnect phase: broadcaster VmHWM $hwm KiB; the rest: $(mbps "$rest" "$rest_s") MB/s"
        upload_committed "$rid" || fail "reconnect: the upload did not commit as expected"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------
# byte-exactness: reader copies and GET /files/NAME through the broadcaster

log "== checking every copy against sha256 $SHA"
[[ -n $BPID ]] || start_broadcaster check
check_name() { # check_name LABEL NAME
    local label=$1 name=$2 parts=() bad=0 i got
    if ((USE_DISK)); then
        for ((i = 1; i <= N_DISK; i++)); do
            got=$(sha256sum "${RDIR[i]}/files/$name" 2>/dev/null | cut -d' ' -f1 || true)
            if [[ $got == "$SHA" ]]; then parts+=("reader$i ok"); else parts+=("reader$i ${got:-missing}"); bad=1; fi
        done
    fi
    if ((USE_RING)); then
        got=$(curl -sS -m "$CURL_MAX_TIME" -f "http://127.0.0.1:$BPORT/files/$name" | sha256sum | cut -d' ' -f1) || got=""
        if [[ $got == "$SHA" ]]; then parts+=("GET /files ok"); else parts+=("GET /files ${got:-failed}"); bad=1; fi
    fi
    local joined="" p
    for p in "${parts[@]}"; do joined+="${joined:+, }$p"; done
    emit check "$(printf '%-10s %s: %s' "$label" "$name" "$joined")"
    ((bad == 0)) || fail "$label: a copy does not match ($joined)"
}
check_name plain "$NAME_PLAIN"
check_name plain-pipe "$NAME_PIPE"
check_name resumable "$NAME_RES"
((TRIALS > 0)) && check_name cuts "$NAME_RC"
if ((USE_DISK)); then
    for ((i = 1; i <= N_DISK; i++)); do
        left=$(find "${RDIR[i]}/staging" -type f 2>/dev/null | head -3)
        [[ -z $left ]] || emit check "note: reader$i staging not empty after the uploads ended: $(echo "$left" | tr '\n' ' ')"
    done
fi
stop_broadcaster

for pid in "${!LIVE[@]}"; do
    kill -0 "$pid" 2>/dev/null || { fail "${LIVE[$pid]} (pid $pid) is no longer running; see $LOGS"; }
done

emit load "$(cut -d' ' -f1-3 /proc/loadavg)"
emit verdict "$( ((FAILED)) && echo FAIL || echo PASS)"
"$PY" "$REPORT" report "$RESULTS" | tee "$OUT/resumable.txt"
cp "$RESULTS" "$OUT/resumable.tsv"
exit "$FAILED"
