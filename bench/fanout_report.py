#!/usr/bin/env python3
"""Helpers for bench/fanout.sh: free ports, listen checks, summary checks, and the report (table, CSV, SVG).

Standard library only (no matplotlib): the SVG is written by hand.

Subcommands (all used by fanout.sh):
  freeports N                         print N free loopback TCP ports, one a line
  waitlisten TIMEOUT PORT...          wait until every PORT is in LISTEN state on this host (/proc/net/tcp*)
  check-summary FILE SIZE SHA N       check a broadcaster JSON summary; print a one-line verdict, exit 1 if bad
  check-stage FILE SIZE SHA           check a reader's stage answer {"bytes":N,"xxh3":"…"} (or "sha256")
  report RAW_CSV OUT_DIR PRIMARY_N    print the table and goal checks, write OUT_DIR/fanout.csv and fanout.svg
"""

import csv
import json
import math
import os
import socket
import sys
import time
from xml.sax.saxutils import escape

MIB = 1024 * 1024
MB = 1000 * 1000

# Goals from DESIGN.md section 5, as raised by issue 11 part 5.
GOAL_RATIO = 0.5  # fan-out to three readers / direct upload into one reader (was 0.3)
GOAL_MULTIPART_RATIO = 0.9  # multipart POST /broadcast / raw PUT /broadcast/{name}, same targets, every size
GOAL_RSS_MIB = 32.0  # broadcaster peak RSS
GOAL_RSS_SPREAD_MIB = 4.0  # broadcaster peak RSS, largest size minus smallest size


# --------------------------------------------------------------------------------------------------------------
# small helpers for the shell script


