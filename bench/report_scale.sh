#!/usr/bin/env bash
# How long `evac report` takes to build its page from a journal of 1 M files (default; ROWS sets
# the sizes). The journal is made as bench/status_scale.sh makes its own: a real run over a
# one-file tree writes the plan, the schema and the first run, then the rows of a three-night
# evacuation are generated in SQLite directly, through the triggers that keep the counters:
#
#   per 1000 files: 955 relocated, 20 pending, 10 symlinks left, 5 deferred (busy), 2 failed,
#   3 gone, 5 relocated by an earlier run; one directory per 100 files;
#   three runs of 22 hours, a day apart, the files relocated evenly through them (each with its
#   `relocated` event), every deferred file deferred twice and every failed one failed once
#   (events with their cause), and a governor decision every 2 minutes (about 2,000).
# Paths are BLOBs, as evac stores them.
#
# Then it times the real binary writing the report (REPS times after one warm-up, page cache
# warm), checks that the page's plotted totals equal `status --json`, and writes the figures
# between the report-scale markers of bench/RESULTS.md.
#
# Environment: ROWS (default 1000000), BENCH_DIR (default /var/tmp/evac-report-scale), EVAC
# (default target/release/evac), REPS (default 5), KEEP=1 keeps the journal (and its report),
# RESULTS (default bench/RESULTS.md). Run it at a low priority on a shared machine:
#   nice -n 10 bench/report_scale.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
ROWS=${ROWS:-1000000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/evac-report-scale}
EVAC=${EVAC:-$repo/target/release/evac}
REPS=${REPS:-5}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-$here/RESULTS.md}
CMDLINE="ROWS=\"$ROWS\" REPS=$REPS bench/report_scale.sh"

command -v sqlite3 >/dev/null || { echo "report_scale: needs the sqlite3 shell" >&2; exit 1; }
if [ ! -x "$EVAC" ]; then
    (cd "$repo" && cargo build --release)
fi
mkdir -p "$BENCH_DIR"
out=$BENCH_DIR/results.tsv
: >"$out"
log() { echo "report_scale: $*" >&2; }

for n in $ROWS; do
    w=$BENCH_DIR/n$n
    rm -rf "$w"
    mkdir -p "$w/src" "$w/dst"
    echo seed >"$w/src/seed"
    j=$w/journal.db
    "$EVAC" run "$w/src" "$w/dst" --journal "$j" --quiet --hsm none --governor off
    log "$n rows: generating"
    t0=$(date +%s.%N)
    chunk=1000000
    for ((lo = 0; lo < n; lo += chunk)); do
        hi=$((lo + chunk < n ? lo + chunk : n))
        sqlite3 "$j" <<SQL
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE k(i) AS (SELECT $lo UNION ALL SELECT i + 1 FROM k WHERE i + 1 < $hi),
r AS (SELECT i, i % 1000 AS m, 1024 + (i * 7919) % 65536 AS sz,
             -- run 2, 3 or 4 (a third of the files each), evenly through its 22 hours
             (i * 3) / $n AS run3 FROM k)
INSERT INTO files (path, kind, state, reason, cause, dev, ino, nlink, size, mode, uid, gid,
                   mtime_ns, ctime_ns, blake3, dest_ino, linked_ino, seen_run, updated_at)
