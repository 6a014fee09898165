#!/usr/bin/env bash
# Phase 3 benchmark: `evac fingerprint` looking for the copies of N leftovers in a candidate tree
# (default 20,000 files, ~3.6 GiB, mixed sizes, many files sharing a size), against
#   - a full-tree hash: every file read with b3sum (what fingerprinting by brute force costs),
#   - rmlint doing the same work: duplicates of the N leftovers' contents (a tagged directory)
#     in the tree (`rmlint -T df -k -m TREE // REF`),
#   - fclones doing the same work (`fclones group --isolate REF TREE`), if it is installed
#     (or FCLONES=1: `cargo install fclones` first, which takes minutes).
# The leftovers are half readable (failed: chattr +i) and half HSM stubs (an xattr marks them;
# the HSM listing gives blake3 for some, md5 for the others: those sizes must be read in full).
# Each copy hides in the tree under another name; each leftover also has a same-size decoy.
# Every timed run starts from a cold page cache. evac is timed twice: first run, and a rerun
# over the unchanged tree (its hashes come from the journal's cache). Writes the section
# between the fingerprint markers of bench/RESULTS.md (bench/run.sh keeps it).
#
# Usage (root: it drops caches and uses chattr):  bench/fingerprint.sh
#   FILES=20000 LEFTOVERS=50 SEED=1 EVAC=target/release/evac BENCH_DIR=/var/tmp FCLONES=0
# Needs python3, e2fsprogs (chattr), attr (setfattr); installs b3sum and rmlint with apt-get.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
FILES=${FILES:-20000}
LEFTOVERS=${LEFTOVERS:-50}
SEED=${SEED:-1}
FCLONES=${FCLONES:-0}
EVAC=${EVAC:-$REPO/target/release/evac}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "fingerprint.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it drops the page cache and uses chattr +i)"
for v in FILES LEFTOVERS SEED; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number"; done
(( LEFTOVERS >= 2 && FILES >= 4 * LEFTOVERS )) || die "need LEFTOVERS >= 2 and FILES >= 4 x LEFTOVERS"
need=()
command -v b3sum >/dev/null || need+=(b3sum)
command -v rmlint >/dev/null || need+=(rmlint)
command -v setfattr >/dev/null || need+=(attr)
command -v chattr >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } \
        || die "apt-get install ${need[*]} failed"
fi
if [[ $FCLONES == 1 ]] && ! command -v fclones >/dev/null; then
    log "cargo install fclones (minutes)"
    cargo install --quiet --locked fclones || die "cargo install fclones failed"
    export PATH=$HOME/.cargo/bin:$PATH
fi
[[ -x $EVAC ]] || (cd "$REPO" && cargo build --release -q) || die "cannot build evac"