def cmd_freeports(n):
    socks, ports = [], []
    try:
        for _ in range(int(n)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    print("\n".join(str(p) for p in ports))


def listening_ports():
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def cmd_waitlisten(timeout, *ports):
    want = {int(p) for p in ports}
    deadline = time.monotonic() + float(timeout)
    while True:
        missing = want - listening_ports()
        if not missing:
            return 0
        if time.monotonic() > deadline:
            print("not listening after %ss: %s" % (timeout, " ".join(map(str, sorted(missing)))), file=sys.stderr)
            return 1
        time.sleep(0.02)


def load_json(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw), raw
    except ValueError:
        return None, raw


def cmd_check_summary(path, size, sha, n):
    size, n = int(size), int(n)
    doc, raw = load_json(path)
    if not isinstance(doc, dict):
        print("not a JSON object: %r" % raw[:300])
        return 1
    problems = []
    if doc.get("outcome") != "committed":
        problems.append("outcome=%r" % doc.get("outcome"))
    if doc.get("committed") != n:
        problems.append("committed=%r (want %d)" % (doc.get("committed"), n))
    if str(doc.get("sha256", "")).lower() != sha.lower():
        problems.append("sha256=%r (want %s)" % (doc.get("sha256"), sha))
    if doc.get("size") != size:
        problems.append("size=%r (want %d)" % (doc.get("size"), size))
    targets = doc.get("targets")
    if not isinstance(targets, list) or len(targets) != n:
        problems.append("targets: %r entries (want %d)" % (len(targets) if isinstance(targets, list) else targets, n))
    else:
        for t in targets:
            if t.get("state") != "committed" or t.get("bytes") != size:
                problems.append("target %s: state=%r bytes=%r error=%r"
                                % (t.get("target"), t.get("state"), t.get("bytes"), t.get("error")))
    if problems:
        print("; ".join(problems))
        return 1
    print("committed %d/%d, sha256 ok, duration_ms=%s" % (n, n, doc.get("duration_ms")))
    return 0


def cmd_check_stage(path, size, sha):
    size = int(size)
    doc, raw = load_json(path)
    if not isinstance(doc, dict):
        print("not a JSON object: %r" % raw[:300])
        return 1
    problems = []
    if doc.get("bytes") != size:
        problems.append("bytes=%r (want %d)" % (doc.get("bytes"), size))
    # Readers report XXH3-128 (the broadcaster compares it); storage nodes report SHA-256. The committed copy's
    # SHA-256 is checked on disk for sizes up to BENCH_VERIFY_MAX.
    xxh3 = str(doc.get("xxh3", ""))
    if "sha256" in doc:
        if str(doc.get("sha256", "")).lower() != sha.lower():
            problems.append("sha256=%r (want %s)" % (doc.get("sha256"), sha))
    elif len(xxh3) != 32 or any(c not in "0123456789abcdef" for c in xxh3):
        problems.append("no checksum in the stage answer: %r" % raw[:300])
    if problems:
        print("; ".join(problems))
        return 1
    print("staged %d bytes, checksum reported" % size)
    return 0


# --------------------------------------------------------------------------------------------------------------
# aggregation


def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def load_raw(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r["size_bytes"] = int(r["size_bytes"])
            r["targets"] = int(r["targets"]) if r["targets"] else 0
            r["ok"] = r["ok"] == "1"
            for k in ("seconds", "mbps", "bcast_hwm_kib", "reader_hwm_kib"):
                r[k] = fnum(r[k])
            rows.append(r)
    return rows


def aggregate(rows):
    """(size_bytes, method, targets) -> dict(label, best mbps, seconds, peak RSS over repeats, runs, failures)."""
    agg = {}
    for r in rows:
        key = (r["size_bytes"], r["method"], r["targets"])
        a = agg.setdefault(key, {"label": r["size_label"], "mbps": None, "seconds": None,
                                 "bcast_mib": None, "reader_mib": None, "runs": 0, "failures": 0})
        a["runs"] += 1
        if not r["ok"]:
            a["failures"] += 1
            continue
        if r["mbps"] is not None and (a["mbps"] is None or r["mbps"] > a["mbps"]):
            a["mbps"], a["seconds"] = r["mbps"], r["seconds"]
        for src, dst in (("bcast_hwm_kib", "bcast_mib"), ("reader_hwm_kib", "reader_mib")):
            if r[src] is not None:
                v = r[src] / 1024.0
                a[dst] = v if a[dst] is None else max(a[dst], v)
    return agg


def fmt(v, spec="%.1f", none="-"):
    return none if v is None else spec % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def print_table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = " | ".join(h.rjust(w) for h, w in zip(headers, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))


# --------------------------------------------------------------------------------------------------------------
# SVG


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    top = math.ceil(hi / step) * step
    ticks, v = [], 0.0
    while v <= top + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks, top


def tick_label(v):
    if v == int(v):
        return "%d" % v
    return ("%.2f" % v).rstrip("0").rstrip(".")


class Panel:
    """One chart: x axis log2 (sizes) or linear (target counts), y axis linear from 0.

    Series and reference lines are collected first and drawn by svg(), which puts the legend in a corner of
    the plot where nothing is drawn, raising the top of the y axis if no corner is free.
    """

    W, H = 560, 360
    ML, MR, MT, MB = 72, 24, 44, 62

    def __init__(self, ox, oy, title, xlabel, ylabel, xs, xlabels, logx):
        self.ox, self.oy = ox, oy
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xs, self.xlabels, self.logx = xs, xlabels, logx
        tx = [self._t(x) for x in xs]
        lo, hi = min(tx), max(tx)
        pad = (hi - lo) * 0.08 if hi > lo else 1.0
        self.xlo, self.xhi = lo - pad, hi + pad
        self.items = []  # ("series", name, [(x, y)], color, dash, marker, unit) or ("hline", name, y, color, dash)
        self.out = []

    def _t(self, x):
        return math.log2(x) if self.logx else float(x)

    def px(self, x):
        w = self.W - self.ML - self.MR
        return self.ox + self.ML + (self._t(x) - self.xlo) / (self.xhi - self.xlo) * w

    def py(self, y):
        h = self.H - self.MT - self.MB
        return self.oy + self.MT + h - (y / self.ytop) * h

    def series(self, name, points, color, dash=None, marker=True, unit=""):
        pts = [(x, y) for x, y in points if y is not None]
        if pts:
            self.items.append(("series", name, pts, color, dash, marker, unit))

    def hline(self, name, y, color, dash="6,4"):
        if y is not None:
            self.items.append(("hline", name, y, color, dash))

    # layout ---------------------------------------------------------------------------------------------------

    def _samples(self):
        """(pixel x, data y) along everything drawn; pixel x does not depend on the y scale."""
        x0, x1 = self.ox + self.ML, self.ox + self.W - self.MR
        out = []
        for it in self.items:
            if it[0] == "hline":
                out.extend((x0 + (x1 - x0) * k / 40.0, it[2]) for k in range(41))
                continue
            pix = [(self.px(x), y) for x, y in it[2]]
            out.extend(pix)
            for (ax, ay), (bx, by) in zip(pix, pix[1:]):
                out.extend((ax + (bx - ax) * k / 32.0, ay + (by - ay) * k / 32.0) for k in range(1, 32))
        return out

    def _legend_size(self):
        n = len(self.items)
        w = 50 + 6.6 * max(len(it[1]) for it in self.items) if n else 0
        return w, 8 + 17 * n

    def _layout(self):
        ymax = max([it[2] if it[0] == "hline" else max(y for _, y in it[2]) for it in self.items] + [0])
        want = ymax * 1.08 if ymax > 0 else 1
        ph = self.H - self.MT - self.MB
        w, h = self._legend_size()
        samples = self._samples()
        left, right = self.ox + self.ML + 8, self.ox + self.W - self.MR - 8 - w
        frac = (8 + h + 6) / ph  # share of the plot height the legend box takes, with gaps
        best = None
        for corner, lx in (("top", left), ("top", right), ("bottom", right), ("bottom", left)):
            inside = [y for x, y in samples if lx - 6 <= x <= lx + w + 6]
            _, top = nice_ticks(0, want)
            if corner == "top":
                free = all(y <= top * (1 - frac) for y in inside)
                need = max([want] + [y / (1 - frac) for y in inside]) if frac < 0.95 else float("inf")
            else:
                free = all(y >= top * frac for y in inside)
                need = float("inf")
            if free:
                best = (want, corner, lx)
                break
            if best is None or need < best[0]:
                best = (need, corner, lx)
        self.yticks, self.ytop = nice_ticks(0, best[0])
        ly = self.oy + self.MT + 8 if best[1] == "top" else self.oy + self.H - self.MB - 8 - h
        return best[2], ly, w, h

    # drawing --------------------------------------------------------------------------------------------------

    def svg(self):
        lx, ly, lw, lh = self._layout()
        o = self.out
        x0, x1 = self.ox + self.ML, self.ox + self.W - self.MR
        y0, y1 = self.oy + self.MT, self.oy + self.H - self.MB
        o.append('<text x="%.1f" y="%.1f" class="title" text-anchor="middle">%s</text>'
                 % ((x0 + x1) / 2, self.oy + 24, escape(self.title)))
        for t in self.yticks:
            y = self.py(t)
            o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>' % (x0, y, x1, y))
            o.append('<text x="%.1f" y="%.1f" class="tick" text-anchor="end">%s</text>' % (x0 - 6, y + 4, tick_label(t)))
        for x, lab in zip(self.xs, self.xlabels):
            X = self.px(x)
            o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>' % (X, y0, X, y1))
            o.append('<text x="%.1f" y="%.1f" class="tick" text-anchor="middle">%s</text>' % (X, y1 + 16, escape(lab)))
        o.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="axes"/>' % (x0, y0, x1 - x0, y1 - y0))
        o.append('<text x="%.1f" y="%.1f" class="label" text-anchor="middle">%s</text>'
                 % ((x0 + x1) / 2, y1 + 40, escape(self.xlabel)))
        cy, cx = (y0 + y1) / 2, self.ox + 18
        o.append('<text x="%.1f" y="%.1f" class="label" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">%s</text>'
                 % (cx, cy, cx, cy, escape(self.ylabel)))
        for it in self.items:
            if it[0] == "hline":
                _, name, y, color, dash = it
                Y = self.py(y)
                o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" '
                         'stroke-dasharray="%s"/>' % (x0, Y, x1, Y, color, dash))
                continue
            _, name, pts, color, dash, marker, unit = it
            st = 'stroke="%s"' % color + (' stroke-dasharray="%s"' % dash if dash else "")
            if len(pts) > 1:
                d = " ".join("%.1f,%.1f" % (self.px(x), self.py(y)) for x, y in pts)
                o.append('<polyline points="%s" fill="none" stroke-width="2" %s/>' % (d, st))
            if marker:
                for x, y in pts:
                    o.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s: %s%s</title></circle>'
                             % (self.px(x), self.py(y), color, escape(name), tick_label(round(y, 1)), unit))
        if self.items:
            o.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="legend"/>' % (lx, ly, lw, lh))
            for i, it in enumerate(self.items):
                name, color, dash = it[1], it[3], it[4]
                marker = it[0] == "series" and it[5]
                y = ly + 14 + 17 * i
                st = ' stroke-dasharray="%s"' % dash if dash else ""
                o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>'
                         % (lx + 8, y - 4, lx + 34, y - 4, color, st))
                if marker:
                    o.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (lx + 21, y - 4, color))
                o.append('<text x="%.1f" y="%.1f" class="legendtext">%s</text>' % (lx + 42, y, escape(name)))
        return o


