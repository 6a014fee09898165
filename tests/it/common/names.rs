//! Names and bytes: C-style escaping as evac prints it, awkward and decoy names, evac's
//! temporaries, relative paths, and deterministic pseudo-random data.

use super::*;

/// C-style escaping as the contract describes: printable UTF-8 stays, `\\`, `\"`,
/// `\n`, `\t`, `\r`, other control characters and invalid bytes as `\xNN`.
pub fn esc(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_esc(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_esc(&mut out, std::str::from_utf8(good).unwrap());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

/// `esc`, shortened for messages when very long.
pub fn short(bytes: &[u8]) -> String {
    let e = esc(bytes);
    if e.len() <= 160 {
        return e;
    }
    let mut a = 60;
    while !e.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = e.len() - 60;
    while !e.is_char_boundary(b) {
        b += 1;
    }
    format!("{}…[{} bytes]…{}", &e[..a], bytes.len(), &e[b..])
}

fn push_esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Does this file name look like one of evac's temporaries: `^\.evac-[0-9a-f]{16}-`?
pub fn is_evac_temp(name: &[u8]) -> bool {
    name.len() >= 23
        && name.starts_with(b".evac-")
        && name[6..22]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && name[22] == b'-'
}

pub fn basename(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[i + 1..],
        None => rel,
    }
}

pub fn join_rel(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut v = prefix.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// `root/rel` as a path (only for paths shorter than PATH_MAX).
pub fn path_of(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

pub fn bytes_of(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// The pathological-name corpus: every byte that may appear in a name.
pub fn weird_names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"new\nline".to_vec(),
        b"\nleading-newline".to_vec(),
        b"tab\there".to_vec(),
        b"cr\rhere".to_vec(),
        b"ctl\x01\x02\x1b[31m\x7f".to_vec(),
        b"back\\slash\\n".to_vec(),
        b"quote\"double'single`".to_vec(),
        b"glob*?[a-z]{x}".to_vec(),
        b"-leading-dash".to_vec(),
        b"--".to_vec(),
        b"-n".to_vec(),
        b"   ".to_vec(),
        b" ".to_vec(),
        b"trailing space ".to_vec(),
        b"\xff\xfe".to_vec(),
        b"bad\xc3(utf8\x80".to_vec(),
        "caf\u{e9} \u{65e5}\u{672c} \u{1f600}".as_bytes().to_vec(),
        b"$(echo pwned);`id`|&<>".to_vec(),
        b"%s%n%x".to_vec(),
        b".hidden".to_vec(),
        b"...".to_vec(),
        vec![b'L'; 255],
        // Look like evac temporaries of some other journal: ordinary user files.
        b".evac-0123456789abcdef-7.tmp".to_vec(),
        b".evac-0123456789abcdef-8.lnk".to_vec(),
    ];
    // 255 bytes made of 2-byte UTF-8 characters plus one ASCII byte.
    let mut u = "\u{e9}".repeat(127).into_bytes();
    u.push(b'e');
    v.push(u);
    v
}

/// Decoy names in the corpus (user files named like evac temporaries).
pub fn decoy_names() -> Vec<Vec<u8>> {
    weird_names()
        .into_iter()
        .filter(|n| is_evac_temp(n))
        .collect()
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// `len` deterministic bytes from `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

pub(super) fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn hash_bytes(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}
