#!/usr/bin/env bash
# TLS benchmark (issue 9): the fan-out to 3 disk readers, once over plain HTTP and once with HTTPS on the
# gateway and on every target, in the same run, on the same file.
#
# Two independent setups run side by side: a broadcaster and 3 readers over plain HTTP, and a broadcaster
# and 3 readers serving HTTPS (certificates from build/certs.sh, targets named https://127.0.0.1:PORT and
# verified with DISTRIBUTARY_TLS_CA_FILE). Each size is uploaded with `curl -T` alternately to one and the
# other, BENCH_REPEAT times; the best throughput of each is kept. Every upload must answer 201 with every
# target committed and the file's SHA-256; the copies are checked on disk (size, and SHA-256 up to
# BENCH_VERIFY_MAX), then removed.
#
# Environment:
#   BENCH_SIZES        sizes, K/M/G suffixes are binary (default "64M 256M 1G")
#   BENCH_REPEAT       runs of each (default 3)
#   BENCH_TLS_HTTP     HTTP version curl uses to the HTTPS gateway: 2 (ALPN h2, the default) or 1.1
#   BENCH_DIR          where data files are kept and reused (default bench/out/data, shared with fanout.sh)
#   BENCH_VERIFY_MAX   copies up to this size are re-hashed on disk (default 256M)
#   BENCH_SKIP_BUILD=1 use the existing target/release binaries
#   BENCH_BROADCASTER_BIN, BENCH_READER_BIN  other binaries to measure (default target/release/...)
# Any BROADCASTER_* / READER_* variable you export reaches both setups.
#
# Prints a table (size, plain MB/s, HTTPS MB/s, ratio, peak broadcaster RSS of each) and writes
# bench/out/tls.csv. Goal: HTTPS >= 0.8x plain. Exit status 0 when every upload succeeded and matched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT="$ROOT/bench/out"
DATA=${BENCH_DIR:-$OUT/data}
WORK="$OUT/tls-run"
LOGS="$OUT/tls-logs"
CERTS="$OUT/tls-certs"
CSV="$OUT/tls.csv"
SIZES=${BENCH_SIZES:-64M 256M 1G}
REPEAT=${BENCH_REPEAT:-3}
TLS_HTTP=${BENCH_TLS_HTTP:-2}
N=3

log() { printf '[tls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

to_bytes() {
    local s=${1^^} n mult=1
    s=${s%IB}; s=${s%B}
    case $s in
        *K) mult=1024; n=${s%K} ;;
        *M) mult=$((1024 * 1024)); n=${s%M} ;;
        *G) mult=$((1024 * 1024 * 1024)); n=${s%G} ;;
        *) n=$s ;;
    esac
    [[ $n =~ ^[0-9]+$ ]] || die "bad size '$1'"
    echo $((n * mult))
}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer"
case $TLS_HTTP in 2) CURL_VERSION=--http2 ;; 1.1) CURL_VERSION=--http1.1 ;; *) die "BENCH_TLS_HTTP must be 2 or 1.1" ;; esac
VERIFY_MAX=$(to_bytes "${BENCH_VERIFY_MAX:-256M}")
read -r -a SIZE_LIST <<<"$SIZES"

