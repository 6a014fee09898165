#!/usr/bin/env bash
# evac benchmark: evac run vs cp -a vs rsync -a, on many small files and on a
# few large ones, plus inventory speed (find vs evac --dry-run) and evac's
# peak memory at two file counts. Writes bench/RESULTS.md (overwritten).
#
# NEEDS:
#   - root (every timed run starts from cold caches: echo 3 > /proc/sys/vm/drop_caches; and the
#     default setup mounts two loop images)
#   - rsync, GNU time at /usr/bin/time, python3, GNU coreutils/findutils, util-linux (mount,
#     losetup, mountpoint, findmnt), e2fsprogs (mkfs.ext4) and loop-device support (BENCH_FS=loop)
#       Debian/Ubuntu: apt-get install -y rsync time python3 e2fsprogs
#   - cargo, only if the evac binary is missing (it is then built with cargo build --release)
#   - free space in BENCH_DIR: 2 x IMG_GB + 1 GiB with BENCH_FS=loop (default sizes: 31 GiB; the
#     images are sparse and typically hold 10-20 GiB, but can grow to their full size), about 3x
#     the trees with BENCH_FS=plain (default sizes: ~15 GiB)
#
# Filesystems (BENCH_FS):
#   loop (default): SOURCE and DEST are two separate journaled ext4 filesystems, each on its own
#     loop-mounted image file in BENCH_DIR: "old server" = BENCH_DIR/old.img mounted on
#     BENCH_DIR/old (holds the pristine master trees and SOURCE), "new storage" = BENCH_DIR/new.img
#     mounted on BENCH_DIR/new (receives DEST). Both are made by plain `mkfs.ext4` (default
#     features, so with a journal; lazy_itable_init=0,lazy_journal_init=0 only so that no
#     background initialisation runs during the timed runs). Every contender copies from the old
#     filesystem to the new one. The images are unmounted and deleted at the end, also on error,
#     Ctrl-C or SIGTERM. Why: the disk BENCH_DIR lives on may not look like an operator's servers
#     (on the reference VM the root filesystem is ext4 *without* a journal, where creating and
#     deleting many inodes is pathologically slow in ext4's inode allocator).
#   plain: no images; masters, SOURCE and DEST are directories in BENCH_DIR on whatever
#     filesystem that is. The report flags such a run as not the reference setup.
#   Either way evac's journal is BENCH_DIR/journal/evac.db, outside the tree being relocated
#   (with BENCH_FS=loop it is on neither image).
#
# Usage (from anywhere; options are environment variables, no arguments):
#   sudo bench/run.sh
#   SMALL_FILES=2000 SMALL_FILES_2=500 LARGE_FILES=1 LARGE_MB=64 REPS=1 bench/run.sh
#
# Options (environment variables):
#   BENCH_DIR      work directory (default: a new /var/tmp/evac-bench.XXXXXX, removed at the end
#                  unless BENCH_KEEP=1). A BENCH_DIR you give is kept. With BENCH_FS=plain the
#                  generated master trees in it are reused by later runs with the same sizes and
#                  seed; with BENCH_FS=loop they live on old.img and are generated anew every run.
#                  BENCH_DIR must be on a real disk (not tmpfs): the loop images live in it.
#   BENCH_FS       loop (default) or plain; see "Filesystems" above
#   IMG_GB         size in GiB of each of the two ext4 images (BENCH_FS=loop only). Default: enough
#                  for the old filesystem's pristine masters of all three trees plus two copies of
#                  the largest (the working copy and the previous one, still being deleted), +10%
#                  and 1 GiB: 15 at the default sizes
#   SMALL_FILES    files in the small-file tree (default 50000)
#   SMALL_FILES_2  files in the second small-file tree, for evac's RSS vs file count (default 10000)
#   LARGE_FILES    files in the large-file tree (default 4)
#   LARGE_MB       size of each large file in MiB (default 1024)
#   REPS           timed runs per contender; the median is reported (default 3)
#   EVAC           evac binary (default: target/release/evac in the repository)
#   EVAC_ARGS      extra arguments for every evac run, e.g. "--workers 4" (default none)
#   SEED           seed for the tree generator (default 1)
#   RESULTS        where to write the report (default: bench/RESULTS.md in the repository)
#   BENCH_KEEP     1 = keep an auto-created BENCH_DIR (default 0); the images are deleted anyway
#
# Every timed run: fresh copy of the source from a pristine master (untimed), sync, drop caches,
# then /usr/bin/time measures "contender; sync" (the sync counts: durability is part of the job).
# The output of every run is checked afterwards (untimed): file count, total bytes, and content,
# mode and mtime of a sample of files; a run that fails the check is reported as INVALID.

