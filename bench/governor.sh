#!/usr/bin/env bash
# evac benchmark: does the load governor keep a foreground workload usable?
#
# A foreground reader (fio: 4 KiB random reads with O_DIRECT, 200 a second, one at a time, on a
# 1 GiB file) measures its own read latency on the disk SOURCE is on, first alone, then while
# evac relocates a tree of large files from that disk to DEST (by default a tmpfs standing in for
# the new storage, so that the disk sees what an evacuation does to the old server: evac's reads)
# with the governor off, with it on at its default targets, and on with tighter targets. For each
# case: the reader's p50/p99/p99.9 latency and evac's throughput while the reader ran. Every case
# starts from the same state: the relocated files put back, caches dropped, the disk idle.
#
# NEEDS: root (drop_caches), fio (apt-get install -y fio), python3.
# Usage: sudo bench/governor.sh         (options as environment variables:)
#   BENCH_DIR  work directory on the disk to measure (default /var/tmp/evac-governor-bench; kept
#              with its tree for later runs, delete it by hand)
#   FILES      4 MiB files in the tree (default 2500: 9.8 GiB; it must outlast SECS at full speed,
#              which the report checks)
#   SECS       seconds the reader runs per case (default 20)
#   WORKERS    evac's --workers (default 8)
#   DEST_DIR   where DEST goes (default /dev/shm/evac-governor-dst, a tmpfs: it must hold what evac
#              copies in SECS; give a directory on SOURCE's disk to measure both on one disk)
#   RESULTS    report (default bench/RESULTS.md; the section between the governor markers)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
W=${BENCH_DIR:-/var/tmp/evac-governor-bench}
FILES=${FILES:-2500}
SECS=${SECS:-20}
WORKERS=${WORKERS:-8}
RESULTS=${RESULTS:-$here/RESULTS.md}
EVAC=${EVAC:-$repo/target/release/evac}
DEST_DIR=${DEST_DIR:-/dev/shm/evac-governor-dst}
[ "$(id -u)" = 0 ] || { echo "bench/governor.sh: needs root (drop_caches)" >&2; exit 1; }
command -v fio >/dev/null || { echo "bench/governor.sh: needs fio (apt-get install -y fio)" >&2; exit 1; }
[ -x "$EVAC" ] || (cd "$repo" && cargo build --release)
mkdir -p "$W"
cd "$W"
dev=$(python3 -c "
import os
st = os.stat('.')
print(f'{os.major(st.st_dev)}:{os.minor(st.st_dev)}')")
disk=$(basename "$(readlink -f /sys/dev/block/$dev)")

# The tree: FILES files of 4 MiB, 100 to a directory.
if [ "$(cat tree.files 2>/dev/null)" != "$FILES" ]; then
    rm -rf src journal.db* tree.files
    mkdir src
    head -c 4M /dev/urandom > block
    for i in $(seq 0 $((FILES - 1))); do
        d=src/d$((i / 100))
        [ -d "$d" ] || mkdir "$d"
        cp block "$d/f$i"
    done
    echo "$FILES" > tree.files
fi

# Put every relocated file back in place of its link: by rename when DEST is on the same
# filesystem, else a fresh copy of the block every file was made of.
restore() {
    python3 - "$W" "$DEST_DIR" <<'EOF'
import os, shutil, sys
w = sys.argv[1]
for root, dirs, files in os.walk(os.path.join(w, "src")):
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p):
            t = os.readlink(p)
            try:
                os.rename(t, p)
            except OSError:
                os.unlink(p)
                shutil.copyfile(os.path.join(w, "block"), p)
EOF
    rm -rf "$DEST_DIR" dst journal.db*
    mkdir -p "$DEST_DIR"
}

# Until the disk has been under 2% busy for three seconds in a row (the restore's writes and the
# deletes' discards are done).
wait_idle() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    local quiet=0
    for _ in $(seq 1 180); do
        a=$(awk -v d="$disk" '$3==d{print $13}' /proc/diskstats)
        sleep 1
        b=$(awk -v d="$disk" '$3==d{print $13}' /proc/diskstats)
        if [ $((b - a)) -lt 20 ]; then quiet=$((quiet + 1)); else quiet=0; fi
        [ $quiet -ge 3 ] && return
    done
}

