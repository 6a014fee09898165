//! Which storage lies behind a directory (the block devices under device-mapper, partitions,
//! md and loop devices, or an NFS mount) and its I/O counters, for the governor's utilisation and
//! latency signals.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where /proc and /sys are: the real ones, or a recorded copy in tests.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc_: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            proc_: "/proc".into(),
            sys: "/sys".into(),
        }
    }
}

/// What the governor can measure for one directory's filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Block devices, by their names in /proc/diskstats: the one the filesystem is on first, then
    /// what it is built from (a partition's disk, device-mapper's and md's members, a loop
    /// device's backing storage).
    Block(Vec<String>),
    /// An NFS mount (its per-operation round trips in /proc/self/mountstats).
    Nfs { device: String, mount_point: String },
    /// Nothing to measure (tmpfs, FUSE, overlay without a device...): why.
    Unmeasured(String),
}

impl Backing {
    pub fn describe(&self) -> String {
        match self {
            Backing::Block(v) => v.join("+"),
            Backing::Nfs { device, .. } => format!("nfs {device}"),
            Backing::Unmeasured(why) => why.clone(),
        }
    }
}

fn major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)
}

fn minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff)
}

/// One line of /proc/self/mountinfo, the fields the governor needs.
struct MountLine {
    majmin: String,
    mount_point: String,
    fstype: String,
    source: String,
}

/// mountinfo escapes blanks and backslashes as \ooo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo(roots: &Roots) -> Vec<MountLine> {
    let text = std::fs::read_to_string(roots.proc_.join("self/mountinfo")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountLine {
                majmin: pre.get(2)?.to_string(),
                mount_point: unescape_octal(pre.get(4)?),
                fstype: post.first()?.to_string(),
                source: unescape_octal(post.get(1)?),
            })
        })
        .collect()
}

/// What lies behind the filesystem whose st_dev is `dev`.
pub fn backing(roots: &Roots, dev: u64) -> Backing {
    backing_depth(roots, dev, 0)
}

fn backing_depth(roots: &Roots, dev: u64, depth: u32) -> Backing {
    let (maj, min) = (major(dev), minor(dev));
    if maj != 0 {
        let mut names = Vec::new();
        block_names(roots, &format!("{maj}:{min}"), depth, &mut names);
        return if names.is_empty() {
            Backing::Unmeasured(format!(
                "device {maj}:{min} is not in {}",
                roots.sys.display()
            ))
        } else {
            Backing::Block(names)
        };
    }
    // No device number of its own (btrfs subvolumes, NFS, tmpfs, FUSE): the mount says more.
    let mounts = mountinfo(roots);
    let Some(m) = mounts
        .iter()
        .rev()
        .find(|m| m.majmin == format!("{maj}:{min}"))
    else {
        return Backing::Unmeasured(format!("no mount with device 0:{min}"));
    };
    if m.fstype.starts_with("nfs") {
        return Backing::Nfs {
            device: m.source.clone(),
            mount_point: m.mount_point.clone(),
        };
    }
    if m.source.starts_with('/') {
        if let Ok(md) = std::fs::metadata(&m.source) {
            if md.file_type().is_block_device() {
                let mut names = Vec::new();
                let r = md.rdev();
                block_names(
                    roots,
                    &format!("{}:{}", major(r), minor(r)),
                    depth,
                    &mut names,
                );
                if !names.is_empty() {
                    return Backing::Block(names);
                }
            }
        }
    }
    Backing::Unmeasured(format!("{}: no block device", m.fstype))
}