set -euo pipefail

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[[ $# -eq 0 ]] || die "takes no arguments; options are environment variables (see the top of $0)"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SRC_DIR=$REPO_ROOT/bench

# The exact command line, rebuilt from the options that were actually set.
OPTION_VARS=(BENCH_FS IMG_GB BENCH_DIR SMALL_FILES SMALL_FILES_2 LARGE_FILES LARGE_MB REPS EVAC EVAC_ARGS SEED RESULTS BENCH_KEEP)
CMDLINE=""
for v in "${OPTION_VARS[@]}"; do
    if [[ -n ${!v+x} ]]; then CMDLINE+="$v=$(printf '%q' "${!v}") "; fi
done
CMDLINE+="$(printf '%q' "$0")"

SMALL_FILES=${SMALL_FILES:-50000}
SMALL_FILES_2=${SMALL_FILES_2:-10000}
LARGE_FILES=${LARGE_FILES:-4}
LARGE_MB=${LARGE_MB:-1024}
REPS=${REPS:-3}
SEED=${SEED:-1}
EVAC_ARGS=${EVAC_ARGS:-}
BENCH_KEEP=${BENCH_KEEP:-0}
RESULTS=${RESULTS:-$BENCH_SRC_DIR/RESULTS.md}
DEFAULT_EVAC=$REPO_ROOT/target/release/evac
EVAC=${EVAC:-$DEFAULT_EVAC}

for v in SMALL_FILES SMALL_FILES_2 LARGE_FILES LARGE_MB REPS SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( SMALL_FILES >= 1 && SMALL_FILES_2 >= 1 && LARGE_FILES >= 1 && LARGE_MB >= 1 && REPS >= 1 )) \
    || die "SMALL_FILES, SMALL_FILES_2, LARGE_FILES, LARGE_MB and REPS must be at least 1"
BENCH_FS=${BENCH_FS:-loop}
[[ $BENCH_FS == loop || $BENCH_FS == plain ]] || die "BENCH_FS must be loop or plain (got '$BENCH_FS')"

# Space on the old filesystem (KiB): pristine masters of all three trees + two copies of the largest
# (fresh_source deletes the previous working copy in the background while it makes the next one);
# ~12 KiB on disk per small file. The new filesystem needs at most the same two copies.
GIB_KIB=1048576
S1_KIB=$((SMALL_FILES * 12))
S2_KIB=$((SMALL_FILES_2 * 12))
L_KIB=$((LARGE_FILES * (LARGE_MB * 1024 + 4)))
MAXTREE_KIB=$(( S1_KIB > L_KIB ? (S1_KIB > S2_KIB ? S1_KIB : S2_KIB) : (L_KIB > S2_KIB ? L_KIB : S2_KIB) ))
OLD_NEED_KIB=$((S1_KIB + S2_KIB + L_KIB + 2 * MAXTREE_KIB))
# Inodes on the old filesystem: files + ~5% directories, masters + two working copies, and slack.
OLD_NEED_INODES=$(( (3 * SMALL_FILES + SMALL_FILES_2 + 3 * LARGE_FILES) * 105 / 100 + 1000 ))
if [[ $BENCH_FS == loop ]]; then
    # mkfs.ext4's default inode_ratio is 16 KiB: the image must also be big enough for the inodes.
    img_kib=$(( OLD_NEED_KIB * 110 / 100 + GIB_KIB ))
    inode_kib=$(( OLD_NEED_INODES * 16 * 110 / 100 ))
    (( inode_kib > img_kib )) && img_kib=$inode_kib
    DEFAULT_IMG_GB=$(( (img_kib + GIB_KIB - 1) / GIB_KIB ))
    IMG_GB=${IMG_GB:-$DEFAULT_IMG_GB}
    [[ $IMG_GB =~ ^[0-9]+$ ]] || die "IMG_GB must be a positive integer (got '$IMG_GB')"
    min_kib=$(( OLD_NEED_KIB * 105 / 100 + GIB_KIB / 4 ))
    (( IMG_GB * GIB_KIB >= min_kib )) \
        || die "IMG_GB=$IMG_GB is too small for these trees: the old filesystem needs about $(( (min_kib + GIB_KIB - 1) / GIB_KIB )) GiB (default would be $DEFAULT_IMG_GB)"
else
    IMG_GB=""
fi
read -r -a EVAC_EXTRA <<<"$EVAC_ARGS"

# ---------------------------------------------------------------- prerequisites
[[ $(id -u) -eq 0 ]] || die "must run as root (it drops the page cache before every timed run)"
[[ -w /proc/sys/vm/drop_caches ]] || die "/proc/sys/vm/drop_caches is not writable (read-only /proc/sys in a container?)"
command -v rsync >/dev/null || die "rsync not found (apt-get install -y rsync)"
[[ -x /usr/bin/time ]] && /usr/bin/time -f '%e %M' -o /dev/null true 2>/dev/null \
    || die "GNU time not found at /usr/bin/time (apt-get install -y time)"
command -v python3 >/dev/null || die "python3 not found"
if [[ $BENCH_FS == loop ]]; then
    for t in mkfs.ext4 mount umount losetup mountpoint findmnt; do
        command -v "$t" >/dev/null || die "$t not found (BENCH_FS=loop needs e2fsprogs and util-linux; or use BENCH_FS=plain)"
    done
    losetup -f >/dev/null 2>&1 || die "no free loop device (losetup -f failed; no loop support in a container?); use BENCH_FS=plain"
fi

if [[ ! -x $EVAC ]]; then
    if [[ $EVAC == "$DEFAULT_EVAC" ]]; then
        log "evac binary missing; building it: cargo build --release"
        (cd "$REPO_ROOT" && cargo build --release) || die "cargo build --release failed"
        [[ -x $EVAC ]] || die "cargo build --release did not produce $EVAC"
    else
        die "EVAC=$EVAC is not an executable file"
    fi
fi
EVAC=$(cd "$(dirname "$EVAC")" && pwd)/$(basename "$EVAC")

AUTO_DIR=0
if [[ -z ${BENCH_DIR:-} ]]; then
    BENCH_DIR=$(mktemp -d /var/tmp/evac-bench.XXXXXX)
    AUTO_DIR=1
else
    mkdir -p "$BENCH_DIR"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
fi
# Layout. BENCH_FS=loop: old.img on OLD_MNT holds masters/ and work/src (SOURCE); new.img on
# NEW_MNT holds work/dst (DEST). BENCH_FS=plain: BENCH_DIR/masters, BENCH_DIR/work/{src,dst}.
# WORK_DIRS are the per-run directories that fresh_source replaces. The evac journal, logs and the
# raw results are always in BENCH_DIR itself, outside SOURCE (and outside both images).
OLD_IMG=$BENCH_DIR/old.img
NEW_IMG=$BENCH_DIR/new.img
OLD_MNT=$BENCH_DIR/old
NEW_MNT=$BENCH_DIR/new
WORK=$BENCH_DIR/work
if [[ $BENCH_FS == loop ]]; then
    MASTERS=$OLD_MNT/masters
    SRC=$OLD_MNT/work/src
    DST=$NEW_MNT/work/dst
    WORK_DIRS=("$OLD_MNT/work" "$NEW_MNT/work")
else
    MASTERS=$BENCH_DIR/masters
    SRC=$WORK/src
    DST=$WORK/dst
    WORK_DIRS=("$WORK")
fi
JDIR=$BENCH_DIR/journal
JOURNAL=$JDIR/evac.db
TIME_OUT=$BENCH_DIR/time.out
RUNS_TSV=$BENCH_DIR/runs.tsv
LOGS=$BENCH_DIR/logs

OUR_MOUNTS=() # only what this run mounted is unmounted, only the images it made are deleted
OUR_IMAGES=()
cleanup() {
    local m
    set +e
    for m in "${OUR_MOUNTS[@]}"; do
        if mountpoint -q "$m"; then
            # A contender or background rm killed by Ctrl-C may hold the mount for a moment.
            umount "$m" 2>/dev/null || { sleep 2; umount "$m"; } || umount -l "$m" || log "could not unmount $m"
        fi
        rmdir "$m" 2>/dev/null
    done
    ((${#OUR_IMAGES[@]})) && rm -f "${OUR_IMAGES[@]}"
    rm -rf "$WORK" "$BENCH_DIR"/trash.* "$JDIR" "$TIME_OUT" 2>/dev/null
    if [[ $AUTO_DIR == 1 && $BENCH_KEEP != 1 ]]; then
        rm -rf "$BENCH_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

avail_kib=$(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}')
if [[ $BENCH_FS == loop ]]; then
    [[ $(stat -f -c %T "$BENCH_DIR") != tmpfs ]] \
        || die "BENCH_DIR $BENCH_DIR is on tmpfs: the images would live in RAM, not on the disk"
    # Sparse images, but blocks freed inside them are not returned to BENCH_DIR's filesystem, so
    # over the runs each can grow to its full size.
    need_kib=$(( 2 * IMG_GB * GIB_KIB + GIB_KIB ))
    (( avail_kib > need_kib )) \
        || die "not enough space in $BENCH_DIR for two ${IMG_GB} GiB images: need about $((need_kib / 1024)) MiB, have $((avail_kib / 1024)) MiB (set IMG_GB, or BENCH_DIR elsewhere)"
    for m in "$OLD_MNT" "$NEW_MNT"; do
        ! mountpoint -q "$m" 2>/dev/null || die "$m is already a mount point (left over from an earlier run? umount it first)"
    done
else
    # Space: masters + fresh source + destination, with ~12 KiB on disk per small file.
    need_kib=$(( 3 * LARGE_FILES * LARGE_MB * 1024 + 3 * (SMALL_FILES + SMALL_FILES_2) * 12 + GIB_KIB ))
    (( avail_kib > need_kib )) \
        || die "not enough space in $BENCH_DIR: need about $((need_kib / 1024)) MiB, have $((avail_kib / 1024)) MiB"
fi

# journal_of MOUNTPOINT -> "journaled" or "no journal" (ext3/ext4: jbd2 registers the device in
# /proc/fs/jbd2 when the filesystem has a journal), or the filesystem type for anything else
journal_of() {
    local src fstype dev
    read -r src fstype < <(findmnt -no SOURCE,FSTYPE -T "$1" | tail -n 1) # last = topmost mount
    case $fstype in
        ext3 | ext4)
            dev=$(basename "$(readlink -f "$src")")
            if compgen -G "/proc/fs/jbd2/$dev-*" >/dev/null; then echo journaled; else echo "no journal"; fi ;;
        *) echo "$fstype" ;;
    esac
}

# make_image IMG MOUNTPOINT LABEL: a fresh default ext4 filesystem, loop-mounted
make_image() {
    local img=$1 mnt=$2 label=$3
    rm -f "$img"
    OUR_IMAGES+=("$img")
    truncate -s "${IMG_GB}G" "$img"
    mkfs.ext4 -q -F -L "$label" -E lazy_itable_init=0,lazy_journal_init=0 "$img" \
        || die "mkfs.ext4 $img failed"
    mkdir -p "$mnt"
    mount -o loop "$img" "$mnt" || die "mount -o loop $img $mnt failed"
    OUR_MOUNTS+=("$mnt")
    [[ $(journal_of "$mnt") == journaled ]] || die "$img: mkfs.ext4 made a filesystem without a journal (check /etc/mke2fs.conf)"
}

mkdir -p "$LOGS"
rm -rf "$WORK" "$BENCH_DIR"/trash.* "$JDIR"
if [[ $BENCH_FS == loop ]]; then
    log "making the two ${IMG_GB} GiB ext4 images: $OLD_IMG (old server, SOURCE) and $NEW_IMG (new storage, DEST)"
    make_image "$OLD_IMG" "$OLD_MNT" evac-old
    make_image "$NEW_IMG" "$NEW_MNT" evac-new
    free_inodes=$(df -Pi "$OLD_MNT" | awk 'NR==2 {print $4}')
    (( free_inodes > OLD_NEED_INODES )) \
        || die "$OLD_IMG has $free_inodes free inodes, the trees need about $OLD_NEED_INODES: raise IMG_GB"
fi
mkdir -p "$MASTERS"
# Snapshot the binary so a rebuild during the benchmark cannot mix two versions into one report.
EVAC_ORIG=$EVAC
EVAC_VERSION=$("$EVAC" --version 2>/dev/null | head -n 1 || true)
EVAC=$BENCH_DIR/evac-under-test
cp "$EVAC_ORIG" "$EVAC"
EVAC_BUILT=$(date -u -r "$EVAC_ORIG" '+%Y-%m-%d %H:%M:%S UTC' 2>/dev/null || echo "?")
EVAC_SHA=$(sha256sum "$EVAC" | cut -c1-12)
GIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if ! git -C "$REPO_ROOT" --no-optional-locks diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then
    GIT_REV+=", with uncommitted changes in src/ or Cargo files"
fi
: >"$RUNS_TSV"
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log "bench dir: $BENCH_DIR   evac: $EVAC_ORIG (${EVAC_VERSION:-no version}), copied to $EVAC"
log "SOURCE: $SRC   DEST: $DST   evac journal: $JOURNAL"

# ---------------------------------------------------------------- helpers
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# make_master NAME KIND COUNT [SIZE_MB] -> sets MASTER, MFILES, MBYTES
make_master() {
    local name=$1 kind=$2 count=$3 size=${4:-}
    MASTER=$MASTERS/$name
    if [[ -f $MASTERS/$name.done && -d $MASTER ]]; then
        log "reusing master tree $name"
    else
        log "generating master tree $name"
        rm -rf "$MASTER" "$MASTER.tmp" "$MASTERS/$name.done"
        # shellcheck disable=SC2086
        python3 "$BENCH_SRC_DIR/gen_tree.py" "$kind" "$MASTER.tmp" "$count" "$SEED" $size >"$MASTERS/$name.count"
        mv "$MASTER.tmp" "$MASTER"
        sync
        # Sample for the content check: ~20 files spread over the tree.
        (cd "$MASTER" && find . -type f -printf '%P\n' | LC_ALL=C sort |
            awk -v n="$count" 'BEGIN {s = int(n / 20); if (s < 1) s = 1} (NR - 1) % s == 0') >"$MASTERS/$name.sample"
        mv "$MASTERS/$name.count" "$MASTERS/$name.done"
    fi
    read -r MFILES MBYTES <"$MASTERS/$name.done"
    MSAMPLE=$MASTERS/$name.sample
}

# New WORK_DIRS with a fresh copy of the master as SRC, and an empty journal directory. The
# previous WORK_DIRS (last run's SRC and DST) are deleted in the background while the copy is
# made: on ext4, deleting 100,000 small files costs as much as copying them, and overlapping the
# two cuts the untimed time per run by about a third. Each is renamed to a trash directory next to
# it, on its own filesystem. All is finished before the caller syncs, drops caches and starts timing.
fresh_source() {
    local w trash rm_pids=()
    for w in "${WORK_DIRS[@]}"; do
        if [[ -e $w ]]; then
            trash=$(dirname "$w")/trash.$RANDOM$RANDOM
            mv "$w" "$trash"
            rm -rf "$trash" &
            rm_pids+=("$!")
        fi
    done
    rm -rf "$JDIR"
    mkdir -p "${WORK_DIRS[@]}" "$JDIR"
    cp -a "$MASTER" "$SRC"
    if ((${#rm_pids[@]})); then wait "${rm_pids[@]}"; fi
}

contender_cmd() { # contender -> CMD array
    case $1 in
        cp) CMD=(cp -a "$SRC" "$DST") ;;
        rsync) CMD=(rsync -a "$SRC/" "$DST/") ;;
        evac) CMD=("$EVAC" run "$SRC" "$DST" --journal "$JOURNAL" --quiet "${EVAC_EXTRA[@]}") ;;
        find) CMD=(find "$SRC" -printf '') ;;
        find-stat) CMD=(find "$SRC" -fprintf /dev/null '%y %s %m %T@\n') ;; # stats every entry, as evac must
        evac-dry) CMD=("$EVAC" run "$SRC" "$DST" --journal "$JOURNAL" --dry-run --quiet "${EVAC_EXTRA[@]}") ;;
        *) die "unknown contender $1" ;;
    esac
}