W=$(mktemp -d "$BENCH_DIR/evac-fp-bench.XXXXXX")
cleanup() {
    # Immutable leftovers cannot be removed until the flag goes.
    [[ -d $W/src ]] && chattr -R -i "$W/src" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
T0=$(date +%s)

log "generating the candidate tree ($FILES files) and $LEFTOVERS leftovers in $W"
python3 - "$W" "$FILES" "$LEFTOVERS" "$SEED" <<'PY'
import hashlib, math, os, random, subprocess, sys
w, n, nl, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
pool = rnd.randbytes(64 << 20)

def logu(lo, hi):
    return math.exp(rnd.uniform(math.log(lo), math.log(hi)))

def size_of(i):
    # 90% small (512 B steps: many files share each size), 9.5% medium, 0.5% large.
    r = i % 200
    if r < 180:
        return max(512, int(logu(512, 64 << 10)) // 512 * 512)
    if r < 199:
        return int(logu(64 << 10, 4 << 20)) // 4096 * 4096
    return int(logu(8 << 20, 40 << 20)) // (1 << 20) << 20

def data(tag, size):
    # A unique head, then a slice of the pool: distinct files, cheap to make.
    head = hashlib.sha256(tag.encode()).digest()
    off = rnd.randrange(0, len(pool) - size) if size < len(pool) else 0
    body = pool[off:off + size - 32] if size <= len(pool) else (pool * (size // len(pool) + 1))[:size - 32]
    return (head + body)[:size]

def b3(d):
    out = subprocess.run(["b3sum", "--no-names"], input=d, capture_output=True, check=True)
    return out.stdout.decode().strip()

def put(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)

tree = os.path.join(w, "tree")
sizes = [size_of(i) for i in range(n)]
# The leftovers' originals: spread over small, medium and large files.
by_kind = {"s": [], "m": [], "l": []}
for i, s in enumerate(sizes):
    by_kind["s" if s <= 64 << 10 else "m" if s <= 4 << 20 else "l"].append(i)
picked = set()
want = {"s": nl * 6 // 10, "m": nl * 3 // 10}
want["l"] = nl - want["s"] - want["m"]
for k, c in want.items():
    picked.update(rnd.sample(by_kind[k], min(c, len(by_kind[k]))))
while len(picked) < nl:
    picked.add(rnd.randrange(n))
picked = sorted(picked)[:nl]
lefts = {}
for i in range(n):
    d = data(f"f{i}", sizes[i])
    put(os.path.join(tree, f"p{i % 23:02d}", f"d{i % 97:02d}", f"f{i:06d}.dat"), d)
    if i in picked:
        lefts[i] = d
listing = ["#path\tstate\ttier\tvolume\tposition\tsize\tchecksum"]
readable, stubs = [], []
for k, i in enumerate(picked):
    d = lefts[i]
    # The leftover, in SOURCE under its own name (the copy in the tree has another).
    rel = f"proj{k % 5}/report-{k:03d}.bin"
    put(os.path.join(w, "src", rel), d)
    # What rmlint and fclones get to look for (they cannot read a stub either: they get its data).
    put(os.path.join(w, "ref", f"l{k:03d}"), d)
    # A same-size decoy with another head.
    put(os.path.join(tree, "decoys", f"x{k:03d}"), data(f"decoy{k}", len(d)))
    if k % 2 == 0:
        readable.append(rel)
    else:
        cs = "blake3:" + b3(d) if k % 4 == 1 else "md5:" + hashlib.md5(d).hexdigest()
        listing.append(f"{os.path.join(w, 'src', rel)}\tstaged_out\t1\tVOL{k % 3}\t{k}\t{len(d)}\t{cs}")
        stubs.append(rel)
open(os.path.join(w, "listing.tsv"), "w").write("\n".join(listing) + "\n")
open(os.path.join(w, "readable"), "w").write("\n".join(readable) + "\n")
open(os.path.join(w, "stubs"), "w").write("\n".join(stubs) + "\n")
total = sum(sizes) + sum(len(d) for d in lefts.values())
open(os.path.join(w, "tree.bytes"), "w").write(str(total))
PY
TREE_FILES=$(find "$W/tree" -type f | wc -l)
TREE_BYTES=$(cat "$W/tree.bytes")
while IFS= read -r rel; do [[ -n $rel ]] && chattr +i "$W/src/$rel"; done < "$W/readable"
while IFS= read -r rel; do [[ -n $rel ]] && setfattr -n user.evacbench -v released "$W/src/$rel"; done < "$W/stubs"
J=$W/journal.db
"$EVAC" run "$W/src" "$W/dst" --journal "$J" --quiet --retry-rounds 0 --hsm xattr:user.evacbench=released 2>/dev/null || [[ $? -eq 3 ]]
"$EVAC" hsm import --journal "$J" --format tsv --quiet "$W/listing.tsv" >/dev/null

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Seconds of wall time of "$@" (stdout to $W/out.last).
timed() {
    local s e
    s=$(date +%s.%N)
    "$@" > "$W/out.last" 2> "$W/err.last" || { local rc=$?; [[ $rc -eq 3 ]] || { cat "$W/err.last" >&2; die "$* exited $rc"; }; }
    e=$(date +%s.%N)
    python3 -c "print(f'{$e - $s:.2f}')"
}

log "evac fingerprint, cold cache"
cold; T_EVAC=$(timed "$EVAC" fingerprint --journal "$J" --search "$W/tree" --quiet)
FP_STATUS=$("$EVAC" status --journal "$J" --json)
read -r FP_READ FP_BYTES < <(python3 - "$J" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(*c.execute("SELECT files_read, bytes_read FROM fp_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone())
PY
)
log "evac fingerprint again, cold cache (hashes from the journal)"
cold; T_EVAC2=$(timed "$EVAC" fingerprint --journal "$J" --search "$W/tree" --quiet)
read -r FP_READ2 FP_FROM_CACHE < <(python3 - "$J" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(*c.execute("SELECT files_read, from_cache FROM fp_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone())
PY
)
log "full-tree hash (b3sum), cold cache"
cold; T_B3=$(timed sh -c "find '$W/tree' -type f -print0 | xargs -0 -n 256 -P 2 b3sum --num-threads 1 > /dev/null")
log "rmlint, same work, cold cache"
cold; T_RM=$(cd "$W" && timed rmlint -T df -k -m -o "json:$W/rmlint.json" "$W/tree" // "$W/ref")
RM_FOUND=$(python3 - "$W" <<'PY'
import json, os, sys
w = sys.argv[1]
groups = {}
for e in json.load(open(os.path.join(w, "rmlint.json"))):
    if e.get("type") == "duplicate_file":
        groups.setdefault(e["checksum"], []).append(e["path"])
ref = os.path.join(w, "ref") + "/"
print(sum(1 for g in groups.values() if any(p.startswith(ref) for p in g) and any(not p.startswith(ref) for p in g)))
PY
)
T_FC=""
if command -v fclones >/dev/null; then
    log "fclones, same work, cold cache"
    cold; T_FC=$(timed fclones group --isolate --quiet "$W/ref" "$W/tree")
fi
T_END=$(date +%s)

python3 - "$RESULTS" "$FP_STATUS" <<PY
import json, sys
results, st = sys.argv[1], json.loads(sys.argv[2])
fp = st["fingerprint"]
n, tree_files, tree_bytes = $LEFTOVERS, $TREE_FILES, $TREE_BYTES
t_evac, t_evac2, t_b3, t_rm = $T_EVAC, $T_EVAC2, $T_B3, $T_RM
t_fc = "$T_FC"
gib = tree_bytes / 2**30
rows = [
    ("\`evac fingerprint\` (first run)", t_evac, f"{$FP_READ} files, {$FP_BYTES / 2**20:.0f} MiB read; {fp['exact']}/{n} exact"),
    ("\`evac fingerprint\` (rerun, unchanged tree)", t_evac2, f"{$FP_READ2} files read, {$FP_FROM_CACHE} from the journal's cache"),
    ("full-tree hash: \`find | xargs -P2 b3sum\`", t_b3, f"{tree_files} files, {gib:.2f} GiB read"),
    ("\`rmlint -T df -k -m TREE // REF\` (same work)", t_rm, f"copies found for {$RM_FOUND}/{n}"),
]
if t_fc:
    rows.append(("\`fclones group --isolate REF TREE\` (same work)", float(t_fc), ""))
lines = [
    "<!-- fingerprint: written by bench/fingerprint.sh -->",
    "## Fingerprinting leftovers (phase 3)",
    "",
    f"Command: \`FILES=$FILES LEFTOVERS=$LEFTOVERS SEED=$SEED bench/fingerprint.sh\` — a candidate tree of {tree_files} files",
    f"({gib:.2f} GiB; 90% of 512 B–64 KiB in 512-byte steps, so many files share a size; the rest up to 40 MiB);",
    f"{n} leftovers whose copies hide in it under other names, each with a same-size decoy; half readable",
    "(failed), half HSM stubs known by the listing's blake3 or md5 only (their sizes are read in full).",
    "Cold page cache before every run.",
    "",
    "| command | wall (s) | what it did |",
    "|---|---:|---|",
]
lines += [f"| {c} | {t:.2f} | {w} |" for c, t, w in rows]
lines += [
    "",
    f"- evac / full-tree hash = **{t_evac / t_b3:.2f}x** (the index reads {$FP_BYTES / max(tree_bytes, 1) * 100:.1f}% of the bytes)",
    f"- evac / rmlint (same work) = **{t_evac / t_rm:.2f}x**" + (f"; evac / fclones = **{t_evac / float(t_fc):.2f}x**" if t_fc else ""),
    f"- rerun / first run = {t_evac2 / t_evac:.2f}x",
    f"- the whole benchmark took {$T_END - $T0} s",
    "<!-- /fingerprint -->",
]
section = "\n".join(lines) + "\n"
print(section)
try:
    text = open(results).read()
except FileNotFoundError:
    text = ""
a, b = text.find("<!-- fingerprint"), text.find("<!-- /fingerprint -->")
if a >= 0 and b > a:
    text = text[:a] + section + text[b + len("<!-- /fingerprint -->\n"):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(results, "w").write(text)
PY
[[ $(python3 -c "import json,sys; print(json.loads(sys.argv[1])['fingerprint']['exact'])" "$FP_STATUS") -eq $LEFTOVERS ]] \
    || die "evac did not find an exact copy of every leftover"
