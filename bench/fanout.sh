#!/usr/bin/env bash
# Fan-out benchmark (DESIGN.md section 5).
#
# For each file size, on the same file and in the same run, it measures:
#   fan-out   curl -T FILE into the broadcaster, which streams it to N disk readers (stage, fsync, commit)
#   multipart curl -F file=@FILE, a multipart POST /broadcast into the same broadcaster, same fan-out, at the
#             primary target count only (right after the raw PUT fan-out), to compare the two upload paths
#   direct    curl -T FILE straight into one reader's stage route, then its commit (one plain upload, one copy)
#   one-liner tee FILE into N `socat` TCP senders, each received by a `socat` sink writing a file, then fsync
# and prints throughput, ratios and peak RSS (VmHWM) of the broadcaster and the readers, checks the goals
# (informational), and writes bench/out/fanout.csv (best of repeats), bench/out/fanout_raw.csv (every run)
# and bench/out/fanout.svg.
#
# Environment:
#   BENCH_SIZES          sizes to run, K/M/G suffixes are binary (default "16M 256M 1G 4G")
#   BENCH_REPEAT         runs of each measurement; the best throughput is kept (default 1)
#   BENCH_TARGETS        target counts for the fan-out, e.g. "1 2 3" for a sweep (default "3"); the direct,
#                        one-liner and multipart comparisons use 3 if listed, else the largest count
#   BENCH_MULTIPART      1 (default) also measures the multipart POST /broadcast path; 0 skips it
#   BENCH_DIR            where the generated data files are kept and reused (default bench/out/data)
#   BENCH_WORK           reader data dirs, one-liner outputs, summaries (default bench/out/run; those
#                        subdirectories are wiped at start)
#   BENCH_VERIFY_MAX     copies up to this size are also re-hashed with sha256sum on disk (default 256M;
#                        larger copies are checked by size and by the digests the services report)
#   BENCH_ONELINER_SYNC  fsync (default: `sync FILE...`, an fsync of each output, like the readers do),
#                        syncfs (`sync -f FILE...`) or none
#   BENCH_CURL_MAX_TIME  seconds before a single curl gives up (default 3600)
#   BENCH_SKIP_BUILD=1   do not run cargo build (use the existing target/release binaries)
#   BENCH_BROADCASTER_BIN, BENCH_READER_BIN  other binaries to measure (default target/release/...)
# Any BROADCASTER_* / READER_* variable you export (queue depth, buffer size, stall timeout...) reaches the
# services; the script sets only the hosts, ports, host list and data dirs.
#
# Exit status: 0 when every upload succeeded and every digest matched (goals missed or not), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REPORT="$ROOT/bench/fanout_report.py"
OUT="$ROOT/bench/out"
DATA=${BENCH_DIR:-$OUT/data}
WORK=${BENCH_WORK:-$OUT/run}
LOGS="$OUT/logs"
RAW="$OUT/fanout_raw.csv"
SIZES=${BENCH_SIZES:-16M 256M 1G 4G}
REPEAT=${BENCH_REPEAT:-1}
TARGETS=${BENCH_TARGETS:-3}
VERIFY_MAX_SPEC=${BENCH_VERIFY_MAX:-256M}
ONELINER_SYNC=${BENCH_ONELINER_SYNC:-fsync}
CURL_MAX_TIME=${BENCH_CURL_MAX_TIME:-3600}
MULTIPART=${BENCH_MULTIPART:-1}

log() { printf '[fanout %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
# arguments

to_bytes() { # 16M -> 16777216; plain numbers are bytes
    local s=${1^^} n mult=1
    s=${s%IB}; s=${s%B}
    case $s in
        *K) mult=1024; n=${s%K} ;;
        *M) mult=$((1024 * 1024)); n=${s%M} ;;
        *G) mult=$((1024 * 1024 * 1024)); n=${s%G} ;;
        *T) mult=$((1024 * 1024 * 1024 * 1024)); n=${s%T} ;;
        *) n=$s ;;
    esac
    [[ $n =~ ^[0-9]+$ ]] || die "bad size '$1' (use e.g. 16M, 1G or a byte count)"
    echo $((n * mult))
}