# timed LOGFILE WITH_SYNC CMD... -> sets WALL RSS RC
# Peak RSS comes from GNU time (%M); wall time from bash's microsecond clock around it, because
# %e has only 10 ms resolution (too coarse for the inventory runs). The difference is the ~1 ms
# it takes to start /usr/bin/time.
timed() {
    local logf=$1 with_sync=$2 tf=$TIME_OUT t0 t1 e
    shift 2
    RC=0
    t0=$EPOCHREALTIME
    if [[ $with_sync == 1 ]]; then
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@"; rc=$?; sync; exit $rc' timed-run "$@" >"$logf" 2>&1 || RC=$?
    else
        /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$logf" 2>&1 || RC=$?
    fi
    t1=$EPOCHREALTIME
    # GNU time puts "Command exited with non-zero status N" before the figures.
    read -r e RSS < <(tail -n 1 "$tf")
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}

# Compare one sampled file (content at head and tail, size, mode, mtime) with the master.
same_file() { # master_file other_file
    local a=$1 b=$2 size chunk=$((4 << 20))
    [[ -f $b ]] || return 1
    [[ $(stat -L -c '%s %a %Y' "$a") == "$(stat -L -c '%s %a %Y' "$b")" ]] || return 1
    size=$(stat -L -c %s "$a")
    if (( size <= 2 * chunk )); then
        cmp -s "$a" "$b"
    else
        cmp -s -n "$chunk" "$a" "$b" && cmp -s -i $((size - chunk)) "$a" "$b"
    fi
}

