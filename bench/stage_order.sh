#!/usr/bin/env bash
# Recall-ordering benefit of `evac stage`: on one HSM listing (files scattered over tape volumes
# at random positions, the listing in path order as an HSM dumps it), count the simulated tape
# mounts and the seek distance (sum of |position - previous position| on the mounted volume,
# counted from position 0 after each mount) for
#   - the listing's order, one file at a time, as a naive `xargs stage-command` over it would
#     recall them, and
#   - the order evac's stage command was actually called in (read back from its log).
# Writes the figures into bench/RESULTS.md (section between the stage-order markers).
#
# Usage: bench/stage_order.sh            (FILES=3000 VOLUMES=12 SEED=7 by default)
# Needs: python3, the evac binary (built with cargo build --release if missing). No root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
FILES=${FILES:-3000}
VOLUMES=${VOLUMES:-12}
SEED=${SEED:-7}
EVAC=${EVAC:-$REPO/target/release/evac}
[ -x "$EVAC" ] || (cd "$REPO" && cargo build --release -q)
W=$(mktemp -d /var/tmp/evac-stage-order.XXXXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/src" "$W/tape"

# Stubs (size, no blocks) and their data on the "tape"; the listing in path order.
python3 - "$W" "$FILES" "$VOLUMES" "$SEED" <<'PY'
import os, random, sys
w, n, vols, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
rows = []
for i in range(n):
    rel = f"p{i % 17:02d}/d{i % 5}/f{i:05d}"
    vol = f"VOL{rnd.randrange(vols):03d}"
    rows.append([rel, vol])
# Positions: each volume's files get positions 1..k in a random order (as written over years).
by_vol = {}
for r in rows:
    by_vol.setdefault(r[1], []).append(r)
for vol, rs in by_vol.items():
    pos = list(range(1, len(rs) + 1))
    rnd.shuffle(pos)
    for r, p in zip(rs, pos):
        r.append(p)
with open(os.path.join(w, "listing.tsv"), "w") as f:
    f.write("#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n")
    for rel, vol, pos in sorted(rows):
        p = os.path.join(w, "src", rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        data = (rel + "\n").encode() * 8
        with open(os.path.join(w, "tape", rel.replace("/", "_")), "wb") as t:
            t.write(data)
        with open(p, "wb") as s:
            s.truncate(len(data))
        f.write(f"{p}\tstaged_out\t1\t{vol}\t{pos}\t{len(data)}\t\n")
PY

cat > "$W/stage.sh" <<EOF
#!/bin/sh
for p in "\$@"; do
  echo "\$p" >> "$W/stage.log"
  rel=\${p#$W/src/}
  cat "$W/tape/\$(echo "\$rel" | tr / _)" > "\$p"
done
EOF
chmod +x "$W/stage.sh"

"$EVAC" run "$W/src" "$W/dst" --journal "$W/j.db" --quiet || [ $? -eq 3 ]
"$EVAC" hsm import --journal "$W/j.db" --format tsv --quiet "$W/listing.tsv"
start=$(date +%s.%N)
"$EVAC" stage --journal "$W/j.db" --quiet --stage-cmd "$W/stage.sh"
end=$(date +%s.%N)

python3 - "$W" "$REPO/bench/RESULTS.md" "$FILES" "$VOLUMES" "$SEED" "$start" "$end" <<'PY'
import sys
w, results, n, vols, seed, t0, t1 = sys.argv[1:8]
where = {}
order_listing = []
for line in open(f"{w}/listing.tsv"):
    if line.startswith("#"):
        continue
    p, _, _, vol, pos, _, _ = line.rstrip("\n").split("\t")
    where[p] = (vol, int(pos))
    order_listing.append(p)
order_evac = [l.rstrip("\n") for l in open(f"{w}/stage.log")]
assert sorted(order_evac) == sorted(order_listing), "evac did not recall every file exactly once"

def cost(order):
    mounts, seek, cur, head = 0, 0, None, 0
    for p in order:
        vol, pos = where[p]
        if vol != cur:
            mounts, cur, head = mounts + 1, vol, 0
        seek += abs(pos - head)
        head = pos
    return mounts, seek

ml, sl = cost(order_listing)
me, se = cost(order_evac)
section = f"""<!-- stage-order: written by bench/stage_order.sh -->
## Recall order (phase 2)

Command: `FILES={n} VOLUMES={vols} SEED={seed} bench/stage_order.sh` — {n} staged-out files on
{vols} simulated tape volumes at random positions, listing in path order; `evac stage` with a
stage command that logs the order it is asked for.

| order | tape mounts | seek distance (positions) |
|---|---:|---:|
| the listing's (path) order | {ml} | {sl} |
| evac stage | {me} | {se} |
| ratio listing / evac | {ml / max(me, 1):.1f}x | {sl / max(se, 1):.1f}x |

(`evac stage` took {float(t1) - float(t0):.1f} s here, relocations included.)
<!-- /stage-order -->
"""
print(section)
try:
    text = open(results).read()
except FileNotFoundError:
    text = ""
a = text.find("<!-- stage-order")
b = text.find("<!-- /stage-order -->")
if a >= 0 and b > a:
    text = text[:a] + section + text[b + len("<!-- /stage-order -->\n"):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(results, "w").write(text)
PY
