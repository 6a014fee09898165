//! Phase 3's matching: how sure a candidate is to hold a leftover's data (`Confidence`, judged
//! by size, name, mtime and content hashes), and what each candidate must be asked (partial or
//! full hashes, the HSM's checksum algorithms), read without following any symlink.

use super::hashing::{self, Algo, Hashes, EDGE};
use super::index::Found;
use super::leftovers::Leftover;
use super::stats::Stats;
use crate::sys::fsx;
use rustix::fd::{AsFd, OwnedFd};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;

/// How sure a candidate is to hold a leftover's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Confidence {
    /// No candidate.
    None,
    /// Same size and name, content unknown on one side.
    Weak,
    /// Same size, name and mtime (to the second), content unknown on one side.
    Probable,
    /// A content hash is equal (blake3, or the HSM checksum's algorithm).
    Exact,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::None => "none",
            Confidence::Weak => "weak",
            Confidence::Probable => "probable",
            Confidence::Exact => "exact",
        }
    }
}

/// What one candidate is to one leftover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Candidate(Confidence, &'static str),
    /// Same size, other content: not a candidate.
    Decoy,
    /// Same size, nothing else in common.
    Unrelated,
}

pub(crate) fn name_of(rel: &[u8]) -> &[u8] {
    fsx::split_parent(rel).1
}

pub(crate) fn same_second(a: i64, b: i64) -> bool {
    a.div_euclid(1_000_000_000) == b.div_euclid(1_000_000_000)
}

/// A candidate (same size as `l`) against the leftover `l`, with what is known of its content.
pub(crate) fn judge(l: &Leftover, f: &Found, h: Option<&Hashes>) -> Verdict {
    let same_name = name_of(&f.rel) == l.name.as_slice();
    if l.fp.size == 0 {
        // Every empty file has the leftover's content: only its name makes it a candidate.
        return if same_name {
            Verdict::Candidate(Confidence::Exact, "empty")
        } else {
            Verdict::Unrelated
        };
    }
    if let Some(h) = h {
        let mut compared = false;
        for (a, want) in &l.known {
            if let Some(got) = h.get(*a) {
                if got == want.as_slice() {
                    return Verdict::Candidate(Confidence::Exact, a.name());
                }
                compared = true;
            }
        }
        if let (Some(lp), Some(cp)) = (&l.fp.partial, &h.partial) {
            compared |= lp != cp;
        }
        if compared {
            return Verdict::Decoy;
        }
    }
    match (same_name, l.fp.mtime_ns) {
        (true, Some(t)) if same_second(t, f.mtime_ns) => {
            Verdict::Candidate(Confidence::Probable, "name+mtime")
        }
        (true, _) => Verdict::Candidate(Confidence::Weak, "name"),
        _ => Verdict::Unrelated,
    }
}

/// A candidate of one leftover, before ranking.
pub(crate) struct Cand<'a> {
    pub(crate) conf: Confidence,
    pub(crate) by: &'static str,
    pub(crate) same_name: bool,
    pub(crate) same_time: bool,
    pub(crate) path: Vec<u8>,
    pub(crate) f: &'a Found,
}

/// What the candidates of one size must be asked, from the leftovers of that size whose content
/// is known.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    /// A leftover of this size was read: candidates are compared by blake3, after their partial
    /// hash matched one of these (files over 2 × EDGE).
    pub(crate) readable: bool,
    pub(crate) partials: HashSet<Vec<u8>>,
    /// Algorithms of leftovers known only by the HSM's checksum: every candidate needs them,
    /// read in full.
    pub(crate) algos: BTreeSet<Algo>,
}

impl Needs {
    /// Whether `h` answers everything this size asks.
    pub(crate) fn answered_by(&self, size: u64, h: &Hashes) -> bool {
        if !self.algos.iter().all(|a| h.get(*a).is_some()) {
            return false;
        }
        if !self.readable || h.blake3.is_some() {
            return true;
        }
        size > 2 * EDGE
            && h.partial
                .as_ref()
                .is_some_and(|p| !self.partials.contains(p))
    }
}

/// A candidate inode to read, with its names.
pub(crate) struct Job<'a> {
    pub(crate) found: &'a Found,
    pub(crate) needs: &'a Needs,
    /// Hashes cached for this very inode and version, kept alongside what is read now.
    pub(crate) cached: Option<Hashes>,
}

