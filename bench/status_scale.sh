#!/usr/bin/env bash
# How long `evac status --json` takes on journals of 1 M and 10 M files (target: under 50 ms at
# 10 M, DESIGN.md). Each journal starts as a real one (a real run over a one-file tree writes its
# plan, its schema and its first run); the rows of a multi-day evacuation half way through its
# last pass are then generated in SQLite directly, through the same triggers that keep the
# counters in a run's own transactions:
#
#   per 1000 files: 955 relocated (linked to their copies, seen by the last walk), 20 pending,
#   10 symlinks left as they are, 5 deferred (busy), 2 failed, 3 gone, 5 relocated by an earlier
#   run whose links the last walk did not see; one directory per 100 files.
#
# Then it times the real binary answering `status --json` (REPS times after one warm-up, page
# cache warm; COLD=1 adds one run after dropping the page cache, as root), checks the counters
# against a full count, and times that full count (what status did before the counters) for
# comparison. The figures go between the status-scale markers of bench/RESULTS.md.
#
# Environment:
#   ROWS       journal sizes (default "1000000 10000000")
#   BENCH_DIR  where the journals go (default /var/tmp/evac-status-scale; ~1.3 GiB per 10 M)
#   EVAC       the binary (default target/release/evac, built if missing)
#   REPS       timed runs per size (default 11)
#   COLD       1: also one run with a cold page cache (drops caches: root only)
#   KEEP       1: keep the journals
#   RESULTS    report (default bench/RESULTS.md; the section between the status-scale markers)
#
# Generating 10 M rows takes a few minutes; run it at a low priority on a shared machine:
#   nice -n 10 bench/status_scale.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
ROWS=${ROWS:-"1000000 10000000"}
BENCH_DIR=${BENCH_DIR:-/var/tmp/evac-status-scale}
EVAC=${EVAC:-$repo/target/release/evac}
REPS=${REPS:-11}
COLD=${COLD:-0}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-$here/RESULTS.md}
CMDLINE="ROWS=\"$ROWS\" REPS=$REPS bench/status_scale.sh"

command -v sqlite3 >/dev/null || { echo "status_scale: needs the sqlite3 shell" >&2; exit 1; }
if [ ! -x "$EVAC" ]; then
    (cd "$repo" && cargo build --release)
fi
mkdir -p "$BENCH_DIR"
out=$BENCH_DIR/results.tsv
: >"$out"

log() { echo "status_scale: $*" >&2; }

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
r AS (SELECT i, i % 1000 AS m, 1024 + (i * 7919) % 65536 AS sz FROM k)
INSERT INTO files (path, kind, state, reason, cause, dev, ino, nlink, size, mode, uid, gid,
                   mtime_ns, ctime_ns, blake3, dest_ino, linked_ino, seen_run, updated_at)
SELECT printf('d%06d/s%03d/f%09d.dat', i / 10000, (i / 100) % 100, i),
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
       CASE WHEN m < 992 THEN 1 END,
       1800000000 + i / 1000
  FROM r;
INSERT INTO dirs (path, depth, mode, uid, gid, atime_ns, mtime_ns, seen_run, touched)
SELECT printf('d%06d/s%03d', i / 10000, (i / 100) % 100), 1, 16877, 0, 0, 0, 0, 1, 1
  FROM (WITH RECURSIVE k(i) AS (SELECT $lo UNION ALL SELECT i + 100 FROM k WHERE i + 100 < $hi) SELECT i FROM k);
COMMIT;
SQL
    done
    sqlite3 "$j" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
    t1=$(date +%s.%N)
    gen=$(awk "BEGIN { print $t1 - $t0 }")
    size=$(stat -c %s "$j")
    log "$n rows: generated in ${gen}s, journal $size bytes; checking the counters against a full count"
    kept=$(sqlite3 "$j" "SELECT state, sum(files), sum(bytes) FROM counts GROUP BY state HAVING sum(files) != 0 ORDER BY state")
    counted=$(sqlite3 "$j" "SELECT state, count(*), coalesce(sum(size), 0) FROM files GROUP BY state ORDER BY state")
    if [ "$kept" != "$counted" ]; then
        echo "status_scale: counters differ from a full count at $n rows:" >&2
        diff <(echo "$kept") <(echo "$counted") >&2 || true
        exit 1
    fi
    # What status counted before the counters: the same figures by full scans (page cache warm).
    t0=$(date +%s.%N)
    sqlite3 "$j" >/dev/null <<'SQL'