/// The device `majmin` by its diskstats name, then what it is made of.
fn block_names(roots: &Roots, majmin: &str, depth: u32, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    let link = roots.sys.join("dev/block").join(majmin);
    let Ok(dir) = std::fs::canonicalize(&link) else {
        return;
    };
    let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(String::from) else {
        return;
    };
    if out.contains(&name) {
        return;
    }
    out.push(name);
    // A partition: its disk is the one that seeks.
    if dir.join("partition").exists() {
        if let Some(disk) = dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        {
            if !out.iter().any(|n| n == disk) {
                out.push(disk.to_string());
            }
        }
    }
    // device-mapper, md: the members.
    if let Ok(rd) = std::fs::read_dir(dir.join("slaves")) {
        let mut members: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        members.sort();
        for m in members {
            if let Ok(mm) = std::fs::read_to_string(m.join("dev")) {
                block_names(roots, mm.trim(), depth + 1, out);
            }
        }
    }
    // A loop device: the storage its backing file is on.
    if let Ok(f) = std::fs::read_to_string(dir.join("loop/backing_file")) {
        if let Ok(md) = std::fs::metadata(f.trim_end_matches('\n')) {
            if let Backing::Block(more) = backing_depth(roots, md.dev(), depth + 1) {
                for n in more {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
    }
}

/// Cumulative I/O counters of one device or mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests completed.
    pub ios: u64,
    /// Milliseconds those requests took, summed.
    pub ticks_ms: u64,
    /// Milliseconds the device had at least one request in flight (none for NFS).
    pub busy_ms: Option<u64>,
}

/// /proc/diskstats by device name.
pub fn parse_diskstats(text: &str) -> HashMap<String, Counters> {
    let mut m = HashMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After major, minor and name: reads 3, read ms 6, writes 7, write ms 10, io ms 12;
        // since 4.18 discards 14 and discard ms 17; since 5.5 flushes 18 and flush ms 19.
        let c = Counters {
            ios: n(3) + n(7) + n(14) + n(18),
            ticks_ms: n(6) + n(10) + n(17) + n(19),
            busy_ms: Some(n(12)),
        };
        m.insert(f[2].to_string(), c);
    }
    m
}

/// READ and WRITE round trips of the NFS mount on `mount_point` in /proc/self/mountstats.
pub fn parse_mountstats(text: &str, mount_point: &str) -> Option<Counters> {
    let mut inside = false;
    let mut c = Counters::default();
    let mut found = false;
    for l in text.lines() {
        if l.starts_with("device ") {
            // "device SERVER:/EXPORT mounted on /MOUNT with fstype nfs4 statvers=1.1"
            inside = l
                .split_once(" mounted on ")
                .and_then(|(_, r)| r.split_once(" with fstype "))
                .is_some_and(|(mp, _)| unescape_octal(mp) == mount_point);
            continue;
        }
        if !inside {
            continue;
        }
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("READ:").or_else(|| t.strip_prefix("WRITE:")) {
            // ops, transmissions, timeouts, bytes sent, bytes received, queue ms, rtt ms,
            // execute ms (queue + round trip).
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 8 {
                c.ios += v[0];
                c.ticks_ms += v[7];
                found = true;
            }
        }
    }
    found.then_some(c)
}

/// The counters of what `b` names, read now.
pub fn read(roots: &Roots, b: &Backing) -> Vec<(String, Counters)> {
    match b {
        Backing::Block(names) => {
            let text = std::fs::read_to_string(roots.proc_.join("diskstats")).unwrap_or_default();
            let all = parse_diskstats(&text);
            names
                .iter()
                .filter_map(|n| all.get(n).map(|c| (n.clone(), *c)))
                .collect()
        }
        Backing::Nfs {
            device,
            mount_point,
        } => {
            let text =
                std::fs::read_to_string(roots.proc_.join("self/mountstats")).unwrap_or_default();
            parse_mountstats(&text, mount_point)
                .map(|c| vec![(format!("nfs {device}"), c)])
                .unwrap_or_default()
        }
        Backing::Unmeasured(_) => Vec::new(),
    }
}

/// Where `p`'s filesystem is stored.
pub fn backing_of(roots: &Roots, p: &Path) -> Backing {
    match std::fs::metadata(p) {
        Ok(md) => backing(roots, md.dev()),
        Err(e) => Backing::Unmeasured(format!("stat: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fake_sys() -> (tempfile::TempDir, Roots) {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let devs = sys.join("devices");
        // sda with partition sda2; dm-0 (LVM on sda2 and sdb); md0 on sdc1 and sdd1.
        for d in [
            "pci/block/sda/sda2",
            "pci/block/sdb",
            "pci/block/sdc/sdc1",
            "pci/block/sdd/sdd1",
            "virtual/block/dm-0/slaves",
            "virtual/block/md0/slaves",
        ] {
            std::fs::create_dir_all(devs.join(d)).unwrap();
        }
        for (p, dev) in [
            ("pci/block/sda/sda2", "8:2"),
            ("pci/block/sdb", "8:16"),
            ("pci/block/sdc/sdc1", "8:33"),
            ("pci/block/sdd/sdd1", "8:49"),
            ("virtual/block/dm-0", "253:0"),
            ("virtual/block/md0", "9:0"),
        ] {
            std::fs::write(devs.join(p).join("dev"), format!("{dev}\n")).unwrap();
            let bl = sys.join("dev/block");
            std::fs::create_dir_all(&bl).unwrap();
            symlink(devs.join(p), bl.join(dev)).unwrap();
        }
        for p in [
            "pci/block/sda/sda2",
            "pci/block/sdc/sdc1",
            "pci/block/sdd/sdd1",
        ] {
            std::fs::write(devs.join(p).join("partition"), "1\n").unwrap();
        }
        symlink(
            devs.join("pci/block/sda/sda2"),
            devs.join("virtual/block/dm-0/slaves/sda2"),
        )
        .unwrap();
        symlink(
            devs.join("pci/block/sdb"),
            devs.join("virtual/block/dm-0/slaves/sdb"),
        )
        .unwrap();
        symlink(
            devs.join("pci/block/sdc/sdc1"),
            devs.join("virtual/block/md0/slaves/sdc1"),
        )
        .unwrap();
        symlink(
            devs.join("pci/block/sdd/sdd1"),
            devs.join("virtual/block/md0/slaves/sdd1"),
        )
        .unwrap();
        let proc_ = t.path().join("proc");
        std::fs::create_dir_all(proc_.join("self")).unwrap();
        std::fs::write(
            proc_.join("self/mountinfo"),
            "27 1 253:0 / / rw - ext4 /dev/mapper/vg-root rw\n\
             40 27 0:45 / /home rw - nfs4 filer:/export/home rw\n\
             41 27 0:46 / /scratch rw - tmpfs tmpfs rw\n\
             42 27 0:47 / /mnt/with\\040blank rw - nfs filer:/x rw\n",
        )
        .unwrap();
        let roots = Roots { proc_, sys };
        (t, roots)
    }

    fn dev(maj: u64, min: u64) -> u64 {
        ((maj & 0xfff) << 8) | ((maj & !0xfff) << 32) | (min & 0xff) | ((min & !0xff) << 12)
    }

    #[test]
    fn device_numbers_round_trip() {
        for (a, b) in [(8, 2), (253, 0), (259, 300), (4095, 1048575)] {
            assert_eq!((major(dev(a, b)), minor(dev(a, b))), (a, b));
        }
    }

    #[test]
    fn device_mapper_partitions_and_md_are_followed_to_their_disks() {
        let (_t, r) = fake_sys();
        assert_eq!(
            backing(&r, dev(253, 0)),
            Backing::Block(vec![
                "dm-0".into(),
                "sda2".into(),
                "sda".into(),
                "sdb".into()
            ])
        );
        assert_eq!(
            backing(&r, dev(8, 2)),
            Backing::Block(vec!["sda2".into(), "sda".into()])
        );
        assert_eq!(
            backing(&r, dev(9, 0)),
            Backing::Block(vec![
                "md0".into(),
                "sdc1".into(),
                "sdc".into(),
                "sdd1".into(),
                "sdd".into()
            ])
        );
        assert!(matches!(backing(&r, dev(8, 99)), Backing::Unmeasured(_)));
    }

    #[test]
    fn filesystems_without_a_device() {
        let (_t, r) = fake_sys();
        assert_eq!(
            backing(&r, dev(0, 45)),
            Backing::Nfs {
                device: "filer:/export/home".into(),
                mount_point: "/home".into()
            }
        );
        assert_eq!(
            backing(&r, dev(0, 46)),
            Backing::Unmeasured("tmpfs: no block device".into())
        );
        assert_eq!(
            backing(&r, dev(0, 47)),
            Backing::Nfs {
                device: "filer:/x".into(),
                mount_point: "/mnt/with blank".into()
            }
        );
        assert!(matches!(backing(&r, dev(0, 99)), Backing::Unmeasured(_)));
    }

    #[test]
    fn diskstats_fields() {
        // A 5.5+ line (flushes), a 4.18 line (discards) and an old one.
        let t = " 254 0 vda 100 1 800 50 200 2 1600 70 3 900 1200 5 0 40 7 9 11 4\n\
                  8 0 sda 10 0 80 5 20 0 160 7 0 30 12 1 0 8 2\n\
                  8 16 sdb 1 0 8 2 3 0 24 4 0 6 6\n";
        let m = parse_diskstats(t);
        assert_eq!(
            m["vda"],
            Counters {
                ios: 100 + 200 + 5 + 9,
                ticks_ms: 50 + 70 + 7 + 11,
                busy_ms: Some(900)
            }
        );
        assert_eq!(m["sda"].ios, 10 + 20 + 1);
        assert_eq!(m["sda"].ticks_ms, 5 + 7 + 2);
        assert_eq!(m["sda"].busy_ms, Some(30));
        assert_eq!(
            m["sdb"],
            Counters {
                ios: 4,
                ticks_ms: 6,
                busy_ms: Some(6)
            }
        );
    }

    #[test]
    fn nfs_round_trips() {
        let t = "device sysfs mounted on /sys with fstype sysfs\n\
                 device filer:/export/home mounted on /home with fstype nfs4 statvers=1.1\n\
                 \topts:\trw,vers=4.2\n\
                 \tper-op statistics\n\
                 \t        NULL: 0 0 0 0 0 0 0 0\n\
                 \t        READ: 120 120 0 19200 4915200 30 900 960 0\n\
                 \t       WRITE: 80 80 0 3276800 12800 20 700 740 0\n\
                 device filer:/x mounted on /other with fstype nfs statvers=1.1\n\
                 \t        READ: 5 5 0 1 1 1 1 1 0\n";
        assert_eq!(
            parse_mountstats(t, "/home"),
            Some(Counters {
                ios: 200,
                ticks_ms: 1700,
                busy_ms: None
            })
        );
        assert_eq!(parse_mountstats(t, "/nowhere"), None);
    }

    #[test]
    fn the_machines_own_root_is_measured_or_says_why() {
        // Whatever this machine is: a description, never a panic.
        let b = backing_of(&Roots::default(), Path::new("/"));
        assert!(!b.describe().is_empty());
        if let Backing::Block(names) = &b {
            let got = read(&Roots::default(), &b);
            assert_eq!(got.len(), names.len(), "{names:?} all in /proc/diskstats");
        }
    }
}