/// Open `f` below its search directory (no symlink followed) and read what `needs` asks.
pub(crate) fn read_job(
    roots: &[OwnedFd],
    job: &Job<'_>,
    buf: &mut [u8],
    stats: &Stats,
    bytes: &mut u64,
) -> std::result::Result<Hashes, String> {
    let f = job.found;
    let (pd, name) = fsx::split_parent(&f.rel);
    let dir = fsx::resolve_dir(roots[f.root].as_fd(), pd).map_err(|e| format!("open: {e}"))?;
    let fd = fsx::open_read(dir.as_fd(), name).map_err(|e| format!("open: {e}"))?;
    let st = fsx::fstat(fd.as_fd()).map_err(|e| format!("stat: {e}"))?;
    if (st.st_dev, st.st_ino, st.st_size as u64, fsx::mtime_ns(&st))
        != (f.dev, f.ino, f.size, f.mtime_ns)
    {
        return Err("changed since it was indexed; run again".into());
    }
    Stats::add(&stats.read, 1);
    let mut h = Hashes::default();
    if f.size > 2 * EDGE {
        h.partial =
            Some(hashing::partial(fd.as_fd(), f.size, buf).map_err(|e| format!("read: {e}"))?);
        Stats::add(&stats.read_bytes, 2 * EDGE);
        *bytes += 2 * EDGE;
    }
    let n = job.needs;
    let full = !n.algos.is_empty()
        || (n.readable && h.partial.as_ref().map_or(true, |p| n.partials.contains(p)));
    if full {
        let mut algos: Vec<Algo> = n.algos.iter().copied().collect();
        if !algos.contains(&Algo::Blake3) {
            algos.push(Algo::Blake3);
        }
        hashing::advise_sequential(fd.as_fd());
        let got = hashing::full(fd.as_fd(), f.size, &algos, buf, &mut |k| {
            Stats::add(&stats.read_bytes, k);
            *bytes += k;
        })
        .map_err(|e| format!("read: {e}"));
        hashing::advise_done(fd.as_fd());
        h.merge(&got?);
    }
    if let Some(c) = &job.cached {
        h.merge(c);
    }
    Ok(h)
}

/// The bytes a candidate read may take: its ends, then all of it.
pub(crate) fn estimate(size: u64) -> u64 {
    if size > 2 * EDGE {
        size + 2 * EDGE
    } else {
        size
    }
}

/// One candidate done: the progress total corrected to what its read took (a partial hash
/// that ruled it out reads 32 KiB, not all of it).
pub(crate) fn finished(stats: &Stats, size: u64, read: u64) {
    Stats::add(&stats.done, 1);
    let est = estimate(size);
    if read < est {
        stats.to_read_bytes.fetch_sub(est - read, Ordering::Relaxed);
    } else {
        Stats::add(&stats.to_read_bytes, read - est);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::fingerprint::FpLeftover;

    fn leftover(name: &str, size: u64, mtime: i64, known: Vec<(Algo, Vec<u8>)>) -> Leftover {
        Leftover {
            fp: FpLeftover {
                path: format!("d/{name}").into_bytes(),
                size,
                mtime_ns: Some(mtime),
                content: "stub".into(),
                ..FpLeftover::default()
            },
            name: name.as_bytes().to_vec(),
            known,
            id: None,
        }
    }

    fn found(name: &str, size: u64, mtime: i64) -> Found {
        Found {
            root: 0,
            rel: format!("x/{name}").into_bytes(),
            dev: 1,
            ino: 2,
            size,
            mtime_ns: mtime,
            ctime_ns: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            stub: None,
        }
    }

    #[test]
    fn verdicts() {
        let md5 = vec![7u8; 16];
        let l = leftover("a", 10, 5_000_000_000, vec![(Algo::Md5, md5.clone())]);
        let same = Hashes {
            md5: Some(md5.clone()),
            ..Hashes::default()
        };
        let other = Hashes {
            md5: Some(vec![8u8; 16]),
            ..Hashes::default()
        };
        let f = found("other-name", 10, 1);
        assert_eq!(
            judge(&l, &f, Some(&same)),
            Verdict::Candidate(Confidence::Exact, "md5")
        );
        // Same name and mtime, but the content says otherwise: a decoy, never a candidate.
        assert_eq!(
            judge(&l, &found("a", 10, 5_000_000_000), Some(&other)),
            Verdict::Decoy
        );
        // Content unknown on one side: name and mtime decide.
        assert_eq!(
            judge(&l, &found("a", 10, 5_900_000_000), None),
            Verdict::Candidate(Confidence::Probable, "name+mtime")
        );
        assert_eq!(
            judge(&l, &found("a", 10, 6_000_000_000), None),
            Verdict::Candidate(Confidence::Weak, "name")
        );
        assert_eq!(judge(&l, &f, None), Verdict::Unrelated);
        // Hashes of an algorithm the leftover has no value for compare nothing.
        let b3 = Hashes {
            blake3: Some(vec![1; 32]),
            ..Hashes::default()
        };
        assert_eq!(
            judge(&l, &found("a", 10, 0), Some(&b3)),
            Verdict::Candidate(Confidence::Weak, "name")
        );
        let e = leftover("e", 0, 0, vec![]);
        assert_eq!(
            judge(&e, &found("e", 0, 9), Some(&Hashes::of_empty())),
            Verdict::Candidate(Confidence::Exact, "empty")
        );
        assert_eq!(
            judge(&e, &found("z", 0, 9), Some(&Hashes::of_empty())),
            Verdict::Unrelated
        );
    }

    #[test]
    fn partial_hashes_decide_without_a_full_read() {
        let mut n = Needs {
            readable: true,
            ..Needs::default()
        };
        n.partials.insert(vec![1; 32]);
        let size = 3 * EDGE;
        let differs = Hashes {
            partial: Some(vec![2; 32]),
            ..Hashes::default()
        };
        let matches = Hashes {
            partial: Some(vec![1; 32]),
            ..Hashes::default()
        };
        assert!(n.answered_by(size, &differs));
        assert!(!n.answered_by(size, &matches));
        n.algos.insert(Algo::Sha1);
        assert!(!n.answered_by(size, &differs), "sha1 is needed too");
    }
}