# check_run CONTENDER RC -> prints "ok" or the reason it is invalid
check_run() {
    local c=$1 rc=$2 n b rel
    if [[ $c == find* || $c == evac-dry ]]; then
        # read-only: source untouched, nothing created at DEST, no journal written
        read -r n b < <(find "$SRC" -type f -printf '%s\n' | awk '{n++; b += $1} END {printf "%.0f %.0f\n", n, b}')
        [[ $rc == 0 ]] || { echo "exit $rc"; return; }
        [[ $n == "$MFILES" && $b == "$MBYTES" ]] || { echo "source changed: $n files $b bytes"; return; }
        [[ ! -e $DST ]] || { echo "dry run created DEST"; return; }
        [[ ! -e $JOURNAL ]] || { echo "dry run wrote the journal"; return; }
        echo ok
        return
    fi
    [[ $rc == 0 ]] || { echo "exit $rc"; return; }
    [[ -d $DST ]] || { echo "no DEST"; return; }
    read -r n b < <(find "$DST" -type f -printf '%s\n' | awk '{n++; b += $1} END {printf "%.0f %.0f\n", n, b}')
    [[ $n == "$MFILES" && $b == "$MBYTES" ]] || { echo "DEST has $n files/$b bytes, expected $MFILES/$MBYTES"; return; }
    while IFS= read -r rel; do
        same_file "$MASTER/$rel" "$DST/$rel" || { echo "DEST/$rel differs from the original"; return; }
    done <"$MSAMPLE"
    if [[ $c == evac ]]; then
        local nl nf
        nl=$(find "$SRC" -type l | wc -l)
        nf=$(find "$SRC" -type f | wc -l)
        [[ $nl == "$MFILES" && $nf == 0 ]] || { echo "SOURCE has $nl symlinks and $nf regular files"; return; }
        while IFS= read -r rel; do
            [[ -L $SRC/$rel && $(readlink -f "$SRC/$rel") == "$(readlink -f "$DST/$rel")" ]] \
                || { echo "SOURCE/$rel is not a symlink to its copy"; return; }
        done <"$MSAMPLE"
    fi
    echo ok
}

