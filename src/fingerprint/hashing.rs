//! Content hashes for phase 3: blake3, and the algorithms HSM listings carry (md5, sha1,
//! sha256), computed together in one read; the partial hash (first and last 16 KiB) that rules
//! out most same-size files after 32 KiB of reading; and opening a candidate by absolute path
//! without following symlinks.

use crate::journal::fingerprint::FpLeftover;

use md5::Digest as _;
use rustix::fd::BorrowedFd;
use std::io;

/// Bytes hashed at each end of a file for its partial hash. Files up to twice this are read
/// whole at once: reading their ends would be reading them.
pub const EDGE: u64 = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algo {
    Blake3,
    Md5,
    Sha1,
    Sha256,
}

impl Algo {
    pub const ALL: [Algo; 4] = [Algo::Blake3, Algo::Md5, Algo::Sha1, Algo::Sha256];

    pub fn name(self) -> &'static str {
        match self {
            Algo::Blake3 => "blake3",
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    /// The algorithm an HSM listing names (case and dashes as the tools write them).
    pub fn parse(s: &str) -> Option<Algo> {
        Some(
            match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
                "blake3" | "b3" => Algo::Blake3,
                "md5" => Algo::Md5,
                "sha1" => Algo::Sha1,
                "sha256" => Algo::Sha256,
                _ => return None,
            },
        )
    }

    fn len(self) -> usize {
        match self {
            Algo::Blake3 | Algo::Sha256 => 32,
            Algo::Md5 => 16,
            Algo::Sha1 => 20,
        }
    }
}

/// What is known of one file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hashes {
    /// blake3 of the first and last `EDGE` bytes (files over 2 × `EDGE` only).
    pub partial: Option<Vec<u8>>,
    pub blake3: Option<Vec<u8>>,
    pub md5: Option<Vec<u8>>,
    pub sha1: Option<Vec<u8>>,
    pub sha256: Option<Vec<u8>>,
}

impl Hashes {
    pub fn get(&self, a: Algo) -> Option<&[u8]> {
        match a {
            Algo::Blake3 => self.blake3.as_deref(),
            Algo::Md5 => self.md5.as_deref(),
            Algo::Sha1 => self.sha1.as_deref(),
            Algo::Sha256 => self.sha256.as_deref(),
        }
    }

    pub fn set(&mut self, a: Algo, v: Vec<u8>) {
        match a {
            Algo::Blake3 => self.blake3 = Some(v),
            Algo::Md5 => self.md5 = Some(v),
            Algo::Sha1 => self.sha1 = Some(v),
            Algo::Sha256 => self.sha256 = Some(v),
        }
    }

    /// Fill what `self` lacks from `other` (hashes of the same content).
    pub fn merge(&mut self, other: &Hashes) {
        if self.partial.is_none() {
            self.partial.clone_from(&other.partial);
        }
        for a in Algo::ALL {
            if self.get(a).is_none() {
                if let Some(v) = other.get(a) {
                    self.set(a, v.to_vec());
                }
            }
        }
    }

    /// Every hash of the empty content (no file needs reading for it).
    pub fn of_empty() -> Hashes {
        let mut m = Multi::new(&Algo::ALL);
        m.update(b"");
        m.finish()
    }
}

