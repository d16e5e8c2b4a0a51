#!/usr/bin/env python3
"""Helpers for bench/resumable.sh: summary checks, the reconnect measurement, and the report.

Standard library only. Every request goes to the 127.0.0.1 broadcaster the script started.

Subcommands (all used by resumable.sh):
  check-summary FILE SIZE SHA N [KEY]   check a JSON summary (KEY: take it from that field of the document, e.g.
                                        "summary" of GET /uploads/{id}); print a one-line verdict, exit 1 if bad
  reconnect PORT ID FILE TRIALS CUT PROBE RESULTS
                                        TRIALS times: feed CUT bytes of FILE (from the upload's offset) into a
                                        `curl -X PATCH -T -` and SIGKILL that curl as soon as the last byte is in
                                        its pipe (a cut mid-append, data in flight), then reconnect: HEAD, and
                                        PATCH the next PROBE bytes at the offset HEAD gave (again at the offset a
                                        409 names, if the cut append was still checkpointing); append the timings
                                        to RESULTS
  resume-rest PORT ID FILE RESULTS      HEAD, then one `dd | curl -X PATCH -T -` with everything left; polls HEAD
                                        every 10 ms until Upload-Offset first advances; append the timings
  report RESULTS                        print the table, the reconnect numbers and the checks
"""

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import time

MIB = 1024 * 1024
GOAL_RSS_MIB = 32.0  # broadcaster peak RSS (DESIGN.md section 5)
TUS = {"Tus-Resumable": "1.0.0"}
CURL_SAFETY_MAX_TIME = "600"  # a curl we cut is SIGKILLed long before; this only bounds a hang


# --------------------------------------------------------------------------------------------------------------
# small helpers


def emit(results, key, value):
    with open(results, "a") as f:
        f.write("%s\t%s\n" % (key, value))