# case LABEL [evac options...]: prints "LABEL p50 p99 p999 MiB/s"
one() {
    label=$1
    shift
    restore
    wait_idle
    local ev=""
    if [ "$label" != alone ]; then
        "$EVAC" run src "$DEST_DIR" --journal journal.db --workers "$WORKERS" -q \
            --governor-log "gov-$label.tsv" "$@" 2>"evac-$label.err" &
        ev=$!
        sleep 1
    fi
    fio --name=fg --filename="$W/fg.dat" --size=1G --direct=1 --rw=randread --bs=4k \
        --iodepth=1 --rate_iops=200 --time_based --runtime="$SECS" --output-format=json \
        > "fio-$label.json" 2>/dev/null
    local mibs=0
    if [ -n "$ev" ]; then
        # What evac relocated while the reader ran, over the time it ran (a run that finished
        # early is flagged: the reader was then alone for the rest).
        mibs=$("$EVAC" status --journal journal.db --json | python3 -c "
import json, sys, time
s = json.load(sys.stdin)
r = s['last_run']
end = r['finished_at'] or time.time()
flag = '' if r['finished_at'] is None else '(finished-early)'
print(f\"{s['bytes_relocated'] / 1048576 / max(end - r['started_at'], 0.001):.1f}{flag}\")")
        kill -TERM "$ev" 2>/dev/null || true
        wait "$ev" || true
    fi
    python3 - "$label" "fio-$label.json" "$mibs" <<'EOF'
import json, sys
label, path, mibs = sys.argv[1:]
r = json.load(open(path))["jobs"][0]["read"]
p = r["clat_ns"]["percentile"]
print(label, f'{p["50.000000"] / 1e6:.2f}', f'{p["99.000000"] / 1e6:.2f}',
      f'{p["99.900000"] / 1e6:.2f}', mibs)
EOF
}

# Lay out the reader's file once.
[ -f fg.dat ] || fio --name=fg --filename="$W/fg.dat" --size=1G --rw=write --bs=1M \
    --output-format=terse >/dev/null

{
    one alone
    one off --governor off
    one on --governor on
    one on-5ms --governor on --max-latency 5
    one on-util30 --governor on --max-util 30
    one on-util10 --governor on --max-util 10
} | tee results.txt

dest_fs=$(stat -f -c %T "$DEST_DIR")
rm -rf "$DEST_DIR"
python3 - "$RESULTS" results.txt "$SECS" "$WORKERS" "$FILES" "$disk" "$dest_fs" <<'EOF'
import sys, datetime
path, res, secs, workers, files, disk, dest_fs = sys.argv[1:]
rows = [l.split() for l in open(res) if l.strip()]
by = {r[0]: r for r in rows}
base = float(by["alone"][2])
what = {
    "alone": "no evac (baseline)",
    "off": "evac, governor off",
    "on": "evac, governor on (default targets)",
    "on-5ms": "evac, governor on, `--max-latency 5`",
    "on-util30": "evac, governor on, `--max-util 30`",
    "on-util10": "evac, governor on, `--max-util 10`",
}
lines = [
    "<!-- governor: written by bench/governor.sh -->",
    "## Load governor: foreground latency while evac runs",
    "",
    f"`sudo bench/governor.sh` on {datetime.date.today()}: a reader doing 200 random 4 KiB",
    f"O_DIRECT reads a second on disk `{disk}` for {secs} s, alone and while `evac run --workers",
    f"{workers}` relocates {files} files of 4 MiB from that disk to DEST on a {dest_fs} filesystem",
    "(the new storage; `DEST_DIR` on the same disk measures both on one). Throughput is what evac",
    "relocated while the reader ran, over the time it ran; a governed run starts with all workers",
    "and settles within seconds, so its steady rate is lower than this average.",
    "",
    "| case | reader p50 ms | reader p99 ms | reader p99.9 ms | p99 vs alone | evac MiB/s |",
    "|---|---:|---:|---:|---:|---:|",
]
for r in rows:
    lines.append(
        f"| {what.get(r[0], r[0])} | {r[1]} | {r[2]} | {r[3]} | {float(r[2]) / base:.1f}x | "
        f"{r[4] if r[0] != 'alone' else '-'} |"
    )
lines += ["", "<!-- /governor -->", ""]
section = "\n".join(lines)
try:
    text = open(path).read()
except FileNotFoundError:
    text = ""
a, b = text.find("<!-- governor"), text.find("<!-- /governor -->")
if a >= 0 and b > a:
    text = text[:a] + section + text[b + len("<!-- /governor -->\n"):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(section)
EOF