/// `ALGORITHM:HEX` as an HSM listing gives it.
pub fn parse_checksum(s: &str) -> Result<(Algo, Vec<u8>), String> {
    let (algo, hex) = s
        .split_once(':')
        .ok_or_else(|| format!("checksum {s:?} is not ALGORITHM:HEX"))?;
    let a = Algo::parse(algo).ok_or_else(|| {
        format!("checksum algorithm {algo:?} is not one evac computes (blake3, md5, sha1, sha256)")
    })?;
    let v = unhex(hex.trim()).ok_or_else(|| format!("checksum {s:?}: not hexadecimal"))?;
    if v.len() != a.len() {
        return Err(format!(
            "checksum {s:?}: {} bytes, {algo} has {}",
            v.len(),
            a.len()
        ));
    }
    Ok((a, v))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Several hashes fed by one pass over the data.
struct Multi {
    b3: Option<blake3::Hasher>,
    md5: Option<md5::Md5>,
    sha1: Option<sha1::Sha1>,
    sha256: Option<sha2::Sha256>,
}

impl Multi {
    fn new(algos: &[Algo]) -> Multi {
        Multi {
            b3: algos.contains(&Algo::Blake3).then(blake3::Hasher::new),
            md5: algos.contains(&Algo::Md5).then(md5::Md5::new),
            sha1: algos.contains(&Algo::Sha1).then(sha1::Sha1::new),
            sha256: algos.contains(&Algo::Sha256).then(sha2::Sha256::new),
        }
    }

    fn update(&mut self, d: &[u8]) {
        if let Some(h) = &mut self.b3 {
            h.update(d);
        }
        if let Some(h) = &mut self.md5 {
            h.update(d);
        }
        if let Some(h) = &mut self.sha1 {
            h.update(d);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(d);
        }
    }

    fn finish(self) -> Hashes {
        Hashes {
            partial: None,
            blake3: self.b3.map(|h| h.finalize().as_bytes().to_vec()),
            md5: self.md5.map(|h| h.finalize().to_vec()),
            sha1: self.sha1.map(|h| h.finalize().to_vec()),
            sha256: self.sha256.map(|h| h.finalize().to_vec()),
        }
    }
}

fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], mut off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], off) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "shorter than when it was indexed (changed while being read)",
                ))
            }
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The partial hash of a file of `size` bytes (over 2 × `EDGE`): blake3 of its first and
/// last `EDGE` bytes.
pub fn partial(fd: BorrowedFd<'_>, size: u64, buf: &mut [u8]) -> io::Result<Vec<u8>> {
    let edge = EDGE as usize;
    let mut h = blake3::Hasher::new();
    pread_exact(fd, &mut buf[..edge], 0)?;
    h.update(&buf[..edge]);
    pread_exact(fd, &mut buf[..edge], size - EDGE)?;
    h.update(&buf[..edge]);
    Ok(h.finalize().as_bytes().to_vec())
}

/// The `algos` hashes of the whole content (`size` bytes, checked: a file that grew or shrank
/// while read is an error), reading front to back; `progress` gets each chunk's length.
pub fn full(
    fd: BorrowedFd<'_>,
    size: u64,
    algos: &[Algo],
    buf: &mut [u8],
    progress: &mut dyn FnMut(u64),
) -> io::Result<Hashes> {
    let mut m = Multi::new(algos);
    let mut pos = 0u64;
    while pos < size {
        let want = ((size - pos) as usize).min(buf.len());
        pread_exact(fd, &mut buf[..want], pos)?;
        m.update(&buf[..want]);
        pos += want as u64;
        progress(want as u64);
    }
    let mut probe = [0u8; 1];
    if matches!(rustix::io::pread(fd, &mut probe, size), Ok(n) if n > 0) {
        return Err(io::Error::other(
            "longer than when it was indexed (changed while being read)",
        ));
    }
    Ok(m.finish())
}

/// Read-ahead for a whole-file read, and the pages dropped again afterwards: a search of
/// terabytes of backups must not push the live server's working set out of memory.
pub fn advise_sequential(fd: BorrowedFd<'_>) {
    let _ = rustix::fs::fadvise(fd, 0, None, rustix::fs::Advice::Sequential);
}

pub fn advise_done(fd: BorrowedFd<'_>) {
    let _ = rustix::fs::fadvise(fd, 0, None, rustix::fs::Advice::DontNeed);
}

/// The content hashes a leftover's fingerprint holds: the blake3 read from SOURCE, and the
/// HSM listing's checksum when evac can compute its algorithm.
pub fn known_hashes(l: &FpLeftover) -> Vec<(Algo, Vec<u8>)> {
    let mut v = Vec::new();
    if let Some(b) = &l.blake3 {
        v.push((Algo::Blake3, b.clone()));
    }
    if let Some(Ok(c)) = l.hsm_checksum.as_deref().map(parse_checksum) {
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse() {
        let (a, v) = parse_checksum("MD5:d41d8cd98f00b204e9800998ecf8427e").unwrap();
        assert_eq!(
            (a, hex(&v)),
            (Algo::Md5, "d41d8cd98f00b204e9800998ecf8427e".into())
        );
        assert!(parse_checksum("sha-256:00").unwrap_err().contains("bytes"));
        assert!(parse_checksum("crc32:1234abcd").is_err());
        assert!(parse_checksum("md5:zz").is_err());
        assert!(parse_checksum("md5").is_err());
    }

    #[test]
    fn empty_content_hashes_are_the_known_ones() {
        let h = Hashes::of_empty();
        assert_eq!(
            hex(h.md5.as_deref().unwrap()),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            hex(h.sha1.as_deref().unwrap()),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            hex(h.sha256.as_deref().unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h.blake3.unwrap(), blake3::hash(b"").as_bytes().to_vec());
    }
}