def load_results(path):
    """key -> [values] (keys may repeat: one line per sample)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "\t" not in line:
                continue
            k, v = line.split("\t", 1)
            out.setdefault(k, []).append(v)
    return out


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def cmd_check_summary(path, size, sha, n, key=None):
    size, n = int(size), int(n)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        print("not JSON: %s" % e)
        return 1
    if key:
        if not isinstance(doc, dict):
            print("not a JSON object")
            return 1
        if key == "summary" and doc.get("state") != "committed":
            print("upload state=%r (want committed)" % doc.get("state"))
            return 1
        doc = doc.get(key)
    if not isinstance(doc, dict):
        print("no summary object: %r" % raw[:300])
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
        problems.append("targets: %r (want %d entries)" % (targets, n))
    else:
        for t in targets:
            if t.get("state") != "committed":
                problems.append("target %s: state=%r error=%r" % (t.get("target"), t.get("state"), t.get("error")))
    if problems:
        print("; ".join(problems))
        return 1
    print("committed on %d/%d targets, sha256 and size match" % (n, n))
    return 0


# --------------------------------------------------------------------------------------------------------------
# tus requests on one keep-alive connection


class Tus:
    def __init__(self, port, upload_id):
        self.port = int(port)
        self.path = "/uploads/" + upload_id
        self.conn = None

    def connect(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def head(self):
        """Upload-Offset from HEAD."""
        self.conn.request("HEAD", self.path, headers=TUS)
        r = self.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError("HEAD %s answered %d" % (self.path, r.status))
        return int(r.getheader("Upload-Offset"))

    def patch(self, offset, body):
        """(status, Upload-Offset header or None)."""
        h = dict(TUS)
        h["Content-Type"] = "application/offset+octet-stream"
        h["Upload-Offset"] = str(offset)
        h["Content-Length"] = str(len(body))
        self.conn.request("PATCH", self.path, body=body, headers=h)
        r = self.conn.getresponse()
        text = r.read()
        o = r.getheader("Upload-Offset")
        if r.status not in (204, 409):
            raise RuntimeError("PATCH at %d answered %d: %r" % (offset, r.status, text[:300]))
        return r.status, (int(o) if o is not None else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def curl_patch_cmd(port, upload_id, offset, length, out_path):
    """`curl -X PATCH -T -` of LENGTH bytes read from stdin: with Content-Length unless BODY=chunked."""
    sized = [] if os.environ.get("BODY", "sized") == "chunked" else [
        "-H", "Transfer-Encoding:", "-H", "Content-Length: %d" % length]
    return ["curl", "-sS", "--max-time", CURL_SAFETY_MAX_TIME, "-X", "PATCH",
            "-H", "Tus-Resumable: 1.0.0", "-H", "Content-Type: application/offset+octet-stream",
            "-H", "Upload-Offset: %d" % offset] + sized + ["-T", "-", "-o", out_path,
            "-w", "%{http_code} %{time_total}",
            "http://127.0.0.1:%d/uploads/%s" % (int(port), upload_id)]


def read_at(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def cmd_reconnect(port, upload_id, path, trials, cut, probe, results):
    trials, cut, probe = int(trials), int(cut), int(probe)
    tus = Tus(port, upload_id)
    tus.connect()
    offset = tus.head()
    tus.close()
    size = os.path.getsize(path)
    devnull = open(os.devnull, "wb")
    failures = 0
    for i in range(1, trials + 1):
        if offset + cut + probe > size:
            print("reconnect: only %d bytes left for trial %d" % (size - offset, i), file=sys.stderr)
            failures += 1
            break
        # The cut: a curl sending the whole rest of the file from a pipe (as a tus client's single PATCH does),
        # SIGKILLed once the last of CUT bytes is in the pipe.
        curl = subprocess.Popen(curl_patch_cmd(port, upload_id, offset, size - offset, os.devnull),
                                stdin=subprocess.PIPE,
                                stdout=devnull, stderr=devnull)
        fed = 0
        with open(path, "rb") as f:
            f.seek(offset)
            try:
                while fed < cut:
                    chunk = f.read(min(MIB, cut - fed))
                    curl.stdin.write(chunk)
                    fed += len(chunk)
                curl.stdin.flush()
            except BrokenPipeError:
                pass
        os.kill(curl.pid, signal.SIGKILL)
        curl.wait()
        try:
            curl.stdin.close()
        except BrokenPipeError:
            pass
        # The reconnect: a new connection, HEAD, then the resumed PATCH's first bytes, timed until their 204.
        t0 = time.monotonic()
        tus.connect()
        try:
            o1 = tus.head()
            t_head = time.monotonic()
            retries, at = 0, o1
            while True:
                status, o2 = tus.patch(at, read_at(path, at, probe))
                if status == 204:
                    break
                retries += 1
                if o2 is None or retries > 20:
                    raise RuntimeError("PATCH kept answering 409 (offset %r)" % o2)
                at = o2
            t1 = time.monotonic()
        except (OSError, RuntimeError, http.client.HTTPException, ValueError, TypeError) as e:
            print("reconnect trial %d failed: %s" % (i, e), file=sys.stderr)
            failures += 1
            tus.close()
            break
        tus.close()
        if o2 != at + probe:
            print("reconnect trial %d: PATCH at %d of %d bytes answered Upload-Offset %r"
                  % (i, at, probe, o2), file=sys.stderr)
            failures += 1
        kept = at - offset  # bytes of the cut append the upload kept
        emit(results, "rc_head_s", "%.6f" % (t_head - t0))
        emit(results, "rc_patch_s", "%.6f" % (t1 - t_head))
        emit(results, "rc_total_s", "%.6f" % (t1 - t0))
        emit(results, "rc_retries", retries)
        emit(results, "rc_stale_head", 1 if o1 != at else 0)
        emit(results, "rc_fed", fed)
        emit(results, "rc_kept", kept)
        print("reconnect %2d: fed %d MiB then SIGKILL; kept %.2f MiB; HEAD %.1f ms%s, PATCH of %d KiB %.1f ms%s; "
              "total %.1f ms" % (i, fed // MIB, kept / MIB, (t_head - t0) * 1e3,
                                 " (stale)" if o1 != at else "", probe // 1024, (t1 - t_head) * 1e3,
                                 " after %d x 409" % retries if retries else "", (t1 - t0) * 1e3), file=sys.stderr)
        offset = o2 if o2 is not None else at + probe
    emit(results, "rc_failures", failures)
    return 1 if failures else 0


def cmd_resume_rest(port, upload_id, path, results):
    size = os.path.getsize(path)
    tus = Tus(port, upload_id)
    t0 = time.monotonic()
    tus.connect()
    offset = tus.head()
    t_head = time.monotonic()
    rest = size - offset
    body_out = os.path.join(os.path.dirname(results), "resume-rest.body")
    dd = subprocess.Popen(["dd", "if=" + path, "bs=1M", "iflag=skip_bytes,count_bytes", "skip=%d" % offset,
                           "count=%d" % rest, "status=none"], stdout=subprocess.PIPE)
    t_patch = time.monotonic()
    curl = subprocess.Popen(curl_patch_cmd(port, upload_id, offset, rest, body_out), stdin=dd.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dd.stdout.close()
    first = None
    while curl.poll() is None:
        try:
            o = tus.head()
        except (OSError, RuntimeError, http.client.HTTPException):
            tus.connect()
            continue
        if o > offset:
            first = time.monotonic()
            break
        time.sleep(0.01)
    tus.close()
    out, err = curl.communicate()
    dd.wait()
    t_end = time.monotonic()
    w = out.decode(errors="replace").split()
    code = w[0] if w else "000"
    emit(results, "rest_bytes", rest)
    emit(results, "rest_code", code)
    emit(results, "rest_head_s", "%.6f" % (t_head - t0))
    emit(results, "rest_s", "%.6f" % (t_end - t_patch))
    if first is not None:
        emit(results, "rest_first_advance_s", "%.6f" % (first - t_patch))
    print("rest: HEAD %.1f ms; one PATCH of %.1f MiB: HTTP %s in %.2f s; first Upload-Offset advance after %s"
          % ((t_head - t0) * 1e3, rest / MIB, code, t_end - t_patch,
             "%.3f s" % (first - t_patch) if first is not None else "never (seen before the PATCH ended)"),
          file=sys.stderr)
    if err:
        sys.stderr.write(err.decode(errors="replace"))
    return 0 if code == "204" else 1


# --------------------------------------------------------------------------------------------------------------
# report


def print_table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def cmd_report(path):
    R = load_results(path)
    one = lambda k, d=None: R[k][-1] if k in R else d
    num = lambda k: fnum(one(k))
    nums = lambda k: [float(v) for v in R.get(k, []) if fnum(v) is not None]
    mib = lambda kib: None if kib is None else kib / 1024.0
    f1 = lambda v, spec="%.1f": "-" if v is None else spec % v

    size = int(one("size_bytes", "0"))
    plain_mbps, pipe_mbps = num("plain_mbps"), num("pipe_mbps")
    res_mbps, rest_mbps = num("res_mbps"), num("rest_mbps")
    ratio = lambda v: "-" if v is None or not plain_mbps else "%.2fx" % (v / plain_mbps)
    def rss(phase):
        peak, idle = num(phase + "_hwm_kib"), num(phase + "_idle_kib")
        if peak is None:
            return "-"
        return "%.1f MiB" % mib(peak) + ("" if idle is None else " (idle %.1f)" % mib(idle))
    apps = nums("append_s")
    n_app = int(one("appends", "0"))
    app_mib = int(one("append_bytes", "0")) // MIB
    app_col = "-"
    body = {"sized": "Content-Length", "chunked": "chunked"}.get(one("body"), "?")
    if apps:
        app_col = "%.3f / %.3f s" % (pct(apps, 50), pct(apps, 95))

    print()
    print("Resumable uploads (tus 1.0 PATCH) against one plain PUT: %s MiB file, targets: %s"
          % (size // MIB, one("targets_desc", "?")))
    print("%s; %s core(s), load average %s" % (one("commit", "?"), one("cores", "?"), one("load", "?")))
    print()
    rows = [
        ["plain PUT (curl -T file)", f1(plain_mbps), ratio(plain_mbps), rss("plain"), "-"],
        ["plain PUT from a pipe (dd | curl -T -, %s)" % body, f1(pipe_mbps), ratio(pipe_mbps), rss("pipe"), "-"],
        ["resumable: POST + %d PATCH x %d MiB (dd | curl -T -, %s)" % (n_app, app_mib, body), f1(res_mbps),
         ratio(res_mbps), rss("resumable"), app_col],
    ]
    if one("rest_bytes"):
        rows.append(["resumable: 1 PATCH of the rest (%d MiB) after %d cuts"
                     % (int(one("rest_bytes")) // MIB, len(nums("rc_total_s"))),
                     f1(rest_mbps), ratio(rest_mbps), rss("reconnect"), "-"])
    print_table(["mode", "MB/s", "ratio to plain PUT", "broadcaster peak RSS", "append p50 / p95"], rows)
    print()
    if apps:
        print("appends (curl time_total per PATCH, n=%d): p50 %.3f s, p95 %.3f s, max %.3f s; the last one, which"
              % (len(apps), pct(apps, 50), pct(apps, 95), max(apps)))
        print("  completes the upload (every target checks its copy's SHA-256, then the commit), took %.3f s;"
              % apps[-1])
        if len(apps) > 1:
            print("  without it: p50 %.3f s, p95 %.3f s" % (pct(apps[:-1], 50), pct(apps[:-1], 95)))
    print("MB/s = bytes / 10^6 / wall time: plain PUTs = curl's time_total; resumable = from the start of the")
    print("creation POST to the last PATCH's 204 (the client's gaps between requests included); the last row =")
    print("curl's time of that one PATCH. Each row ran on a broadcaster process of its own (restarted; same")
    print("targets and metadata); peak RSS = its VmHWM at the end of the phase, start-up included (idle = VmHWM")
    print("right after start; the reconnect row's peak covers the cuts, the reconnects and the rest).")
    peaks = [mib(num(k)) for k in ("plain_hwm_kib", "pipe_hwm_kib", "resumable_hwm_kib", "reconnect_hwm_kib")
             if num(k) is not None]
    if peaks:
        print("goal: broadcaster peak RSS < %.0f MiB: %s (largest %.1f MiB)"
              % (GOAL_RSS_MIB, "met" if max(peaks) < GOAL_RSS_MIB else "MISSED", max(peaks)))

    tot, hd, pa = nums("rc_total_s"), nums("rc_head_s"), nums("rc_patch_s")
    print()
    if tot:
        probe_kib = int(one("probe_bytes", "0")) // 1024
        retries = sum(int(v) for v in R.get("rc_retries", []))
        stale = sum(int(v) for v in R.get("rc_stale_head", []))
        fed, kept = nums("rc_fed"), nums("rc_kept")
        ms = lambda xs: "%.1f / %.1f / %.1f ms" % (pct(xs, 50) * 1e3, pct(xs, 95) * 1e3, max(xs) * 1e3)
        print("Reconnect to the first accepted byte (%d cuts; p50 / p95 / max):" % len(tot))
        print_table(["step", "p50 / p95 / max"], [
            ["HEAD (new TCP connection + HEAD -> Upload-Offset)", ms(hd)],
            ["resumed PATCH of the next %d KiB -> 204, Upload-Offset advanced" % probe_kib, ms(pa)],
            ["reconnect total = HEAD issued -> first Upload-Offset advance", ms(tot)],
        ])
        print("definition: each cut SIGKILLs a `curl -X PATCH -T -` sending the rest of the file right after %d MiB"
              % (int(one("cut_bytes", "0")) // MIB))
        print("  of it went into its pipe, so data is in flight; the client then opens a new connection, sends HEAD, and")
        print("  PATCHes the next %d KiB at the offset HEAD gave; the time runs from issuing HEAD to that PATCH's 204," % probe_kib)
        print("  whose Upload-Offset is the first advance: those bytes are fsynced on every target and checkpointed.")
        print("  When HEAD was stale (the cut append was still being checkpointed) the PATCH got 409 with the right")
        print("  offset and was re-sent at it; that is included. HEAD stale %d time(s), 409s %d." % (stale, retries))
        if fed and kept:
            print("  kept after a cut: %.1f of %.1f MiB fed per cut on average (what reached the targets counts)"
                  % (sum(kept) / len(kept) / MIB, sum(fed) / len(fed) / MIB))
        fa = num("rest_first_advance_s")
        if fa is not None:
            print("  A resume as ONE PATCH of everything left advances Upload-Offset first at its first checkpoint,")
            print("  after BROADCASTER_RESUMABLE_CHECKPOINT_BYTES (%s): measured %.3f s after that PATCH started"
                  % (one("checkpoint_desc") or "64 MiB, the default", fa))
            print("  (HEAD before it %.1f ms; HEAD polled every 10 ms during it)." % ((num("rest_head_s") or 0) * 1e3))
    elif one("rc_skipped"):
        print("Reconnect: skipped (%s)" % one("rc_skipped"))

    print()
    checks = R.get("check", [])
    for c in checks:
        print(c)
    ok = one("verdict") == "PASS"
    print("result: %s (every upload committed on every target, every copy has the file's SHA-256)"
          % ("PASS" if ok else "FAIL"))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "check-summary" and len(args) in (4, 5):
        return cmd_check_summary(*args)
    if cmd == "reconnect" and len(args) == 7:
        return cmd_reconnect(*args)
    if cmd == "resume-rest" and len(args) == 4:
        return cmd_resume_rest(*args)
    if cmd == "report" and len(args) == 1:
        return cmd_report(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