SELECT state, count(*) FROM files GROUP BY state;
SELECT coalesce(sum(size), 0), coalesce(sum(CASE WHEN state = 'relocated' THEN size ELSE 0 END), 0)
  FROM files WHERE kind = 'file' AND state NOT IN ('gone', 'skipped');
SELECT count(*) FROM files WHERE linked_ino IS NOT NULL AND (seen_run IS NULL OR seen_run != 1
   OR state != 'relocated' OR kind != 'file') AND state NOT IN ('copying', 'placed');
SQL
    t1=$(date +%s.%N)
    scan=$(awk "BEGIN { print $t1 - $t0 }")
    python3 - "$EVAC" "$j" "$REPS" "$COLD" "$n" "$gen" "$size" "$scan" >>"$out" <<'PY'
import json, subprocess, sys, time
evac, j, reps, cold, n, gen, size, scan = sys.argv[1:]
cmd = [evac, "status", "--journal", j, "--json"]
def once():
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
    return time.perf_counter() - t, p.stdout
once()
times = []
for _ in range(int(reps)):
    t, out = once()
    times.append(t)
st = json.loads(out)
total = sum(st["files"].values())
assert total == int(n) + 1, f"status counts {total} files, the journal has {int(n) + 1}"
cold_t = ""
if cold == "1":
    subprocess.run(["sync"], check=True)
    open("/proc/sys/vm/drop_caches", "w").write("3\n")
    cold_t = f"{once()[0] * 1000:.1f}"
times.sort()
print("\t".join([n, f"{times[len(times) // 2] * 1000:.1f}", f"{times[-1] * 1000:.1f}", cold_t,
                 f"{float(scan) * 1000:.0f}", f"{float(gen):.0f}", size,
                 json.dumps(st["files"], sort_keys=True)]))
PY
    log "$(tail -n1 "$out")"
    [ "$KEEP" = 1 ] || rm -rf "$w"
done

python3 - "$RESULTS" "$out" "$CMDLINE" "$REPS" <<'PY'
import re, sys, os, platform
results, tsv, cmdline, reps = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
lines = [
    "<!-- status-scale: written by bench/status_scale.sh -->",
    "## `status --json` on large journals",
    "",
    f"Command: `nice -n 10 {cmdline}` ({os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}).",
    "A real run writes the journal's plan and schema; the files (a last pass half done: 95.5%",
    "relocated, 2% pending, 1% symlinks left, 0.5% deferred, 0.2% failed, 0.3% gone, 0.5% copies",
    "whose links the last walk did not see) and one directory per 100 files are then generated in",
    "SQLite, through the triggers that keep the counters. Times are the real binary's wall time",
    f"(process start to exit), median and worst of {reps} after one warm-up, page cache warm.",
    "\"Full scan\" is what status computed before the counters (files by state, the byte totals and",
    "the copies whose link is gone, in the sqlite3 shell), for comparison.",
    "",
    "| files in the journal | `status --json` median (ms) | worst (ms) | cold cache (ms) | full scan (ms) | generation (s) | journal size |",
    "|---:|---:|---:|---:|---:|---:|---:|",
]
for n, med, worst, cold, scan, gen, size in (r[:7] for r in rows):
    lines.append(f"| {int(n):,} | {med} | {worst} | {cold or '-'} | {scan} | {gen} | {int(size) / 2**20:,.0f} MiB |")
lines += ["", "Target: under 50 ms at 10 M files.", "<!-- /status-scale -->"]
section = "\n".join(lines)
try:
    text = open(results).read()
except FileNotFoundError:
    text = "# evac benchmark results\n"
pat = re.compile(r"<!-- status-scale: written by .*?<!-- /status-scale -->", re.S)
if pat.search(text):
    text = pat.sub(lambda _: section, text)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(results, "w").write(text)
print(section)
PY