COLORS = {"fanout": "#1f77b4", "direct": "#2ca02c", "oneliner": "#ff7f0e", "bcast": "#d62728", "reader": "#17becf",
          "multipart": "#000000"}
SWEEP_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#1f77b4", "#ff7f0e", "#2ca02c"]


def write_svg(path, sizes, labels, agg, primary_n, counts, subtitle):
    def get(size, method, n, field):
        a = agg.get((size, method, n))
        return a[field] if a else None

    sweep = len(counts) > 1
    panels = []
    # throughput vs size
    thr_series = [("fan-out to %d readers (PUT)" % primary_n, "fanout", primary_n, COLORS["fanout"]),
                  ("multipart POST fan-out to %d readers" % primary_n, "multipart", primary_n, COLORS["multipart"]),
                  ("direct curl -T into one reader", "direct", 0, COLORS["direct"]),
                  ("tee into %d socat sinks" % primary_n, "oneliner", primary_n, COLORS["oneliner"])]
    if sweep:
        for i, n in enumerate(c for c in counts if c != primary_n):
            thr_series.append(("fan-out to %d reader%s" % (n, "" if n == 1 else "s"), "fanout", n,
                               SWEEP_COLORS[i % len(SWEEP_COLORS)]))
    p1 = Panel(0, 0, "Throughput against file size", "file size (log scale)", "MB/s (10^6 bytes/s)",
               sizes, labels, True)
    for name, m, n, color in thr_series:
        p1.series(name, [(s, get(s, m, n, "mbps")) for s in sizes], color, unit=" MB/s")
    goal = [(s, (get(s, "direct", 0, "mbps") or 0) * GOAL_RATIO or None) for s in sizes]
    p1.series("goal: fan-out %.1f x direct" % GOAL_RATIO, goal, COLORS["fanout"], dash="4,4", marker=False)
    panels.append(p1)

    # RSS vs size
    rss_series = [("broadcaster VmHWM (%d targets)" % primary_n, "bcast_mib", primary_n, COLORS["bcast"], None),
                  ("max reader VmHWM (fan-out)", "reader_mib", primary_n, COLORS["reader"], None)]
    if sweep:
        for i, n in enumerate(c for c in counts if c != primary_n):
            rss_series.append(("broadcaster VmHWM (%d target%s)" % (n, "" if n == 1 else "s"), "bcast_mib", n,
                               SWEEP_COLORS[i % len(SWEEP_COLORS)], "2,3"))
    p2 = Panel(Panel.W, 0, "Peak RSS during the fan-out", "file size (log scale)", "MiB", sizes, labels, True)
    for name, f, n, color, dash in rss_series:
        p2.series(name, [(s, get(s, "fanout", n, f)) for s in sizes], color, dash=dash, unit=" MiB")
    p2.hline("goal: broadcaster < %d MiB" % GOAL_RSS_MIB, GOAL_RSS_MIB, COLORS["bcast"])
    panels.append(p2)

    if sweep:
        p3 = Panel(0, Panel.H, "Fan-out throughput against target count", "targets (readers)", "MB/s (10^6 bytes/s)",
                   counts, [str(c) for c in counts], False)
        for i, (s, lab) in enumerate(zip(sizes, labels)):
            p3.series("%s file" % lab, [(n, get(s, "fanout", n, "mbps")) for n in counts],
                      SWEEP_COLORS[i % len(SWEEP_COLORS)], unit=" MB/s")
        panels.append(p3)
        p4 = Panel(Panel.W, Panel.H, "Broadcaster peak RSS against target count", "targets (readers)", "MiB",
                   counts, [str(c) for c in counts], False)
        for i, (s, lab) in enumerate(zip(sizes, labels)):
            p4.series("%s file" % lab, [(n, get(s, "fanout", n, "bcast_mib")) for n in counts],
                      SWEEP_COLORS[i % len(SWEEP_COLORS)], unit=" MiB")
        p4.hline("goal: < %d MiB" % GOAL_RSS_MIB, GOAL_RSS_MIB, COLORS["bcast"])
        panels.append(p4)

    width = 2 * Panel.W
    height = Panel.H * (2 if sweep else 1) + 26
    body = []
    for p in panels:
        body.extend(p.svg())
    doc = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">' % (width, height, width, height),
        "<style>"
        ".title{font-size:15px;font-weight:bold;fill:#222}"
        ".label{font-size:12.5px;fill:#333}"
        ".tick{font-size:11px;fill:#444}"
        ".legendtext{font-size:11.5px;fill:#222}"
        ".grid{stroke:#e4e4e4;stroke-width:1}"
        ".axes{fill:none;stroke:#555;stroke-width:1}"
        ".legend{fill:#ffffff;fill-opacity:0.88;stroke:#bbb;stroke-width:0.8}"
        "</style>",
        '<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, height),
    ] + body + [
        '<text x="%d" y="%d" class="tick" text-anchor="middle">%s</text>' % (width / 2, height - 8, escape(subtitle)),
        "</svg>",
    ]
    with open(path, "w") as f:
        f.write("\n".join(doc) + "\n")


