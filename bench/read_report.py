#!/usr/bin/env python3
"""Report of bench/read.sh: the table (stdout) and the plot (read.png, gnuplot) of one run directory.

    python3 bench/read_report.py bench/out/read/<UTC timestamp>

Reads run.txt (key=value lines: what was measured) and results.txt (one line per wrk run, key=value words: the
READ_RESULT line of bench/read.lua plus what read.sh sampled: memory in KiB, CPU seconds). Writes plot.dat,
plot.gp and read.png into the run directory; prints the table, which read.sh also saves as table.txt. Exit
status 1 when gnuplot fails (the table is printed first).
"""

import math
import os
import shutil
import subprocess
import sys

MIB = 1024.0  # KiB per MiB


def kv_words(line):
    out = {}
    for word in line.split():
        if "=" in word:
            k, v = word.split("=", 1)
            out[k] = v
    return out


def num(d, k):
    try:
        v = float(d.get(k, "nan"))
    except ValueError:
        return math.nan
    return v


def fmt(v, spec="{:.1f}"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    info = {}
    with open(os.path.join(run, "run.txt")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                info[k] = v
    rows = []
    with open(os.path.join(run, "results.txt")) as f:
        for line in f:
            if line.strip():
                rows.append(kv_words(line))

    for r in rows:
        r["_conns"] = int(r.get("conns", "0"))
        ok = r.get("ok") == "1" and "requests" in r
        r["_ok"] = ok
        r["_rps"] = num(r, "rps") if ok else math.nan
        r["_p50"] = num(r, "p50_us") / 1000 if ok else math.nan
        r["_p99"] = num(r, "p99_us") / 1000 if ok else math.nan
        secs = num(r, "duration_us") / 1e6
        r["_mbps"] = num(r, "bytes") / 1e6 / secs if ok and secs > 0 else math.nan
        r["_errors"] = sum(int(r.get(k, "0")) for k in ("connect", "read", "write", "timeout", "status")) if ok else None
        r["_hwm"] = num(r, "srv_hwm_kib") / MIB
        r["_rss"] = num(r, "srv_rss_kib") / MIB
        r["_nodes_hwm"] = num(r, "nodes_hwm_max_kib") / MIB if r.get("target") == "gateway" else math.nan
        cpu = num(r, "srv_cpu_s")
        if r.get("target") == "gateway":
            cpu += num(r, "nodes_cpu_s")
        r["_cpu"] = cpu
    order = {"gateway": 0, "nginx": 1}
    rows.sort(key=lambda r: (r["_conns"], order.get(r.get("target"), 9)))
    by = {(r.get("target"), r["_conns"]): r for r in rows}
    conns = sorted({r["_conns"] for r in rows})

    def ratio(a, b):
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    hdr = ["target", "conns", "thr", "req/s", "MB/s", "p50 ms", "p99 ms", "errors", "HWM MiB", "RSS MiB",
           "nodes HWM MiB", "CPU s", "wrk CPU s", "other CPU s", "p99 x", "req/s x"]
    table = []
    for r in rows:
        gw = r.get("target") == "gateway"
        ng = by.get(("nginx", r["_conns"]))
        p99x = ratio(r["_p99"], ng["_p99"]) if gw and ng else math.nan
        rpsx = ratio(r["_rps"], ng["_rps"]) if gw and ng else math.nan
        table.append([
            r.get("target", "?"), str(r["_conns"]), r.get("threads", "-"),
            fmt(r["_rps"], "{:.0f}"), fmt(r["_mbps"], "{:.0f}"),
            fmt(r["_p50"], "{:.2f}"), fmt(r["_p99"], "{:.2f}"),
            "FAILED" if r["_errors"] is None else str(r["_errors"]),
            fmt(r["_hwm"]), fmt(r["_rss"]), fmt(r["_nodes_hwm"]), fmt(r["_cpu"]),
            fmt(num(r, "wrk_cpu_s")), fmt(num(r, "other_cpu_s")),
            fmt(p99x, "{:.1f}"), fmt(rpsx, "{:.2f}"),
        ])

    mb = lambda k: float(info.get(k, "nan")) / 1e6
    print("Read benchmark (issue 11): GET /content/ID/FILE through the gateway (broadcaster -> storage ring) "
          "vs nginx serving the same files from disk")
    print(f"video {info.get('video', '?')}: {info.get('files', '?')} files, {mb('files_bytes'):.1f} MB "
          f"(clip {info.get('clip', '?')}, {mb('clip_bytes'):.1f} MB; upload -> 303 in {info.get('upload_s', '?')} s)")
    npaths = float(info.get("paths", "nan"))
    mean_path = float(info.get("paths_bytes", "nan")) / npaths if npaths else math.nan
    print(f"wrk {info.get('wrk', '?')}: {info.get('paths', '?')} paths ({info.get('file_set', '?')}, "
          f"{info.get('order', '?')}; mean {mean_path / 1e6:.2f} MB, largest {mb('paths_max_bytes'):.2f} MB), "
          f"{info.get('secs', '?')} s per run, --timeout {info.get('timeout', '?')}, up to {info.get('threads', '?')} "
          f"threads; nginx {info.get('nginx', '?')} with {info.get('nginx_workers', '?')} workers; "
          f"{info.get('cores', '?')} cores, load average {info.get('load_start', '?')} before the runs, "
          f"{info.get('load', '?')} after; "
          f"commit {info.get('git', '?')}")
    print()
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *table)]
    line = lambda cells: "  ".join(str(c).rjust(n) if i else str(c).ljust(n) for i, (c, n) in enumerate(zip(cells, w)))
    print(line(hdr))
    prev = None
    for r, t in zip(rows, table):
        if prev is not None and r["_conns"] != prev:
            print()
        prev = r["_conns"]
        print(line(t))
    print()
    reset = all(r.get("hwm_reset") == "1" for r in rows)
    print(f"HWM = peak RSS during the run ({'reset before each run' if reset else 'NOT reset: since process start'}), "
          f"RSS = at its end: the broadcaster on gateway rows, nginx master + workers on nginx rows;")
    print("nodes HWM = the largest storage node peak; CPU s = broadcaster + storage nodes (gateway) or nginx; "
          "other CPU s = anything else on the machine;")
    print("p99 x, req/s x = gateway / nginx at the same connection count.")
    print(f"Broadcaster VmHWM from its start to the end of the upload: "
          f"{fmt(float(info.get('bcast_hwm_after_upload_kib', 'nan')) / MIB)} MiB.")

    notes = []
    for r in rows:
        name = f"{r.get('target')} c={r['_conns']}"
        if not r["_ok"]:
            notes.append(f"{name}: the run FAILED (wrk exited non-zero, printed no result, or the server died; "
                         f"alive={r.get('alive', '?')}); see wrk/{r.get('target')}-c{r['_conns']}.txt")
            continue
        if r["_errors"]:
            parts = ", ".join(f"{k} {r[k]}" for k in ("connect", "read", "write", "timeout", "status") if r.get(k, "0") != "0")
            notes.append(f"{name}: errors: {parts} (of {r.get('requests')} completed requests)")
        other = num(r, "other_cpu_s")
        try:
            budget = float(info.get("cores", "nan")) * num(r, "secs")
        except ValueError:
            budget = math.nan
        if other > 0.1 * budget:
            notes.append(f"{name}: the machine spent {other:.1f} of its {budget:.0f} CPU seconds on other work "
                         f"during the run (other builds or tests?): its numbers are not comparable")
        req = num(r, "requests")
        if req >= 10 * npaths and not math.isnan(mean_path):
            per = num(r, "bytes") / req
            # Headers add a few hundred bytes per response and the mix of files read is only about even (a
            # partial last round, random picks), so this catches only gross cases: error pages, cut bodies.
            if not 0.5 * mean_path < per < 1.5 * mean_path + 1024:
                notes.append(f"{name}: {per / 1e6:.3f} MB per response against a mean file of "
                             f"{mean_path / 1e6:.3f} MB: responses were not the files")
        if req and req < npaths:
            notes.append(f"{name}: only {int(req)} requests completed, fewer than the {int(npaths)} paths: "
                         f"not every file was read")
    if notes:
        print()
        for n in notes:
            print("note: " + n)

    # --- plot ----------------------------------------------------------------------------------------------
    dat = os.path.join(run, "plot.dat")
    with open(dat, "w") as f:
        f.write("# conns gateway_p99_ms gateway_rps nginx_p99_ms nginx_rps\n")
        for c in conns:
            vals = [c]
            for t in ("gateway", "nginx"):
                r = by.get((t, c))
                vals += [r["_p99"], r["_rps"]] if r else [math.nan, math.nan]
            f.write(" ".join("?" if isinstance(v, float) and math.isnan(v) else str(v) for v in vals) + "\n")
    if not shutil.which("gnuplot"):
        print("\ngnuplot not found: no plot", file=sys.stderr)
        sys.exit(1)
    probe = subprocess.run(["gnuplot", "-e", "set terminal pngcairo"], capture_output=True, text=True)
    cairo = probe.returncode == 0 and "unknown" not in probe.stderr.lower()
    term = ("set terminal pngcairo size 1400,560 font 'sans,11'" if cairo
            else "set terminal png size 1400,560")
    png = os.path.join(run, "read.png")
    title = f"{info.get('video', '')}: {info.get('paths', '?')} segment files, {info.get('secs', '?')} s per run"
    gp = f"""{term}
set output '{png}'
set datafile missing '?'
set multiplot layout 1,2 title "Distributary read benchmark: gateway vs nginx ({title})"
set logscale x 2
set xtics ({", ".join(f'"{c}" {c}' for c in conns)})
set xrange [{min(conns) / 1.5}:{max(conns) * 1.5}]
set grid
set key top left
set xlabel 'connections'
set title 'p99 latency (ms, log scale)'
set logscale y
set ylabel 'ms'
plot '{dat}' using 1:2 with linespoints lw 2 pt 7 title 'gateway', \\
     '{dat}' using 1:4 with linespoints lw 2 pt 5 title 'nginx'
unset logscale y
set title 'throughput (requests/s)'
set ylabel 'requests/s'
set yrange [0:*]
plot '{dat}' using 1:3 with linespoints lw 2 pt 7 title 'gateway', \\
     '{dat}' using 1:5 with linespoints lw 2 pt 5 title 'nginx'
unset multiplot
"""
    gpf = os.path.join(run, "plot.gp")
    with open(gpf, "w") as f:
        f.write(gp)
    res = subprocess.run(["gnuplot", gpf], capture_output=True, text=True)
    if res.returncode != 0 or not os.path.exists(png):
        print(f"\ngnuplot failed ({gpf}): {res.stderr.strip()}", file=sys.stderr)
        sys.exit(1)
    print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