# bench_tree TREE_LABEL CONTENDERS...  (uses MASTER/MFILES/MBYTES)
bench_tree() {
    local tree=$1 rep c check logf
    shift
    for ((rep = 1; rep <= REPS; rep++)); do
        for c in "$@"; do # contenders interleaved so drift hits all of them alike
            fresh_source
            drop_caches
            contender_cmd "$c"
            logf=$LOGS/$tree-$c-$rep.log
            timed "$logf" 1 "${CMD[@]}"
            check=$(check_run "$c" "$RC")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tree" "$c" "$rep" "$WALL" "$RSS" "$RC" "$MFILES" "$MBYTES" "$check" >>"$RUNS_TSV"
            log "$tree rep $rep/$REPS $c: ${WALL}s, peak RSS $((RSS / 1024)) MiB, exit $RC, check: $check"
            if [[ $check != ok ]]; then
                log "  output of the run ($logf), last lines:"
                tail -n 5 "$logf" | sed 's/^/    /' >&2
            fi
        done # this run's SRC and DST are removed by the next fresh_source (or at exit)
    done
}

bench_inventory() {
    local tree=$1 rep c check logf
    fresh_source # read-only contenders: one fresh copy serves all runs; check_run verifies it stays intact
    for ((rep = 1; rep <= REPS; rep++)); do
        for c in find find-stat evac-dry; do
            drop_caches
            contender_cmd "$c"
            logf=$LOGS/$tree-$c-$rep.log
            timed "$logf" 0 "${CMD[@]}"
            check=$(check_run "$c" "$RC")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tree" "$c" "$rep" "$WALL" "$RSS" "$RC" "$MFILES" "$MBYTES" "$check" >>"$RUNS_TSV"
            log "$tree rep $rep/$REPS $c: ${WALL}s, peak RSS $((RSS / 1024)) MiB, exit $RC, check: $check"
            if [[ $check != ok ]]; then
                tail -n 5 "$logf" | sed 's/^/    /' >&2
                fresh_source # whatever the failed run changed is gone with the old WORK
            fi
        done
    done
}

