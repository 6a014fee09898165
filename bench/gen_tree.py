#!/usr/bin/env python3
"""Deterministic test-tree generator for the evac benchmark (bench/run.sh).

Usage:
    gen_tree.py small DEST COUNT SEED
    gen_tree.py large DEST COUNT SEED SIZE_MB

small: COUNT files of 1-16 KiB (uniform size, random content), about 100 files
       per leaf directory, leaf directories nested three levels deep:
       DEST/tNNN/mN/lN/fNNNNNNN.dat (plus a few files one and two levels up, so
       not every file sits at the same depth).
large: COUNT files of SIZE_MB MiB each of random content: DEST/bigNNN.dat.

The same (kind, COUNT, SEED, SIZE_MB) always yields byte-identical trees: all
names, sizes and contents come from random.Random(SEED), never os.urandom.
Content is incompressible and never repeats, so neither compressing nor
deduplicating filesystems can shortcut the copy.

DEST must not exist or be empty. Nothing is fsynced here: the caller syncs.
On success the script prints one line: "<files> <bytes>".
"""

import os
import random
import sys

FILES_PER_DIR = 100
CHUNK = 8 << 20  # large files are written in 8 MiB pieces


def usage():
    sys.stderr.write(__doc__)
    sys.exit(2)


def prepare_dest(dest):
    if os.path.exists(dest):
        if not os.path.isdir(dest) or os.listdir(dest):
            sys.exit(f"gen_tree.py: {dest} exists and is not an empty directory")
    else:
        os.makedirs(dest)


def small(dest, count, rng):
    total = 0
    made = set()
    for i in range(count):
        d = i // FILES_PER_DIR
        # Two files in every 50 go one or two levels up instead of into a leaf, so
        # the tree has files at depths 1, 2 and 3 below the top directory.
        if i % 50 == 7:
            rel = f"t{d // 100:03d}"
        elif i % 50 == 32:
            rel = f"t{d // 100:03d}/m{(d // 10) % 10}"
        else:
            rel = f"t{d // 100:03d}/m{(d // 10) % 10}/l{d % 10}"
        dirpath = os.path.join(dest, rel)
        if dirpath not in made:
            os.makedirs(dirpath, exist_ok=True)
            made.add(dirpath)
        size = rng.randint(1024, 16384)
        with open(os.path.join(dirpath, f"f{i:07d}.dat"), "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    return count, total


def large(dest, count, size_mb, rng):
    size = size_mb << 20
    total = 0
    for i in range(count):
        with open(os.path.join(dest, f"big{i:03d}.dat"), "wb") as f:
            left = size
            while left > 0:
                n = min(CHUNK, left)
                f.write(rng.randbytes(n))
                left -= n
        total += size
    return count, total


def main(argv):
    if len(argv) < 5:
        usage()
    kind, dest = argv[1], argv[2]
    try:
        count, seed = int(argv[3]), int(argv[4])
    except ValueError:
        usage()
    if count < 1:
        sys.exit("gen_tree.py: COUNT must be at least 1")
    rng = random.Random(seed)
    if kind == "small":
        if len(argv) != 5:
            usage()
        prepare_dest(dest)
        files, total = small(dest, count, rng)
    elif kind == "large":
        if len(argv) != 6:
            usage()
        try:
            size_mb = int(argv[5])
        except ValueError:
            usage()
        if size_mb < 1:
            sys.exit("gen_tree.py: SIZE_MB must be at least 1")
        prepare_dest(dest)
        files, total = large(dest, count, size_mb, rng)
    else:
        usage()
    print(files, total)


if __name__ == "__main__":
    main(sys.argv)