declare -A LIVE=()
cleanup() {
    local rc=$? pid t
    trap - EXIT INT TERM
    for pid in "${!LIVE[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${!LIVE[@]}"; do
        for ((t = 0; t < 100; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in curl openssl sha256sum python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    cargo build --release --bins -p broadcaster -p reader >&2 || die "cargo build failed"
fi
BROADCASTER=${BENCH_BROADCASTER_BIN:-$ROOT/target/release/broadcaster}
READER=${BENCH_READER_BIN:-$ROOT/target/release/reader}
[[ -x $BROADCASTER && -x $READER ]] || die "missing release binaries"

mkdir -p "$OUT" "$DATA"
exec 9>"$OUT/.tls.lock"
flock -n 9 || die "another bench/tls.sh is running"
rm -rf "$WORK" "$LOGS"
mkdir -p "$WORK" "$LOGS"
CERTS_DIR=$CERTS "$ROOT/build/certs.sh" 2>/dev/null || die "build/certs.sh failed"
CA=$CERTS/ca.pem

filesize() { stat -c %s "$1" 2>/dev/null || echo -1; }
wait_port() {
    local logf=$1 pid=$2 i port
    for ((i = 0; i < 600; i++)); do
        port=$(grep -aoE 'listening on 127\.0\.0\.1:[0-9]+' "$logf" 2>/dev/null | head -1 | sed -E 's/.*://' || true)
        [[ -n $port ]] && { echo "$port"; return 0; }
        kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; return 1; }
        sleep 0.05
    done
    return 1
}

declare -A BPORT=() BPID=() SCHEME=()
declare -A RDIRS=()
start_setup() { # start_setup plain|tls
    local mode=$1 i pid port list="" dir logf scheme=http tlsenv=()
    if [[ $mode == tls ]]; then
        scheme=https
        tlsenv=(DISTRIBUTARY_TLS_CA_FILE="$CA")
    fi
    for ((i = 1; i <= N; i++)); do
        dir="$WORK/$mode-reader$i"
        logf="$LOGS/$mode-reader$i.log"
        mkdir -p "$dir"
        : >"$logf"
        if [[ $mode == tls ]]; then
            env READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$dir" NO_COLOR=1 \
                READER_TLS_CERT_FILE="$CERTS/server.pem" READER_TLS_KEY_FILE="$CERTS/server-key.pem" \
                "$READER" >>"$logf" 2>&1 &
        else
            env READER_HTTP_HOST=127.0.0.1 READER_HTTP_PORT=0 READER_DATA_DIR="$dir" NO_COLOR=1 \
                "$READER" >>"$logf" 2>&1 &
        fi
        pid=$!
        LIVE[$pid]="$mode reader $i"
        port=$(wait_port "$logf" "$pid") || die "$mode reader $i did not start"
        list+="${list:+;}$scheme://127.0.0.1:$port"
        RDIRS[$mode]+="$dir "
    done
    logf="$LOGS/$mode-broadcaster.log"
    : >"$logf"
    mkdir -p "$WORK/$mode-bc"
    if [[ $mode == tls ]]; then
        (cd "$WORK/$mode-bc" && exec env BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 \
            BROADCASTER_HOST_LIST="$list" NO_COLOR=1 "${tlsenv[@]}" \
            BROADCASTER_TLS_CERT_FILE="$CERTS/server.pem" BROADCASTER_TLS_KEY_FILE="$CERTS/server-key.pem" \
            "$BROADCASTER" >>"$logf" 2>&1) &
    else
        (cd "$WORK/$mode-bc" && exec env BROADCASTER_HTTP_HOST=127.0.0.1 BROADCASTER_HTTP_PORT=0 \
            BROADCASTER_HOST_LIST="$list" NO_COLOR=1 "$BROADCASTER" >>"$logf" 2>&1) &
    fi
    pid=$!
    LIVE[$pid]="$mode broadcaster"
    port=$(wait_port "$logf" "$pid") || die "$mode broadcaster did not start"
    BPORT[$mode]=$port BPID[$mode]=$pid SCHEME[$mode]=$scheme
    log "$mode: broadcaster $scheme://127.0.0.1:$port (pid $pid) -> $list"
}

gen_file() {
    local bytes=$1 path=$2
    [[ $(filesize "$path") == "$bytes" ]] && return 0
    log "generating $path"
    { openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv "$(printf '%032x' "$bytes")" \
        </dev/zero 2>/dev/null || true; } | head -c "$bytes" >"$path.tmp"
    mv "$path.tmp" "$path"
}

hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }
reset_hwm() { (echo 5 >"/proc/$1/clear_refs") 2>/dev/null || true; }

FAILED=0
declare -A BEST=() BEST_HWM=() PROTO=()
upload() { # upload MODE LABEL BYTES FILE SHA REP
    local mode=$1 label=$2 bytes=$3 file=$4 sha=$5 rep=$6
    local name="tls-bench-$mode-$label-$rep.bin" summary="$WORK/summary-$mode.json" out rc=0 code t ver
    local url="${SCHEME[$mode]}://127.0.0.1:${BPORT[$mode]}/broadcast/$name" args=() err="" d mbps hwm
    [[ $mode == tls ]] && args=(--cacert "$CA" "$CURL_VERSION")
    sync
    reset_hwm "${BPID[$mode]}"
    out=$(curl -sS "${args[@]}" -T "$file" "$url" -o "$summary" -w '%{http_code} %{time_total} %{http_version}') || rc=$?
    hwm=$(hwm_kib "${BPID[$mode]}")
    read -r code t ver <<<"$out"
    if ((rc != 0)); then
        err="curl exit $rc"
    elif [[ $code != 201 ]]; then
        err="HTTP $code: $(head -c 300 "$summary")"
    elif ! python3 - "$summary" "$sha" "$N" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
ok = s.get("sha256") == sys.argv[2] and len(s["targets"]) == int(sys.argv[3]) \
    and all(t["state"] == "committed" for t in s["targets"])
sys.exit(0 if ok else 1)
EOF
    then
        err="summary does not show every target committed with the file's digest"
    else
        for d in ${RDIRS[$mode]}; do
            [[ $(filesize "$d/files/$name") == "$bytes" ]] || { err="$d: wrong size"; break; }
            if ((bytes <= VERIFY_MAX)) && [[ $(sha256sum "$d/files/$name" | cut -d' ' -f1) != "$sha" ]]; then
                err="$d: digest mismatch"
                break
            fi
        done
    fi
    for d in ${RDIRS[$mode]}; do rm -f "$d/files/$name"; done
    if [[ -n $err ]]; then
        log "FAILED: $mode $label run $rep: $err"
        FAILED=1
        return
    fi
    mbps=$(awk -v b="$bytes" -v t="$t" 'BEGIN { printf "%.1f", b / 1e6 / t }')
    log "$mode $label run $rep: $mbps MB/s (HTTP/$ver, broadcaster VmHWM $hwm KiB)"
    PROTO[$mode]=$ver
    if [[ -z ${BEST[$mode,$label]:-} ]] || awk -v a="$mbps" -v b="${BEST[$mode,$label]}" 'BEGIN { exit !(a > b) }'; then
        BEST[$mode,$label]=$mbps
    fi
    if [[ -z ${BEST_HWM[$mode,$label]:-} ]] || ((hwm > BEST_HWM[$mode,$label])); then
        BEST_HWM[$mode,$label]=$hwm
    fi
}

start_setup plain
start_setup tls
log "CPU: $(nproc) core(s); sizes: ${SIZE_LIST[*]}; repeats: $REPEAT; curl to the HTTPS gateway: $CURL_VERSION"

# warm-up (not measured): connections, TLS sessions, directories
head -c 1048576 /dev/urandom >"$WORK/warmup.bin"
for mode in plain tls; do
    args=()
    [[ $mode == tls ]] && args=(--cacert "$CA")
    curl -sS "${args[@]}" -T "$WORK/warmup.bin" "${SCHEME[$mode]}://127.0.0.1:${BPORT[$mode]}/broadcast/warmup.bin" \
        -o /dev/null || die "warm-up upload to the $mode setup failed"
    for d in ${RDIRS[$mode]}; do rm -f "$d/files/warmup.bin"; done
done

echo "size,bytes,plain_mbps,https_mbps,ratio,plain_bcast_hwm_kib,https_bcast_hwm_kib" >"$CSV"
for spec in "${SIZE_LIST[@]}"; do
    bytes=$(to_bytes "$spec")
    file="$DATA/bench-$spec.bin"
    gen_file "$bytes" "$file"
    sha=$(sha256sum "$file" | cut -d' ' -f1)
    for ((rep = 1; rep <= REPEAT; rep++)); do
        # alternate which goes first, so neither always gets the warmer page cache
        if ((rep % 2)); then order=(plain tls); else order=(tls plain); fi
        for mode in "${order[@]}"; do upload "$mode" "$spec" "$bytes" "$file" "$sha" "$rep"; done
    done
done

printf '\n%-8s %14s %14s %8s %18s %18s\n' size "plain MB/s" "HTTPS MB/s" ratio "plain bc RSS" "HTTPS bc RSS"
for spec in "${SIZE_LIST[@]}"; do
    p=${BEST[plain,$spec]:-} s=${BEST[tls,$spec]:-}
    ratio=$(awk -v p="$p" -v s="$s" 'BEGIN { if (p > 0 && s > 0) printf "%.2f", s / p; else print "-" }')
    printf '%-8s %14s %14s %8s %14s KiB %14s KiB\n' "$spec" "${p:--}" "${s:--}" "${ratio}x" \
        "${BEST_HWM[plain,$spec]:--}" "${BEST_HWM[tls,$spec]:--}"
    echo "$spec,$(to_bytes "$spec"),$p,$s,$ratio,${BEST_HWM[plain,$spec]:-},${BEST_HWM[tls,$spec]:-}" >>"$CSV"
done
echo
echo "fan-out to $N disk readers, best of $REPEAT; HTTPS: gateway over HTTP/${PROTO[tls]:-?} (curl), targets over"
echo "HTTPS/1.1 (rustls, ring); goal: HTTPS >= 0.80x plain. Written: $CSV"
exit "$FAILED"