[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer, got '$REPEAT'"
case $ONELINER_SYNC in fsync | syncfs | none) ;; *) die "BENCH_ONELINER_SYNC must be fsync, syncfs or none" ;; esac
[[ $MULTIPART == 0 || $MULTIPART == 1 ]] || die "BENCH_MULTIPART must be 0 or 1, got '$MULTIPART'"
VERIFY_MAX=$(to_bytes "$VERIFY_MAX_SPEC")
read -r -a SIZE_LIST <<<"$SIZES"
read -r -a COUNTS <<<"$TARGETS"
((${#SIZE_LIST[@]} > 0)) || die "BENCH_SIZES is empty"
((${#COUNTS[@]} > 0)) || die "BENCH_TARGETS is empty"
MAXN=0
for n in "${COUNTS[@]}"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= 16)) || die "BENCH_TARGETS entries must be 1..16, got '$n'"
    ((n > MAXN)) && MAXN=$n
done
PRIMARY=$MAXN
for n in "${COUNTS[@]}"; do ((n == 3)) && PRIMARY=3; done
for s in "${SIZE_LIST[@]}"; do to_bytes "$s" >/dev/null; done

# ---------------------------------------------------------------------------------------------------------------
# processes we start, and only those, are stopped on exit

declare -A LIVE=() # pid -> what
track() { LIVE[$1]=$2; }
untrack() { unset "LIVE[$1]"; }

cleanup() {
    local rc=$? pid t
    trap - EXIT INT TERM
    for pid in "${!LIVE[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${!LIVE[@]}"; do
        for ((t = 0; t < 100; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "${LIVE[$pid]} (pid $pid) did not stop on SIGTERM within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# install and build

if ! command -v socat >/dev/null 2>&1; then
    log "installing socat"
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    ($SUDO apt-get update && $SUDO apt-get install -y socat) >&2 || die "could not install socat"
fi
for tool in curl python3 openssl sha256sum tee df; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
# the interpreter itself, not a version-manager shim (a pyenv shim costs ~0.5 s per call)
PY=$(python3 -c 'import sys; print(sys.executable)')
if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is required (install Rust, e.g. with rustup)"
    log "building release binaries"
    cargo build --release --bins -p broadcaster -p reader >&2 || die "cargo build failed"
fi
BROADCASTER=${BENCH_BROADCASTER_BIN:-$ROOT/target/release/broadcaster}
READER=${BENCH_READER_BIN:-$ROOT/target/release/reader}
[[ -x $BROADCASTER && -x $READER ]] || die "missing $BROADCASTER or $READER"

mkdir -p "$OUT" "$DATA"
exec 9>"$OUT/.lock"
flock -n 9 || die "another bench/fanout.sh is running (it holds $OUT/.lock)"
rm -rf "$LOGS" "$WORK"/reader[0-9]* "$WORK/oneliner" "$WORK/summaries" "$WORK/warmup.bin"
mkdir -p "$LOGS" "$WORK/summaries" "$WORK/oneliner"

# ---------------------------------------------------------------------------------------------------------------
# disk space and data files

avail() { df -P -B1 "$1" | awk 'NR == 2 { print $4 }'; }
mountpoint_of() { df -P "$1" | awk 'NR == 2 { print $6 }'; }
human() { awk -v b="$1" 'BEGIN { if (b >= 2^30) printf "%.1f GiB", b / 2^30; else printf "%.0f MiB", b / 2^20 }'; }
filesize() { stat -c %s "$1" 2>/dev/null || echo -1; }

MARGIN=$((512 * 1024 * 1024))
COPIES=$((MAXN > PRIMARY ? MAXN : PRIMARY))

# fits SIZE_BYTES FILE: enough room for the data file (if not there yet) plus COPIES copies plus a margin?
fits() {
    local bytes=$1 file=$2 need_data=0 need_work
    [[ $(filesize "$file") == "$bytes" ]] || need_data=$bytes
    need_work=$((COPIES * bytes + MARGIN))
    if [[ $(mountpoint_of "$DATA") == "$(mountpoint_of "$WORK")" ]]; then
        local a need=$((need_data + need_work))
        a=$(avail "$WORK")
        ((a >= need)) || { echo "needs $(human "$need") free on $(mountpoint_of "$WORK"), $(human "$a") available"; return 1; }
    else
        local a1 a2
        a1=$(avail "$DATA"); a2=$(avail "$WORK")
        ((a1 >= need_data + MARGIN)) || { echo "needs $(human $((need_data + MARGIN))) free for the data file, $(human "$a1") available"; return 1; }
        ((a2 >= need_work)) || { echo "needs $(human "$need_work") free for the copies, $(human "$a2") available"; return 1; }
    fi
    return 0
}

gen_file() { # gen_file BYTES PATH: pseudo-random content (AES-CTR keystream), reused when present
    local bytes=$1 path=$2
    if [[ $(filesize "$path") == "$bytes" ]]; then
        log "reusing $path"
        return 0
    fi
    log "generating $path ($(human "$bytes"))"
    rm -f "$path" "$path.sha256" "$path.tmp"
    { openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv "$(printf '%032x' "$bytes")" \
        </dev/zero 2>/dev/null || true; } | head -c "$bytes" >"$path.tmp"
    [[ $(filesize "$path.tmp") == "$bytes" ]] || die "could not generate $path"
    mv "$path.tmp" "$path"
}

file_sha() { # cached next to the file
    local path=$1 bytes=$2 line
    if [[ -f $path.sha256 && $path.sha256 -nt $path ]]; then
        read -r line <"$path.sha256" || true
        if [[ ${line#* } == "$bytes" && ${line%% *} =~ ^[0-9a-f]{64}$ ]]; then
            echo "${line%% *}"
            return 0
        fi
    fi
    line=$(sha256sum "$path" | cut -d' ' -f1)
    echo "$line $bytes" >"$path.sha256"
    echo "$line"
}

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

declare -a RPID=() RPORT=() RDIR=()
declare -A BPID=() BPORT=()

start_reader() { # start_reader INDEX (1-based)
    local i=$1 dir="$WORK/reader$1" logf="$LOGS/reader$1.log" pid port
    mkdir -p "$dir"
    : >"$logf" # truncate here: the child opens the log after the fork, wait_port must not see an old one
    READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$dir" RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 \
        "$READER" >>"$logf" 2>&1 &
    pid=$!
    track "$pid" "reader $i"
    port=$(wait_port "$logf" "$pid" "reader $i") || die "reader $i did not start"
    RPID[i]=$pid RPORT[i]=$port RDIR[i]=$dir
    log "reader $i: pid $pid, http://127.0.0.1:$port, data $dir"
}

start_broadcaster() { # start_broadcaster N: a broadcaster whose targets are readers 1..N
    local n=$1 logf="$LOGS/broadcaster-n$1.log" list="" i pid port
    for ((i = 1; i <= n; i++)); do list+="${list:+;}127.0.0.1:${RPORT[i]}"; done
    : >"$logf"
    BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 BROADCASTER_HOST_LIST="$list" \
        RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 "$BROADCASTER" >>"$logf" 2>&1 &
    pid=$!
    track "$pid" "broadcaster ($n targets)"
    port=$(wait_port "$logf" "$pid" "broadcaster ($n targets)") || die "broadcaster did not start"
    BPID[$n]=$pid BPORT[$n]=$port
    log "broadcaster with $n target(s): pid $pid, http://127.0.0.1:$port, targets $list"
    if ! curl -sS -m 5 -o /dev/null "http://127.0.0.1:$port/healthz"; then
        log "warning: broadcaster GET /healthz did not answer"
    fi
}

alive() { kill -0 "$1" 2>/dev/null; }

HWM_RESET_WARNED=0
reset_hwm() { # clear_refs 5 resets VmHWM to the current RSS
    local pid
    for pid in "$@"; do
        if ! (echo 5 >"/proc/$pid/clear_refs") 2>/dev/null && ((HWM_RESET_WARNED == 0)); then
            HWM_RESET_WARNED=1
            log "warning: cannot reset VmHWM (/proc/$pid/clear_refs); peaks are since process start"
        fi
    done
}
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
max_hwm_kib() {
    local pid v m=""
    for pid in "$@"; do
        v=$(hwm_kib "$pid")
        [[ -n $v ]] && { [[ -z $m ]] || ((v > m)); } && m=$v
    done
    echo "$m"
}

mbps() { awk -v b="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.3f", b / 1e6 / t; else print "" }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

# ---------------------------------------------------------------------------------------------------------------
# results

FAILED=0
echo "size_label,size_bytes,method,targets,repeat,ok,seconds,mbps,bcast_hwm_kib,reader_hwm_kib,error,note" >"$RAW"
record() { # record LABEL BYTES METHOD TARGETS REPEAT OK SECONDS MBPS BCAST_KIB READER_KIB ERROR NOTE
    local err=${11//[$'\n\r",']/ } note=${12//[$'\n\r",']/ }
    echo "$1,$2,$3,$4,$5,$6,$7,$8,$9,${10},\"$err\",\"$note\"" >>"$RAW"
    if [[ $6 != 1 ]]; then
        FAILED=1
        log "FAILED: $3 $1${4:+ (targets $4)}: ${11}"
    fi
}

sha_ok() { # sha_ok FILE EXPECTED (only for files up to VERIFY_MAX)
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [[ $got == "$2" ]]
}

check_copy() { # check_copy PATH BYTES SHA -> prints a problem, returns 1 on mismatch
    local p=$1 bytes=$2 sha=$3 got
    got=$(filesize "$p")
    [[ $got == "$bytes" ]] || { echo "$p has $got bytes, want $bytes"; return 1; }
    if ((bytes <= VERIFY_MAX)) && ! sha_ok "$p" "$sha"; then
        echo "$p: sha256 mismatch on disk"
        return 1
    fi
    return 0
}

staging_leftovers() { # files left under a reader's staging dir after an upload finished
    local d=$1/staging
    [[ -d $d ]] || return 0
    find "$d" -type f 2>/dev/null | head -5
}

new_id() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# ---------------------------------------------------------------------------------------------------------------
# the measurements

run_fanout() { # run_fanout LABEL BYTES FILE SHA N REPEAT [METHOD]: METHOD fanout (PUT, default) or multipart (POST)
    local label=$1 bytes=$2 file=$3 sha=$4 n=$5 rep=$6 method=${7:-fanout}
    local name="$method-$label-n$n-r$rep.bin" summary="$WORK/summaries/$method-$label-n$n-r$rep.json"
    local port=${BPORT[$n]} bpid=${BPID[$n]} readers=() i out rc=0 code t verdict err="" bh rh want
    for ((i = 1; i <= n; i++)); do readers+=("${RPID[i]}"); done
    alive "$bpid" || { record "$label" "$bytes" "$method" "$n" "$rep" 0 "" "" "" "" "broadcaster ($n targets) is not running" ""; return; }
    sync
    reset_hwm "$bpid" "${readers[@]}"
    if [[ $method == multipart ]]; then
        want=200
        out=$(curl -sS -m "$CURL_MAX_TIME" -F "file=@$file;filename=$name;type=application/octet-stream" \
            "http://127.0.0.1:$port/broadcast" -o "$summary" -w '%{http_code} %{time_total}') || rc=$?
    else
        want=201
        out=$(curl -sS -m "$CURL_MAX_TIME" -T "$file" "http://127.0.0.1:$port/broadcast/$name" -o "$summary" \
            -w '%{http_code} %{time_total}') || rc=$?
    fi
    bh=$(hwm_kib "$bpid")
    rh=$(max_hwm_kib "${readers[@]}")
    read -r code t <<<"$out"
    if ((rc != 0)); then
        err="curl exit $rc ($out)"
    elif [[ $code != "$want" ]]; then
        err="HTTP $code: $(head -c 400 "$summary" 2>/dev/null | tr '\n' ' ')"
    elif ! verdict=$("$PY" "$REPORT" check-summary "$summary" "$bytes" "$sha" "$n"); then
        err="summary: $verdict"
    else
        for ((i = 1; i <= n; i++)); do
            verdict=$(check_copy "${RDIR[i]}/files/$name" "$bytes" "$sha") || { err="reader $i: $verdict"; break; }
        done
    fi
    for ((i = 1; i <= n; i++)); do
        local left
        left=$(staging_leftovers "${RDIR[i]}")
        [[ -z $left ]] || log "note: reader $i staging not empty after a committed upload: $(echo "$left" | tr '\n' ' ')"
        rm -f "${RDIR[i]}/files/$name"
    done
    if [[ -n $err ]]; then
        record "$label" "$bytes" "$method" "$n" "$rep" 0 "${t:-}" "" "$bh" "$rh" "$err" ""
    else
        record "$label" "$bytes" "$method" "$n" "$rep" 1 "$t" "$(mbps "$bytes" "$t")" "$bh" "$rh" "" ""
        log "$(printf '%-9s' "$method") $label to $n: $(mbps "$bytes" "$t") MB/s (${t}s), broadcaster VmHWM ${bh} KiB, max reader VmHWM ${rh} KiB"
    fi
}

run_direct() { # run_direct LABEL BYTES FILE SHA REPEAT
    local label=$1 bytes=$2 file=$3 sha=$4 rep=$5
    local name="direct-$label-r$rep.bin" id stage="$WORK/summaries/direct-$label-r$rep.json" port=${RPORT[1]}
    local rpid=${RPID[1]} out rc=0 code t1 t2 t="" verdict err="" rh
    id=$(new_id)
    alive "$rpid" || { record "$label" "$bytes" direct "" "$rep" 0 "" "" "" "" "reader 1 is not running" ""; return; }
    sync
    reset_hwm "$rpid"
    out=$(curl -sS -m "$CURL_MAX_TIME" -T "$file" "http://127.0.0.1:$port/v1/uploads/$id/$name" -o "$stage" \
        -w '%{http_code} %{time_total}') || rc=$?
    read -r code t1 <<<"$out"
    if ((rc != 0)); then
        err="stage: curl exit $rc ($out)"
    elif [[ $code != 2?? ]]; then
        err="stage: HTTP $code: $(head -c 400 "$stage" 2>/dev/null | tr '\n' ' ')"
    elif ! verdict=$("$PY" "$REPORT" check-stage "$stage" "$bytes" "$sha"); then
        err="stage answer: $verdict"
    else
        out=$(curl -sS -m 600 -X POST "http://127.0.0.1:$port/v1/uploads/$id/commit" -o "$stage.commit" \
            -w '%{http_code} %{time_total}') || rc=$?
        read -r code t2 <<<"$out"
        if ((rc != 0)); then
            err="commit: curl exit $rc ($out)"
        elif [[ $code != 2?? ]]; then
            err="commit: HTTP $code: $(head -c 400 "$stage.commit" 2>/dev/null | tr '\n' ' ')"
        else
            t=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.6f", a + b }')
            verdict=$(check_copy "${RDIR[1]}/files/$name" "$bytes" "$sha") || err="$verdict"
        fi
    fi
    rh=$(hwm_kib "$rpid")
    [[ -n $err ]] && curl -sS -m 30 -o /dev/null -X DELETE "http://127.0.0.1:$port/v1/uploads/$id" 2>/dev/null || true
    rm -f "${RDIR[1]}/files/$name"
    if [[ -n $err ]]; then
        record "$label" "$bytes" direct "" "$rep" 0 "$t" "" "" "$rh" "$err" ""
    else
        record "$label" "$bytes" direct "" "$rep" 1 "$t" "$(mbps "$bytes" "$t")" "" "$rh" "" ""
        log "direct    $label: $(mbps "$bytes" "$t") MB/s (stage ${t1}s + commit ${t2}s), reader VmHWM ${rh} KiB"
    fi
}

run_oneliner() { # run_oneliner LABEL BYTES FILE SHA N REPEAT
    local label=$1 bytes=$2 file=$3 sha=$4 n=$5 rep=$6
    local ports=() sinks=() outs=() i cmd t0 t1 t="" err="" pid note verdict
    mapfile -t ports < <("$PY" "$REPORT" freeports "$n")
    for ((i = 0; i < n; i++)); do
        outs+=("$WORK/oneliner/out$((i + 1))")
        rm -f "${outs[i]}"
    done
    sync
    for ((i = 0; i < n; i++)); do
        socat -u "TCP-LISTEN:${ports[i]},bind=127.0.0.1,reuseaddr" "OPEN:${outs[i]},creat,trunc" \
            2>>"$LOGS/socat.log" &
        sinks+=($!)
        track "$!" "socat sink ${ports[i]}"
    done
    if ! "$PY" "$REPORT" waitlisten 10 "${ports[@]}"; then
        err="socat sinks did not listen"
    else
        # tee FILE into n-1 process substitutions and the pipe, each a socat sender to one sink
        #   tee >(socat -u - TCP:127.0.0.1:P1) >(socat -u - TCP:127.0.0.1:P2) <FILE | socat -u - TCP:127.0.0.1:P3
        cmd="tee"
        for ((i = 0; i < n - 1; i++)); do cmd+=" >(socat -u - TCP:127.0.0.1:${ports[i]})"; done
        cmd+=" <\"\$file\" | socat -u - TCP:127.0.0.1:${ports[n - 1]}"
        t0=$(now)
        if ! eval "$cmd" 2>>"$LOGS/socat.log"; then
            err="tee/socat pipeline failed (see $LOGS/socat.log)"
        fi
    fi
    if [[ -n $err ]]; then
        for pid in "${sinks[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    fi
    for pid in "${sinks[@]}"; do
        if ! wait "$pid"; then [[ -n $err ]] || err="a socat sink failed (see $LOGS/socat.log)"; fi
        untrack "$pid"
    done
    if [[ -z $err ]]; then
        case $ONELINER_SYNC in
            fsync) sync "${outs[@]}" ;;
            syncfs) sync -f "${outs[@]}" ;;
        esac
        t1=$(now)
        t=$(elapsed "$t0" "$t1")
        for ((i = 0; i < n; i++)); do
            verdict=$(check_copy "${outs[i]}" "$bytes" "$sha") || { err="one-liner output $((i + 1)): $verdict"; break; }
        done
    fi
    rm -f "${outs[@]}"
    case $ONELINER_SYNC in
        fsync) note="one-liner time includes an fsync of each output file (sync FILE...)" ;;
        syncfs) note="one-liner time includes a syncfs (sync -f FILE...)" ;;
        none) note="one-liner time excludes any fsync of its output" ;;
    esac
    if [[ -n $err ]]; then
        record "$label" "$bytes" oneliner "$n" "$rep" 0 "$t" "" "" "" "$err" "$note"
    else
        record "$label" "$bytes" oneliner "$n" "$rep" 1 "$t" "$(mbps "$bytes" "$t")" "" "" "" "$note"
        log "one-liner $label to $n: $(mbps "$bytes" "$t") MB/s (${t}s, $ONELINER_SYNC)"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# main

log "sizes: ${SIZE_LIST[*]}; repeats: $REPEAT; fan-out target counts: ${COUNTS[*]} (comparisons at $PRIMARY)$( ((MULTIPART)) || echo '; multipart path skipped (BENCH_MULTIPART=0)')"
log "data: $DATA ($(human "$(avail "$DATA")") free); work: $WORK ($(human "$(avail "$WORK")") free)"
log "CPU: $(nproc) core(s)$(grep -qw sha_ni /proc/cpuinfo && echo ', SHA extensions present')"

for ((i = 1; i <= COPIES; i++)); do start_reader "$i"; done
for n in "${COUNTS[@]}"; do [[ -n ${BPID[$n]:-} ]] || start_broadcaster "$n"; done

# warm-up, not measured: the first upload after start pays one-off costs (connections, directories, page tables)
warmup() {
    local f="$WORK/warmup.bin" n code id i
    head -c 1048576 /dev/urandom >"$f"
    for n in "${COUNTS[@]}"; do
        code=$(curl -sS -m 60 -T "$f" "http://127.0.0.1:${BPORT[$n]}/broadcast/warmup-n$n.bin" -o /dev/null \
            -w '%{http_code}') || true
        [[ $code == 201 ]] || log "warning: warm-up fan-out to $n target(s) answered HTTP ${code:-nothing}"
        for ((i = 1; i <= n; i++)); do rm -f "${RDIR[i]}/files/warmup-n$n.bin"; done
    done
    if ((MULTIPART)); then
        code=$(curl -sS -m 60 -F "file=@$f;filename=warmup-multipart.bin;type=application/octet-stream" \
            "http://127.0.0.1:${BPORT[$PRIMARY]}/broadcast" -o /dev/null -w '%{http_code}') || true
        [[ $code == 200 ]] || log "warning: warm-up multipart fan-out to $PRIMARY target(s) answered HTTP ${code:-nothing}"
        for ((i = 1; i <= PRIMARY; i++)); do rm -f "${RDIR[i]}/files/warmup-multipart.bin"; done
    fi
    id=$(new_id)
    code=$(curl -sS -m 60 -T "$f" "http://127.0.0.1:${RPORT[1]}/v1/uploads/$id/warmup-direct.bin" -o /dev/null \
        -w '%{http_code}') || true
    [[ $code == 2?? ]] || log "warning: warm-up stage on reader 1 answered HTTP ${code:-nothing}"
    curl -sS -m 60 -X POST "http://127.0.0.1:${RPORT[1]}/v1/uploads/$id/commit" -o /dev/null || true
    rm -f "${RDIR[1]}/files/warmup-direct.bin" "$f"
}
warmup

RAN=0
for spec in "${SIZE_LIST[@]}"; do
    bytes=$(to_bytes "$spec")
    label=$spec
    file="$DATA/bench-$label.bin"
    if ! why=$(fits "$bytes" "$file"); then
        log "skipping $label: $why"
        continue
    fi
    gen_file "$bytes" "$file"
    sha=$(file_sha "$file" "$bytes")
    log "== $label ($bytes bytes, sha256 $sha)"
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for n in "${COUNTS[@]}"; do
            run_fanout "$label" "$bytes" "$file" "$sha" "$n" "$rep"
            if ((MULTIPART && n == PRIMARY)); then run_fanout "$label" "$bytes" "$file" "$sha" "$n" "$rep" multipart; fi
        done
        run_direct "$label" "$bytes" "$file" "$sha" "$rep"
        run_oneliner "$label" "$bytes" "$file" "$sha" "$PRIMARY" "$rep"
    done
    RAN=1
done

for pid in "${!LIVE[@]}"; do
    alive "$pid" || { log "${LIVE[$pid]} (pid $pid) is no longer running; see $LOGS"; FAILED=1; }
done

if ((RAN == 0)); then
    log "no size could run"
    exit 1
fi
"$PY" "$REPORT" report "$RAW" "$OUT" "$PRIMARY"
if ((FAILED)); then
    log "some uploads failed or digests did not match (details above; logs in $LOGS)"
    exit 1
fi
exit 0