# --------------------------------------------------------------------------------------------------------------
# report


def ratio_goal(what, goal, pairs):
    """Prints the PASS/FAIL line of a ratio goal over (size label, ratio or None) pairs; False if none measured."""
    measured = [(l, r) for l, r in pairs if r is not None]
    if not measured:
        return False
    worst = min(measured, key=lambda t: t[1])
    verdict = "PASS" if all(r >= goal for _, r in measured) else "FAIL"
    print("  %s  %s >= %.1f: %s" % (verdict, what, goal, ", ".join("%s %.2f" % (l, r) for l, r in measured))
          + ("  (worst %s %.2f)" % worst if len(measured) > 1 else ""))
    return True


def cmd_report(raw_path, out_dir, primary_n):
    primary_n = int(primary_n)
    rows = load_raw(raw_path)
    if not rows:
        print("no measurements")
        return 1
    agg = aggregate(rows)
    order = []
    labels = {}
    for r in rows:
        if r["size_bytes"] not in labels:
            order.append(r["size_bytes"])
            labels[r["size_bytes"]] = r["size_label"]
    sizes = sorted(order)
    counts = sorted({r["targets"] for r in rows if r["method"] == "fanout"})
    sweep = len(counts) > 1
    notes = {r.get("note", "") for r in rows if r.get("note")}

    def get(size, method, n, field):
        a = agg.get((size, method, n))
        return a[field] if a else None

    def cell(size, method, n, field="mbps", spec="%.1f"):
        a = agg.get((size, method, n))
        if a is None:
            return "-"
        if a[field] is None:
            return "FAILED" if a["failures"] else "-"
        return spec % a[field]

    # the multipart columns only when the run measured that path (BENCH_MULTIPART=0 skips it)
    has_mp = any(r["method"] == "multipart" for r in rows)
    headers = ["size", "fan-out MB/s", "direct MB/s", "one-liner MB/s"] + (["multipart MB/s"] if has_mp else []) + [
        "fan-out/direct", "one-liner/direct"] + (["multipart/PUT"] if has_mp else []) + [
        "broadcaster VmHWM MiB", "max reader VmHWM MiB"]
    table = []
    csv_rows = []
    for s in sizes:
        f = get(s, "fanout", primary_n, "mbps")
        d = get(s, "direct", 0, "mbps")
        o = get(s, "oneliner", primary_n, "mbps")
        m = get(s, "multipart", primary_n, "mbps")
        table.append([labels[s], cell(s, "fanout", primary_n), cell(s, "direct", 0), cell(s, "oneliner", primary_n)]
                     + ([cell(s, "multipart", primary_n)] if has_mp else [])
                     + [fmt(ratio(f, d), "%.2f"), fmt(ratio(o, d), "%.2f")]
                     + ([fmt(ratio(m, f), "%.2f")] if has_mp else [])
                     + [cell(s, "fanout", primary_n, "bcast_mib"), cell(s, "fanout", primary_n, "reader_mib")])
        row = {
            "size": labels[s], "size_bytes": s, "targets": primary_n,
            "fanout_mbps": fmt(f, "%.2f", ""), "direct_mbps": fmt(d, "%.2f", ""),
            "oneliner_mbps": fmt(o, "%.2f", ""),
            "fanout_over_direct": fmt(ratio(f, d), "%.4f", ""), "oneliner_over_direct": fmt(ratio(o, d), "%.4f", ""),
            "broadcaster_vmhwm_mib": fmt(get(s, "fanout", primary_n, "bcast_mib"), "%.2f", ""),
            "reader_vmhwm_mib": fmt(get(s, "fanout", primary_n, "reader_mib"), "%.2f", ""),
            "direct_reader_vmhwm_mib": fmt(get(s, "direct", 0, "reader_mib"), "%.2f", ""),
        }
        if sweep:
            for n in counts:
                if n == primary_n:
                    continue
                fn = get(s, "fanout", n, "mbps")
                row["fanout_n%d_mbps" % n] = fmt(fn, "%.2f", "")
                row["fanout_n%d_over_direct" % n] = fmt(ratio(fn, d), "%.4f", "")
                row["broadcaster_n%d_vmhwm_mib" % n] = fmt(get(s, "fanout", n, "bcast_mib"), "%.2f", "")
                row["reader_n%d_vmhwm_mib" % n] = fmt(get(s, "fanout", n, "reader_mib"), "%.2f", "")
        # new fields go last, so readers of the older columns (by name or by position) still work;
        # empty when the multipart path was not measured
        row["multipart_mbps"] = fmt(m, "%.2f", "")
        row["multipart_over_put"] = fmt(ratio(m, f), "%.4f", "")
        row["multipart_broadcaster_vmhwm_mib"] = fmt(get(s, "multipart", primary_n, "bcast_mib"), "%.2f", "")
        csv_rows.append(row)

    print()
    print("Fan-out to %d disk readers vs one curl -T into one reader vs tee into %d socat sinks "
          "(best of repeats; MB = 10^6 bytes)" % (primary_n, primary_n))
    if has_mp:
        print("  multipart: the same fan-out through POST /broadcast (curl -F file=@FILE); "
              "multipart/PUT compares it with the fan-out column (PUT /broadcast/NAME)")
    for n in sorted(notes):
        print("  " + n)
    print()
    print_table(headers, table)

    if sweep:
        print()
        print("Target-count sweep (fan-out through the broadcaster to the first N readers)")
        print()
        sh = ["size", "targets", "fan-out MB/s", "fan-out/direct", "broadcaster VmHWM MiB", "max reader VmHWM MiB"]
        st = []
        for s in sizes:
            d = get(s, "direct", 0, "mbps")
            for n in counts:
                st.append([labels[s], str(n), cell(s, "fanout", n), fmt(ratio(get(s, "fanout", n, "mbps"), d), "%.2f"),
                           cell(s, "fanout", n, "bcast_mib"), cell(s, "fanout", n, "reader_mib")])
        print_table(sh, st)

    # goal checks (DESIGN.md section 5), informational
    print()
    print("Goals (DESIGN.md section 5 as raised by issue 11 part 5; informational, a miss does not fail the script):")
    ratios = [(labels[s], ratio(get(s, "fanout", primary_n, "mbps"), get(s, "direct", 0, "mbps"))) for s in sizes]
    if not ratio_goal("fan-out/direct", GOAL_RATIO, ratios):
        print("  n/a   fan-out/direct >= %.1f: no successful pair of measurements" % GOAL_RATIO)
    mp = [(labels[s], ratio(get(s, "multipart", primary_n, "mbps"), get(s, "fanout", primary_n, "mbps")))
          for s in sizes]
    if ratio_goal("multipart/PUT", GOAL_MULTIPART_RATIO, mp):
        if any(r is None for _, r in mp):
            print("        (not measured at every size: %s missing)" % ", ".join(l for l, r in mp if r is None))
    elif has_mp:
        print("  n/a   multipart/PUT >= %.1f: no successful pair of measurements" % GOAL_MULTIPART_RATIO)
    else:
        print("  n/a   multipart/PUT >= %.1f: multipart path not measured (BENCH_MULTIPART=0)" % GOAL_MULTIPART_RATIO)
    rss = [(labels[s], s, get(s, "fanout", primary_n, "bcast_mib")) for s in sizes]
    rss_ok = [(l, s, v) for l, s, v in rss if v is not None]
    if rss_ok:
        peak = max(rss_ok, key=lambda t: t[2])
        verdict = "PASS" if peak[2] < GOAL_RSS_MIB else "FAIL"
        print("  %s  broadcaster peak RSS < %d MiB: max %.1f MiB (at %s)" % (verdict, GOAL_RSS_MIB, peak[2], peak[0]))
        if len(rss_ok) >= 2:
            lo, hi = rss_ok[0], rss_ok[-1]  # smallest and largest size measured
            diff = abs(hi[2] - lo[2])
            verdict = "PASS" if diff < GOAL_RSS_SPREAD_MIB else "FAIL"
            print("  %s  broadcaster peak RSS, %s vs %s, differs by < %d MiB: %.1f vs %.1f MiB, difference %.1f MiB"
                  % (verdict, lo[0], hi[0], GOAL_RSS_SPREAD_MIB, lo[2], hi[2], diff))
            if lo[1] > 16 * MIB or hi[1] < 4 * 1024 * MIB:
                print("        (the goal is stated for 16 MiB vs 4 GiB; this run measured %s to %s)" % (lo[0], hi[0]))
        else:
            print("  n/a   broadcaster RSS spread < %d MiB: needs at least two sizes" % GOAL_RSS_SPREAD_MIB)
    else:
        print("  n/a   broadcaster peak RSS: no successful fan-out")
    mp_rss = [(labels[s], get(s, "multipart", primary_n, "bcast_mib")) for s in sizes]
    mp_rss = [(l, v) for l, v in mp_rss if v is not None]
    if mp_rss:
        peak = max(mp_rss, key=lambda t: t[1])
        print("  note  broadcaster peak RSS on the multipart path (not part of the goal above): max %.1f MiB (at %s)%s"
              % (peak[1], peak[0], ", over %d MiB" % GOAL_RSS_MIB if peak[1] >= GOAL_RSS_MIB else ""))
    print("  Reference (DESIGN.md): direct 500-800 MB/s, tee+socat about 0.25x direct, the Go system about 0.08x.")

    failures = sum(1 for r in rows if not r["ok"])
    if failures:
        print()
        print("%d measurement(s) FAILED:" % failures)
        for r in rows:
            if not r["ok"]:
                print("  %s %s targets=%s repeat %s: %s" % (r["size_label"], r["method"], r["targets"] or "-",
                                                            r["repeat"], r["error"]))

    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "fanout.csv")
    fields = []
    for row in csv_rows:
        for k in row:
            if k not in fields:
                fields.append(k)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in csv_rows:
            w.writerow(row)
    svg_path = os.path.join(out_dir, "fanout.svg")
    subtitle = "Distributary bench/fanout.sh, loopback, same file per size, best of repeats"
    if notes:
        subtitle += "; " + "; ".join(sorted(notes))
    write_svg(svg_path, sizes, [labels[s] for s in sizes], agg, primary_n, counts, subtitle)
    print()
    print("wrote %s, %s (all repeats: %s)" % (csv_path, svg_path, raw_path))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    table = {
        "freeports": cmd_freeports,
        "waitlisten": cmd_waitlisten,
        "check-summary": cmd_check_summary,
        "check-stage": cmd_check_stage,
        "report": cmd_report,
    }
    if cmd not in table:
        print(__doc__, file=sys.stderr)
        return 2
    return table[cmd](*args) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