SELECT CAST(printf('d%06d/s%03d/f%09d.dat', i / 10000, (i / 100) % 100, i) AS BLOB),
       CASE WHEN m BETWEEN 955 AND 964 THEN 'symlink' ELSE 'file' END,
       CASE WHEN m < 955 OR m >= 995 THEN 'relocated' WHEN m < 965 THEN 'skipped'
            WHEN m < 985 THEN 'pending' WHEN m < 990 THEN 'deferred' WHEN m < 992 THEN 'failed'
            ELSE 'gone' END,
       CASE WHEN m BETWEEN 955 AND 964 THEN 'a symlink (left as it is)'
            WHEN m BETWEEN 985 AND 989 THEN 'open for writing by another process (pid ' || (i % 3000) || ' vi)'
            WHEN m BETWEEN 990 AND 991 THEN 'read SOURCE: Input/output error (os error 5)' END,
       CASE WHEN m BETWEEN 955 AND 964 THEN 'not_a_file' WHEN m BETWEEN 985 AND 989 THEN 'busy'
            WHEN m BETWEEN 990 AND 991 THEN 'error' END,
       2049, 1000000 + i, 1, CASE WHEN m BETWEEN 955 AND 964 THEN NULL ELSE sz END, 33188,
       1000 + i % 50, 100, 1700000000000000000 + i, 1700000000000000000 + i,
       CASE WHEN m < 955 OR m >= 995 THEN randomblob(32) END,
       CASE WHEN m < 955 OR m >= 995 THEN 5000000 + i END,
       CASE WHEN m < 955 OR m >= 995 THEN 5000000 + i END,
       CASE WHEN m < 992 THEN 4 END,
       1800000000 + run3 * 86400 + ((i - run3 * $n / 3) * 79200.0) / ($n / 3)
  FROM r;
INSERT INTO dirs (path, depth, mode, uid, gid, atime_ns, mtime_ns, seen_run, touched)
SELECT CAST(printf('d%06d/s%03d', i / 10000, (i / 100) % 100) AS BLOB), 1, 16877, 0, 0, 0, 0, 4, 1
  FROM (WITH RECURSIVE k(i) AS (SELECT $lo UNION ALL SELECT i + 100 FROM k WHERE i + 100 < $hi) SELECT i FROM k);
COMMIT;
SQL
    done
    sqlite3 "$j" <<SQL
PRAGMA synchronous = OFF;
BEGIN;
-- The real run of the seed file comes first; the three generated runs follow it.
UPDATE runs SET started_at = 1800000000 - 3600, heartbeat_at = 1800000000 - 3590,
                finished_at = 1800000000 - 3590 WHERE id = 1;
UPDATE log SET at = 1800000000 - 3595 WHERE run_id = 1;
UPDATE events SET at = 1800000000 - 3595 WHERE run_id = 1;
UPDATE files SET updated_at = 1800000000 - 3595 WHERE updated_at > 1800000000 + 3 * 86400;
INSERT INTO runs (id, pid, args, started_at, heartbeat_at, finished_at, exit_code,
                  files_relocated, bytes_relocated, rate_bps, throttle, totals, resynced_at)
SELECT 2 + r, 1000 + r, 'run --journal J', 1800000000 + r * 86400, 1800000000 + r * 86400 + 79200,
       1800000000 + r * 86400 + 79200, CASE WHEN r = 2 THEN 3 ELSE 4 END,
       (SELECT count(*) FROM files WHERE state = 'relocated') / 3,
       (SELECT sum(size) FROM files WHERE state = 'relocated') / 3, 0, 'none', NULL,
       CASE WHEN r = 2 THEN 1800000000 + r * 86400 + 79200 END
  FROM (SELECT 0 AS r UNION ALL SELECT 1 UNION ALL SELECT 2);
INSERT INTO events (file_id, run_id, at, event, detail, path, cause)
SELECT id, 2 + CAST((updated_at - 1800000000) / 86400 AS INTEGER), updated_at, 'relocated',
       hex(blake3), path, NULL FROM files WHERE state = 'relocated';
INSERT INTO events (file_id, run_id, at, event, detail, path, cause)
SELECT id, 2 + p, 1800000000 + p * 86400 + (id % 79200), 'deferred', reason, path, 'busy'
  FROM files, (SELECT 0 AS p UNION ALL SELECT 2) WHERE state = 'deferred';
INSERT INTO events (file_id, run_id, at, event, detail, path, cause)
SELECT id, 4, 1800172800 + (id % 79200), 'failed', reason, path, 'error'
  FROM files WHERE state = 'failed';