# ---------------------------------------------------------------- the runs
make_master "small-$SMALL_FILES-s$SEED" small "$SMALL_FILES"
bench_tree small cp rsync evac
bench_inventory inventory

make_master "small-$SMALL_FILES_2-s$SEED" small "$SMALL_FILES_2"
bench_tree small2 evac # only evac's peak RSS is wanted here; cp/rsync would add ~1.5 min

make_master "large-${LARGE_FILES}x${LARGE_MB}M-s$SEED" large "$LARGE_FILES" "$LARGE_MB"
bench_tree large cp rsync evac

T_END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the report
# describe_fs DIR -> "ext4, journaled (/dev/loop2, mounted on /x)"
describe_fs() {
    local src fstype target
    read -r src fstype target < <(findmnt -no SOURCE,FSTYPE,TARGET -T "$1" | tail -n 1)
    echo "$fstype, $(journal_of "$1") ($src, mounted on $target)"
}
BASE_FS=$(describe_fs "$BENCH_DIR")
if [[ $BENCH_FS == loop ]]; then
    FS_SETUP="SOURCE and DEST are separate journaled ext4 loop images on the VM's disk, each made by plain \`mkfs.ext4\` (default features) at ${IMG_GB} GiB and mounted with \`mount -o loop\`. Old server (pristine masters and SOURCE): \`$OLD_IMG\` on $(describe_fs "$OLD_MNT"). New storage (DEST): \`$NEW_IMG\` on $(describe_fs "$NEW_MNT"). The image files and evac's journal (\`$JOURNAL\`) are on BENCH_DIR's filesystem: $BASE_FS."
else
    FS_SETUP="BENCH_FS=plain: SOURCE, DEST and the masters are directories in BENCH_DIR, all on one filesystem: $BASE_FS. evac's journal: \`$JOURNAL\`."
fi

EVAC=$EVAC_ORIG
export REPO_ROOT
export RUNS_TSV RESULTS CMDLINE SMALL_FILES SMALL_FILES_2 LARGE_FILES LARGE_MB REPS SEED EVAC EVAC_ARGS \
    EVAC_VERSION GIT_REV FS_SETUP BENCH_FS BENCH_DIR EVAC_BUILT EVAC_SHA LOAD_START LOAD_END
export ELAPSED=$((T_END - T_START))
export KERNEL=$(uname -r) NCPU=$(nproc) MEM_MIB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
export CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
export DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

python3 - <<'PY'
import os, statistics, collections

E = os.environ
rows = collections.defaultdict(list)
meta = {}
with open(E["RUNS_TSV"]) as f:
    for line in f:
        tree, c, rep, wall, rss, rc, nfiles, nbytes, check = line.rstrip("\n").split("\t")
        rows[(tree, c)].append(dict(wall=float(wall), rss=int(rss), rc=int(rc), check=check))
        meta[tree] = (int(nfiles), int(nbytes))

def valid(tree, c):
    return all(r["check"] == "ok" for r in rows[(tree, c)])

def med(tree, c, key="wall"):
    return statistics.median(r[key] for r in rows[(tree, c)])

def div(a, b):
    return a / max(b, 0.001)

def fmt_s(x):
    return f"{x:.3f}"

def mib(kib):
    return f"{kib / 1024:.1f}"

def verdict(ok, inputs_valid=True):
    if not inputs_valid:
        return "n/a (invalid run)"
    return "PASS" if ok else "FAIL"

out = []
w = out.append
defaults = dict(SMALL_FILES="50000", SMALL_FILES_2="10000", LARGE_FILES="4", LARGE_MB="1024", REPS="3")
nondefault = [k for k, v in defaults.items() if E[k] != v]

w("# evac benchmark results\n")
if nondefault:
    w("> **Not the reference run:** this run used non-default sizes ("
      + ", ".join(f"{k}={E[k]}" for k in nondefault)
      + "). Its figures are only a check that the harness works; tiny trees are dominated by "
        "start-up and cache effects and say little about the targets.\n")
if E["BENCH_FS"] != "loop":
    w("> **Not the reference setup:** BENCH_FS=plain, so SOURCE and DEST were on one filesystem, "
      "BENCH_DIR's, not on two separate journaled ext4 filesystems like an old server and new storage.\n")
