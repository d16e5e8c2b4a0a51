#!/usr/bin/env bash
# Storage-ring benchmark (issue 3, item 7).
#
#   bench/ring.sh
#
# Builds the release binaries, then runs broadcaster/examples/ring_bench.rs, which starts 3 storage nodes and
# a broadcaster on 127.0.0.1 (free ports, R=2, SQLite metadata, data in a fresh temporary directory) and
# measures, in one run:
#   writes     a 15-minute DASH video, 475 segments of ~200 KiB (bench-video/chunk-0-NNNNN.m4s, deterministic
#              pseudo-random bytes), through broadcaster::ring::Cluster::put_blob with 64 concurrent writes
#              (3 rounds; the first is kept for the reads, the others are deleted) and with 1 worker
#   reads      p50 / p99 / max of GET /content/bench-video/FILE through the broadcaster, sequential, one
#              keep-alive connection, after a warm-up pass, every byte compared with what was written; the
#              same through an in-process Cluster::get_blob as a no-broadcaster baseline
#   fallback   the same reads twice after SIGKILLing one of the 3 storage nodes, with the number of reads the
#              broadcaster logged as "read served by a fallback replica"; the node is then restarted on its
#              port and data directory
#   migration  a 4th storage node joins: time of POST /admin/nodes (it returns when the migration is done)
#              and the number of blobs migrated, then one more verified read pass
# and prints a table with the goals (writes < 0.3 s, read p99 < 5 ms) and, beside them, the published
# numbers of TritonTube, the system the ring replaces (best 0.8 s with 64 workers, 29.5 s sequential;
# reads average 58 ms). Those are quoted, not measured here. Progress goes to stderr, the table to stdout.
#
# Environment:
#   RING_BENCH_BLOBS          segments to write (default 475)
#   RING_BENCH_BLOB_KIB       mean segment size in KiB; sizes vary by ±10% (default 200)
#   RING_BENCH_WORKERS        concurrent writes (default 64)
#   RING_BENCH_WRITE_ROUNDS   rounds of the concurrent write (default 3)
#   RING_BENCH_TMPDIR         where the temporary data directory is created (default: $TMPDIR or /tmp);
#                             the storage nodes fsync every blob, so the file system matters
#   RING_BENCH_KEEP=1         keep the data directory and the processes' logs (node0.log ... broadcaster.log)
#   RING_BENCH_SKIP_BUILD=1   do not run cargo build (use the existing target/release binaries)
# Other BROADCASTER_* / STORAGE_NODE_* variables you export (vnodes, timeouts...) reach the services; the
# benchmark sets the hosts, ports, data directories, metadata, node list, replication and host list.
#
# Every process is started and killed (by PID) by the benchmark itself, also when it fails.
# Exit status: 0 when every request succeeded and every read matched (goals met or not), 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${RING_BENCH_SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --bins -p broadcaster -p storage-node
    cargo build --release -p broadcaster --example ring_bench
fi

exec target/release/examples/ring_bench "$@"