WITH RECURSIVE g(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM g WHERE k + 1 < 1980)
INSERT INTO log (run_id, at, level, message, event, fields)
SELECT 2 + k / 660, 1800000000 + (k / 660) * 86400 + (k % 660) * 120, 'info', 'governor',
       'governor',
       json_object('change', CASE WHEN k % 2 THEN 'up' ELSE 'down' END,
                   'allowed', 2 + k % 6, 'max', 8, 'duty', 1.0,
                   'limiting', CASE WHEN k % 3 = 0 THEN json_object('signal', 'load', 'value', 3.1, 'target', 2.0)
                                    WHEN k % 3 = 1 THEN json_object('signal', 'io_pressure', 'value', 0.8, 'target', 0.6)
                               END)
  FROM g;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
    t1=$(date +%s.%N)
    gen=$(awk "BEGIN { print $t1 - $t0 }")
    size=$(stat -c %s "$j")
    log "$n rows: generated in ${gen}s, journal $size bytes; timing evac report"
    python3 - "$EVAC" "$j" "$REPS" "$n" "$gen" "$size" "$w/report.html" >>"$out" <<'PY'
import json, re, subprocess, sys, time
evac, j, reps, n, gen, size, page = sys.argv[1:]
cmd = [evac, "report", "--journal", j, "--out", page]
def once():
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.PIPE)
    return time.perf_counter() - t
once()
times = sorted(once() for _ in range(int(reps)))
html = open(page).read()
data = json.loads(re.search(r'id="evac-report-data">(.*?)</script>', html, re.S).group(1))
st = json.loads(subprocess.run([evac, "status", "--journal", j, "--json"],
                               stdout=subprocess.PIPE, check=True).stdout)
assert data["files_relocated"] == st["files"]["relocated"], (data["files_relocated"], st["files"])
assert data["bytes_relocated"] == st["bytes_relocated"]
assert sum(data["deferred_now"].values()) == st["files"]["deferred"]
assert data["dirs_left"]["files"] == st["cutover"]["differences"].get("files not relocated", 0)
print("\t".join([n, f"{times[len(times) // 2]:.2f}", f"{times[-1]:.2f}", f"{float(gen):.0f}",
                 size, str(len(html)), str(data["files_relocated"])]))
PY
    log "$(tail -n1 "$out")"
    [ "$KEEP" = 1 ] || rm -rf "$w"
done

python3 - "$RESULTS" "$out" "$CMDLINE" "$REPS" <<'PY'
import re, sys, os, platform
results, tsv, cmdline, reps = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
lines = [
    "<!-- report-scale: written by bench/report_scale.sh -->",
    "## `evac report` on a large journal",
    "",
    f"Command: `nice -n 10 {cmdline}` ({os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}).",
    "The journal is made as for `status --json` above (a real run, then generated rows through the",
    "counters' triggers), with a history: three runs of 22 hours a day apart, a `relocated` event per",
    "relocated file, two deferrals per deferred file and a failure per failed one, and a governor",
    "decision every 2 minutes. Times are the real binary's wall time writing the page (process",
    f"start to exit), median and worst of {reps} after one warm-up, page cache warm; the page's",
    "plotted totals were checked against `status --json`.",
    "",
    "| files in the journal | `evac report` median (s) | worst (s) | generation (s) | journal size | page size |",
    "|---:|---:|---:|---:|---:|---:|",
]
for n, med, worst, gen, size, page, _ in (r[:7] for r in rows):
    lines.append(f"| {int(n):,} | {med} | {worst} | {gen} | {int(size) / 2**20:,.0f} MiB | {int(page) / 1024:,.0f} KiB |")
lines += ["<!-- /report-scale -->"]
section = "\n".join(lines)
try:
    text = open(results).read()
except FileNotFoundError:
    text = "# evac benchmark results\n"
pat = re.compile(r"<!-- report-scale: written by .*?<!-- /report-scale -->", re.S)
if pat.search(text):
    text = pat.sub(lambda _: section, text)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(results, "w").write(text)
print(section)
PY