w(f"- Date: {E['DATE']}")
w(f"- Command: `{E['CMDLINE']}`")
w(f"- Sizes: small tree {E['SMALL_FILES']} files, second small tree {E['SMALL_FILES_2']} files "
  f"(1-16 KiB each), large tree {E['LARGE_FILES']} x {E['LARGE_MB']} MiB; {E['REPS']} run(s) per contender, "
  f"median reported; seed {E['SEED']}")
# The binary's path relative to the repository when it lies inside it: the report should not
# depend on where the checkout happens to be.
evac_shown = os.path.relpath(E['EVAC'], E['REPO_ROOT']) if E['EVAC'].startswith(E['REPO_ROOT'] + '/') else E['EVAC']
w(f"- evac: `{evac_shown}`{' with `' + E['EVAC_ARGS'] + '`' if E['EVAC_ARGS'] else ''} "
  f"({E['EVAC_VERSION'] or 'no --version output'}; binary built {E['EVAC_BUILT']}, sha256 {E['EVAC_SHA']}...; "
  f"repository at {E['GIT_REV']} when the benchmark started)")
w(f"- Kernel: {E['KERNEL']}; CPUs: {E['NCPU']} ({E['CPU_MODEL']}); memory: {E['MEM_MIB']} MiB")
w(f"- Filesystems: {E['FS_SETUP']}")
w(f"- Whole benchmark took {int(E['ELAPSED']) // 60} min {int(E['ELAPSED']) % 60} s; load average (1, 5, 15 min) "
  f"{E['LOAD_START']} at the start, {E['LOAD_END']} at the end (the benchmark itself adds about 1; much more "
  "means other work shared the machine and the timings are noisy)")
w("")
summary_at = len(out)
summary = []
w("Method: " + ("SOURCE is on an \"old server\" ext4 filesystem and DEST on a separate \"new storage\" "
             "ext4 filesystem (two journaled loop images, see Filesystems above), so every contender copies "
             "from one filesystem to the other. " if E["BENCH_FS"] == "loop" else "") +
  "Before every timed run the source is a fresh `cp -a` of a pristine master tree, then "
  "`sync` and `echo 3 > /proc/sys/vm/drop_caches`. The time is wall-clock of `CONTENDER; sync` "
  "(durability is part of the job; inventory runs have no sync), run under GNU `/usr/bin/time`, which gives "
  "the peak RSS (for rsync, the largest of its processes). Contenders: `cp -a SRC DST`, `rsync -a SRC/ DST/`, "
  "`evac run SRC DST --journal J --quiet`. Each output is checked after the run (file count, bytes, "
  "content/mode/mtime of a sample; for evac also that every source file became a symlink to its copy); "
  "a run that fails is marked INVALID and its figures do not count.\n")

def tree_table(tree, title, throughput):
    if not any(k[0] == tree for k in rows):
        return
    nfiles, nbytes = meta[tree]
    w(f"## {title}: {nfiles} files, {nbytes / 1e6:.1f} MB\n")
    hdr = "| contender | median wall (s) | all runs (s) | median peak RSS (MiB) | exit codes |"
    sep = "|---|---:|---|---:|---|"
    if throughput:
        hdr = hdr.replace(" | exit codes |", " | throughput (MB/s) | exit codes |")
        sep = "|---|---:|---|---:|---:|---|"
    w(hdr)
    w(sep)
    for c in ("cp", "rsync", "evac"):
        if (tree, c) not in rows:
            continue
        rs = rows[(tree, c)]
        name = {"cp": "`cp -a`", "rsync": "`rsync -a`", "evac": "`evac run`"}[c]
        if not valid(tree, c):
            bad = sorted({r["check"] for r in rs if r["check"] != "ok"})
            name += " **INVALID: " + "; ".join(bad) + "**"
        cells = [name, fmt_s(med(tree, c)), ", ".join(fmt_s(r["wall"]) for r in rs), mib(med(tree, c, "rss"))]
        if throughput:
            cells.append(f"{div(nbytes / 1e6, med(tree, c)):.0f}")
        cells.append(", ".join(str(r["rc"]) for r in rs))
        w("| " + " | ".join(cells) + " |")
    w("")

tree_table("small", f"Small files (SMALL_FILES={E['SMALL_FILES']})", False)
if all((("small", c) in rows) for c in ("cp", "rsync", "evac")):
    ok = valid("small", "cp") and valid("small", "rsync") and valid("small", "evac")
    e, c, r = med("small", "evac"), med("small", "cp"), med("small", "rsync")
    w(f"- evac / cp -a = **{div(e, c):.2f}x** (target: at most 1.5x) -> {verdict(e <= 1.5 * c, ok)}")
    w(f"- evac / rsync -a = **{div(e, r):.2f}x** (target: below 1.0x, faster than rsync) -> {verdict(e < r, ok)}")
    summary.append(f"| small files: evac at most 1.5x cp -a | {div(e, c):.2f}x | {verdict(e <= 1.5 * c, ok)} |")
    summary.append(f"| small files: evac faster than rsync -a | {div(e, r):.2f}x | {verdict(e < r, ok)} |")
    w("")

tree_table("large", f"Large files (LARGE_FILES={E['LARGE_FILES']} x {E['LARGE_MB']} MiB)", True)
if all((("large", c) in rows) for c in ("cp", "rsync", "evac")):
    ok = valid("large", "cp") and valid("large", "rsync") and valid("large", "evac")
    e, c, r = med("large", "evac"), med("large", "cp"), med("large", "rsync")
    w(f"- evac / cp -a = {div(e, c):.2f}x, evac / rsync -a = {div(e, r):.2f}x")
    w(f"- evac throughput = **{100 * div(c, e):.0f}% of cp -a's** (target: at least 90%) -> {verdict(div(c, e) >= 0.9, ok)}")
    summary.append(f"| large files: evac throughput at least 90% of cp -a's | {100 * div(c, e):.0f}% | {verdict(div(c, e) >= 0.9, ok)} |")
    w("")

tree_table("small2", f"Second small tree (SMALL_FILES_2={E['SMALL_FILES_2']}), evac only, for peak RSS", False)

if ("inventory", "find") in rows:
    nfiles, nbytes = meta["inventory"]
    w(f"## Inventory: {nfiles} files (the small tree), cold cache\n")
    w("| command | median wall (s) | all runs (s) | median peak RSS (MiB) | exit codes |")
    w("|---|---:|---|---:|---|")
    for c, name in (("find", "`find SRC -printf ''`"),
                    ("find-stat", "`find SRC -fprintf /dev/null '%y %s %m %T@\\n'` (reference, not a target: stats every entry)"),
                    ("evac-dry", "`evac run SRC DST --journal J --dry-run --quiet`")):
        if ("inventory", c) not in rows:
            continue
        rs = rows[("inventory", c)]
        if not valid("inventory", c):
            name += " **INVALID: " + "; ".join(sorted({r["check"] for r in rs if r["check"] != "ok"})) + "**"
        w(f"| {name} | {fmt_s(med('inventory', c))} | {', '.join(fmt_s(r['wall']) for r in rs)} | "
          f"{mib(med('inventory', c, 'rss'))} | {', '.join(str(r['rc']) for r in rs)} |")
    ok = valid("inventory", "find") and valid("inventory", "evac-dry")
    e, f_ = med("inventory", "evac-dry"), med("inventory", "find")
    w(f"\n- evac --dry-run / find = **{div(e, f_):.2f}x** (target: no slower than find, at most 1.0x) -> {verdict(e <= f_, ok)}")
    summary.append(f"| inventory: evac --dry-run no slower than find | {div(e, f_):.2f}x | {verdict(e <= f_, ok)} |")
    if ("inventory", "find-stat") in rows:
        w(f"- evac --dry-run / find that stats every entry = {div(e, med('inventory', 'find-stat')):.2f}x (not a target: "
          "plain `find -printf ''` reads only the directories, using d_type, while classifying files needs a stat of each)")
    w("")

if ("small", "evac") in rows and ("small2", "evac") in rows:
    n1, _ = meta["small2"]
    n2, _ = meta["small"]
    r1, r2 = med("small2", "evac", "rss"), med("small", "evac", "rss")
    ok = valid("small", "evac") and valid("small2", "evac")
    w("## evac peak RSS vs file count\n")
    w("| files | evac median peak RSS (MiB) |")
    w("|---:|---:|")
    w(f"| {n1} | {mib(r1)} |")
    w(f"| {n2} | {mib(r2)} |")
    w("")
    if n2 != n1:
        per_file = (r2 - r1) * 1024 / (n2 - n1)
        w(f"- Growth: {mib(r2 - r1)} MiB for {n2 - n1} more files ({per_file:.0f} bytes per extra file)")
    w(f"- Target: peak RSS does not grow with file count, taken here as RSS at {n2} files at most "
      f"10% + 4 MiB above RSS at {n1} files -> {verdict(r2 <= 1.1 * r1 + 4096, ok)}")
    summary.append(f"| evac peak RSS not growing with file count ({n1} -> {n2} files) | {mib(r1)} -> {mib(r2)} MiB | {verdict(r2 <= 1.1 * r1 + 4096, ok)} |")
    w("")

w("## Raw runs\n")
w("| tree | contender | rep | wall (s) | peak RSS (KiB) | exit | check |")
w("|---|---|---:|---:|---:|---:|---|")
for (tree, c), rs in rows.items():
    for i, r in enumerate(rs, 1):
        w(f"| {tree} | {c} | {i} | {fmt_s(r['wall'])} | {r['rss']} | {r['rc']} | {r['check']} |")
w("")

out[summary_at:summary_at] = ["## Summary: targets\n", "| target | measured | verdict |", "|---|---:|---|"] + summary + [""]
text = "\n".join(out)
# Sections other benchmarks keep in the same file (bench/stage_order.sh, bench/fingerprint.sh)
# survive this rewrite.
try:
    old = open(E["RESULTS"]).read()
    for marker in ("stage-order", "fingerprint"):
        a, b = old.find(f"<!-- {marker}"), old.find(f"<!-- /{marker} -->")
        if a >= 0 and b > a:
            text = text.rstrip("\n") + "\n\n" + old[a:b + len(f"<!-- /{marker} -->")] + "\n"
except FileNotFoundError:
    pass
with open(E["RESULTS"], "w") as f:
    f.write(text)
print(text)
PY

log "report written to $RESULTS (benchmark took $(((T_END - T_START) / 60)) min $(((T_END - T_START) % 60)) s)"
