//! `--exclude` patterns with rsync's meaning, so that an operator's rsync exclude list works here
//! unchanged: which paths under SOURCE a walk leaves as they are and does not descend into.
//!
//! The rules are rsync's ("INCLUDE/EXCLUDE PATTERN RULES" in rsync(1)), for exclude rules only:
//!
//! - a leading `/` anchors the pattern at SOURCE's root; otherwise it matches the end of the
//!   path, at a component boundary (`foo` matches `foo` and `a/b/foo`, `b/foo` matches `a/b/foo`
//!   but not `ab/foo`);
//! - a trailing `/` matches directories only;
//! - a pattern with none of `*`, `?`, `[` is compared literally (a backslash is an ordinary
//!   byte); otherwise `*` matches within one component, `**` matches across `/`, `?` one byte
//!   other than `/`, `[...]` a class (`[!...]` or `[^...]` negated, ranges, `[:alpha:]` and the
//!   other POSIX names, never `/`), and `\` takes the next byte literally;
//! - a pattern without `/` (other than a trailing one) and without `**` is matched against the
//!   last component only; with `**` (not at its start) it may match from any component on; one
//!   that starts with `**` may match from the root (`**/foo` matches `foo` too);
//! - `dir/***` matches `dir` itself and everything under it.
//!
//! A walk asks about each entry before it enters it, so an excluded directory's contents are
//! never looked at: `excluded_path` asks the same of a path given whole (every ancestor as a
//! directory, then the path).

use std::fmt;

/// One exclude pattern, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// As given (after a `- ` prefix was taken off): what is recorded and reported.
    text: Vec<u8>,
    /// What is matched: without the anchoring `/` and the directory-only `/`.
    pat: Vec<u8>,
    anchored: bool,
    dir_only: bool,
    /// Has `*`, `?` or `[`: matched as a wildcard pattern, else literally.
    wild: bool,
    /// Has `**`.
    wild2: bool,
    /// Starts with `**` (unanchored).
    wild2_prefix: bool,
    /// Ends with `/***`.
    wild3_suffix: bool,
    /// Slashes in the pattern (the anchoring one included, the directory-only one not).
    slashes: usize,
}

/// The exclude rules of a run, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    rules: Vec<Rule>,
}

/// A pattern that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    pub pattern: Vec<u8>,
    pub why: &'static str,
}

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exclude pattern {}: {}",
            super::escape::quoted(&self.pattern),
            self.why
        )
    }
}

impl Rule {
    pub fn parse(given: &[u8]) -> Result<Rule, BadPattern> {
        let bad = |why| BadPattern {
            pattern: given.to_vec(),
            why,
        };
        // rsync reads `- PATTERN` as an exclude rule and `+ PATTERN` as an include, in lists and
        // on the command line alike; evac has no includes, and silently excluding a path the
        // operator meant to include would be the wrong way round.
        if given.starts_with(b"+ ") {
            return Err(bad(
                "include rules (`+ `) are not supported: evac takes exclude patterns only",
            ));
        }
        let text = given.strip_prefix(b"- ").unwrap_or(given).to_vec();
        if text.is_empty() || text == b"/" {
            return Err(bad("empty pattern"));
        }
        if text.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let mut pat: &[u8] = &text;
        let mut dir_only = false;
        if pat.len() > 1 && pat.ends_with(b"/") {
            pat = &pat[..pat.len() - 1];
            dir_only = true;
        }
        let slashes = pat.iter().filter(|&&b| b == b'/').count();
        let anchored = pat.starts_with(b"/");
        if anchored {
            pat = &pat[1..];
        }
        let wild = pat.iter().any(|b| matches!(b, b'*' | b'?' | b'['));
        let wild2 = wild && pat.windows(2).any(|w| w == b"**");
        let r = Rule {
            pat: pat.to_vec(),
            anchored,
            dir_only,
            wild,
            wild2,
            wild2_prefix: wild2 && !anchored && pat.starts_with(b"**"),
            wild3_suffix: wild2 && pat.ends_with(b"/***"),
            slashes,
            text,
        };
        if r.wild {
            check_classes(&r.pat).map_err(bad)?;
        }
        Ok(r)
    }

    /// The pattern as given.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Does this rule exclude the entry at `path` (relative to SOURCE, no leading `/`)?
    pub fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        if path.is_empty() || (self.dir_only && !is_dir) {
            return false;
        }
        let mut name = path;
        if self.slashes == 0 && !self.wild2 {
            name = last_component(path);
        }
        if !self.wild {
            return if self.anchored {
                name == self.pat.as_slice()
            } else {
                name.ends_with(&self.pat)
                    && (name.len() == self.pat.len()
                        || name[name.len() - self.pat.len() - 1] == b'/')
            };
        }
        let mut text: Vec<u8> = Vec::with_capacity(name.len() + 2);
        // `**/x` matches `x` at the root as well; `d/***` matches `d` itself.
        if self.wild2_prefix {
            text.push(b'/');
        }
        text.extend_from_slice(name);
        if is_dir && self.wild3_suffix {
            text.push(b'/');
        }
        if !self.anchored && self.slashes > 0 && !self.wild2 {
            // As many trailing components as the pattern has.
            match trailing_components(&text, self.slashes + 1) {
                Some(t) => wild(&self.pat, t) == Match::Yes,
                None => false,
            }
        } else if !self.anchored && self.wild2 && !self.wild2_prefix {
            // From the start, or after any slash.
            let mut at = 0;
            loop {
                match wild(&self.pat, &text[at..]) {
                    Match::Yes => return true,
                    Match::AbortAll => return false,
                    _ => {}
                }
                match text[at..].iter().position(|&b| b == b'/') {
                    Some(i) => at += i + 1,
                    None => return false,
                }
            }
        } else {
            wild(&self.pat, &text) == Match::Yes
        }
    }
}

impl Filters {
    /// The rules for these patterns, each checked; the first bad one is the error.
    pub fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Filters, BadPattern> {
        let rules = patterns
            .iter()
            .map(|p| Rule::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filters { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The patterns as given, in order (what the journal records).
    pub fn patterns(&self) -> Vec<Vec<u8>> {
        self.rules.iter().map(|r| r.text.clone()).collect()
    }

    /// The first rule that excludes the entry at `path`, if any (its parent is not excluded:
    /// the walk asks on its way down).
    pub fn excluded(&self, path: &[u8], is_dir: bool) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(path, is_dir))
    }

    /// The excluded path at or above `path` and the rule, if `path` or any directory above it
    /// is excluded: for paths that come from elsewhere than the walk (an HSM listing).
    pub fn excluded_path<'a>(&self, path: &'a [u8], is_dir: bool) -> Option<(&'a [u8], &Rule)> {
        if self.rules.is_empty() {
            return None;
        }
        for (i, &b) in path.iter().enumerate() {
            if b == b'/' && i > 0 {
                if let Some(r) = self.excluded(&path[..i], true) {
                    return Some((&path[..i], r));
                }
            }
        }
        self.excluded(path, is_dir).map(|r| (path, r))
    }
}

/// Patterns from an `--exclude-from` file's content: one a line (LF, CR LF or CR), or with
/// `from0` each ended by NUL; empty entries and entries starting with `#` or `;` are comments,
/// as rsync reads them.
pub fn read_list(data: &[u8], from0: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |e: &[u8]| {
        if !e.is_empty() && e[0] != b'#' && e[0] != b';' {
            out.push(e.to_vec());
        }
    };
    if from0 {
        data.split(|&b| b == 0).for_each(&mut push);
        return out;
    }
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\n' || data[i] == b'\r' {
            push(&data[start..i]);
            if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    push(&data[start..]);
    out
}

fn last_component(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The last `n` components of `text`, or None if it has fewer.
fn trailing_components(text: &[u8], n: usize) -> Option<&[u8]> {
    let mut left = n;
    for i in (0..text.len()).rev() {
        if text[i] == b'/' {
            left -= 1;
            if left == 0 {
                return Some(&text[i + 1..]);
            }
        }
    }
    (left == 1).then_some(text)
}

/// Refuse a class that is never closed or names no POSIX class: rsync would never match such a
/// pattern, which an operator would learn only from a run that relocated what they meant to
/// keep.
fn check_classes(pat: &[u8]) -> Result<(), &'static str> {
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            b'\\' => i += 2,
            b'[' => match class(pat, i, 0) {
                Some((_, end)) => i = end,
                None => return Err("a character class `[` is not closed, or names no POSIX class"),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// Match the class starting at `pat[at]` (`[`) against byte `c`: (matched, index after `]`),
/// or None for a malformed class.
fn class(pat: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut p = at + 1;
    let mut negated = false;
    if matches!(pat.get(p), Some(b'!') | Some(b'^')) {
        negated = true;
        p += 1;
    }
    let mut matched = false;
    let mut prev: Option<u8> = None;
    let mut first = true;
    loop {
        let ch = *pat.get(p)?;
        if ch == b']' && !first {
            p += 1;
            break;
        }
        first = false;
        if ch == b'\\' {
            p += 1;
            let e = *pat.get(p)?;
            matched |= c == e;
            prev = Some(e);
            p += 1;
        } else if ch == b'-' && prev.is_some() && pat.get(p + 1).is_some_and(|&n| n != b']') {
            p += 1;
            let mut hi = pat[p];
            if hi == b'\\' {
                p += 1;
                hi = *pat.get(p)?;
            }
            let lo = prev.unwrap_or(0);
            matched |= lo <= c && c <= hi;
            prev = None;
            p += 1;
        } else if ch == b'[' && pat.get(p + 1) == Some(&b':') {
            // `[:name:]` up to the first `]`; without the closing `:` it is a literal `[`.
            let s = p + 2;
            let close = s + pat[s..].iter().position(|&b| b == b']')?;
            if close > s && pat[close - 1] == b':' {
                matched |= posix_class(&pat[s..close - 1], c)?;
                p = close + 1;
                prev = None;
            } else {
                matched |= c == b'[';
                prev = Some(b'[');
                p += 1;
            }
        } else {
            matched |= c == ch;
            prev = Some(ch);
            p += 1;
        }
    }
    Some((matched != negated && c != b'/', p))
}

fn posix_class(name: &[u8], c: u8) -> Option<bool> {
    Some(match name {
        b"alnum" => c.is_ascii_alphanumeric(),
        b"alpha" => c.is_ascii_alphabetic(),
        b"blank" => c == b' ' || c == b'\t',
        b"cntrl" => c.is_ascii_control(),
        b"digit" => c.is_ascii_digit(),
        b"graph" => c.is_ascii_graphic(),
        b"lower" => c.is_ascii_lowercase(),
        b"print" => c.is_ascii_graphic() || c == b' ',
        b"punct" => c.is_ascii_punctuation(),
        b"space" => c.is_ascii_whitespace() || c == 0x0b,
        b"upper" => c.is_ascii_uppercase(),
        b"xdigit" => c.is_ascii_hexdigit(),
        _ => return None,
    })
}

/// How a wildcard match ended. `AbortAll` and `AbortToStarStar` cut the backtracking short (no
/// later start can match), as in rsync's matcher, which keeps `*` linear per component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    AbortAll,
    AbortToStarStar,
}

fn wild(pat: &[u8], text: &[u8]) -> Match {
    let (mut p, mut t) = (0usize, 0usize);
    while p < pat.len() {
        let pc = pat[p];
        if t >= text.len() && pc != b'*' {
            return Match::AbortAll;
        }
        match pc {
            b'\\' => {
                p += 1;
                if pat.get(p) != Some(&text[t]) {
                    return Match::No;
                }
            }
            b'?' => {
                if text[t] == b'/' {
                    return Match::No;
                }
            }
            b'*' => {
                p += 1;
                let double = pat.get(p) == Some(&b'*');
                while pat.get(p) == Some(&b'*') {
                    p += 1;
                }
                if p == pat.len() {
                    return if double || !text[t..].contains(&b'/') {
                        Match::Yes
                    } else {
                        Match::No
                    };
                }
                while t < text.len() {
                    let m = wild(&pat[p..], &text[t..]);
                    if m != Match::No && (!double || m != Match::AbortToStarStar) {
                        return m;
                    }
                    if m == Match::No && !double && text[t] == b'/' {
                        return Match::AbortToStarStar;
                    }
                    t += 1;
                }
                return Match::AbortAll;
            }
            b'[' => match class(pat, p, text[t]) {
                Some((true, end)) => {
                    p = end;
                    t += 1;
                    continue;
                }
                Some((false, _)) => return Match::No,
                None => return Match::AbortAll,
            },
            _ => {
                if pc != text[t] {
                    return Match::No;
                }
            }
        }
        p += 1;
        t += 1;
    }
    if t == text.len() {
        Match::Yes
    } else {
        Match::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(pattern: &str, path: &str, is_dir: bool) -> bool {
        Rule::parse(pattern.as_bytes())
            .unwrap()
            .matches(path.as_bytes(), is_dir)
    }

    /// A path excluded as a walk would find it: some ancestor, or the path itself.
    fn walk_ex(patterns: &[&str], path: &str, is_dir: bool) -> bool {
        Filters::new(patterns)
            .unwrap()
            .excluded_path(path.as_bytes(), is_dir)
            .is_some()
    }

    #[test]
    fn unanchored_names_match_at_any_depth() {
        assert!(ex("foo", "foo", false));
        assert!(ex("foo", "a/b/foo", false));
        assert!(ex("foo", "a/foo", true));
        assert!(!ex("foo", "afoo", false));
        assert!(!ex("foo", "foo2", false));
        assert!(
            !ex("foo", "foo/bar", false),
            "only the entry itself, not below"
        );
        assert!(
            walk_ex(&["foo"], "foo/bar", false),
            "but the walk never gets below"
        );
    }

    #[test]
    fn anchored_patterns_match_from_the_root_only() {
        assert!(ex("/foo", "foo", false));
        assert!(!ex("/foo", "a/foo", false));
        assert!(ex("/a/foo", "a/foo", false));
        assert!(!ex("/a/foo", "x/a/foo", false));
        assert!(ex("/*.o", "x.o", false));
        assert!(!ex("/*.o", "d/x.o", false));
        assert!(ex("/a/*/c", "a/b/c", true));
        assert!(!ex("/a/*/c", "a/b/b/c", true));
    }

    #[test]
    fn unanchored_with_slash_matches_trailing_components() {
        assert!(ex("b/foo", "b/foo", false));
        assert!(ex("b/foo", "a/b/foo", false));
        assert!(!ex("b/foo", "a/xb/foo", false));
        assert!(!ex("b/foo", "foo", false));
        assert!(ex("b/*.c", "x/b/y.c", false));
        assert!(!ex("b/*.c", "x/b/z/y.c", false));
        assert!(ex("sub/*/x", "p/sub/q/x", false));
    }

    #[test]
    fn star_stays_in_a_component_and_double_star_crosses() {
        assert!(ex("*.o", "a/b/c.o", false));
        assert!(ex("*", "anything", false));
        assert!(!ex("/a*", "ab/c", false));
        assert!(ex("/a*", "ab", true));
        assert!(ex("/a/**", "a/b/c/d", false));
        assert!(
            !ex("/a/**", "a", true),
            "a/** is what is under a, not a itself"
        );
        assert!(ex("/a/**/z", "a/b/c/z", false));
        assert!(
            !ex("/a/**/z", "a/z", false),
            "rsync's ** does not match an empty dir"
        );
        assert!(ex("a/**/z", "q/a/b/z", false));
        assert!(
            ex("**/cache", "cache", true),
            "a leading ** also matches at the root"
        );
        assert!(ex("**/cache", "x/y/cache", true));
        assert!(ex("**.tmp", "x/y/z.tmp", false));
        assert!(ex("x**y", "q/xa/by", false));
        assert!(!ex("x*y", "xa/by", false));
    }

    #[test]
    fn question_mark_and_classes() {
        assert!(ex("?.c", "d/a.c", false));
        assert!(!ex("?.c", "d/ab.c", false));
        assert!(!ex("/a?b", "a/b", false), "? never matches /");
        assert!(ex("[ab].c", "b.c", false));
        assert!(!ex("[ab].c", "c.c", false));
        assert!(ex("[!ab].c", "c.c", false));
        assert!(ex("[^ab].c", "c.c", false));
        assert!(!ex("[^ab].c", "a.c", false));
        assert!(ex("f[0-9]", "f7", false));
        assert!(!ex("f[0-9]", "fx", false));
        assert!(ex("f[]x]", "f]", false), "] first is a member");
        assert!(ex("f[a-]", "f-", false), "- last is a member");
        assert!(ex("[[:digit:]][[:alpha:]]", "1q", false));
        assert!(!ex("[[:upper:]]*", "lower", false));
        assert!(!ex("/a[!x]b", "a/b", false), "a class never matches /");
        assert!(Rule::parse(b"a[bc").is_err());
        assert!(Rule::parse(b"[[:nope:]]").is_err());
    }

    #[test]
    fn backslash_escapes_only_in_wildcard_patterns() {
        assert!(ex("a\\*b*", "a*bc", false));
        assert!(!ex("a\\*b*", "axbc", false));
        // No wildcard: the backslash is an ordinary byte, as in rsync.
        assert!(ex("a\\b", "a\\b", false));
        assert!(!ex("a\\b", "ab", false));
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        assert!(ex("build/", "x/build", true));
        assert!(!ex("build/", "x/build", false));
        assert!(ex("/build/", "build", true));
        assert!(!ex("/build/", "build", false));
        assert!(ex("*.d/", "a.d", true));
        assert!(!ex("*.d/", "a.d", false));
    }

    #[test]
    fn triple_star_suffix_matches_the_directory_and_below() {
        assert!(ex("/d/***", "d", true));
        assert!(ex("/d/***", "d/x/y", false));
        assert!(!ex("/d/***", "d", false), "d itself only as a directory");
        assert!(!ex("/d/***", "dd", true));
    }

    #[test]
    fn raw_bytes_and_odd_names() {
        let r = Rule::parse(b"caf\xe9*").unwrap();
        assert!(r.matches(b"x/caf\xe9 au lait", false));
        let r = Rule::parse(b"new\nline").unwrap();
        assert!(r.matches(b"a/new\nline", false));
        assert!(ex("-rf", "d/-rf", false));
        assert!(
            ex(" lead", "d/ lead", false),
            "whitespace is part of the pattern"
        );
    }

    #[test]
    fn prefixes_and_bad_patterns() {
        assert_eq!(Rule::parse(b"- foo").unwrap().text(), b"foo");
        assert!(ex("- *.o", "a.o", false));
        assert!(Rule::parse(b"+ foo").is_err());
        assert!(Rule::parse(b"").is_err());
        assert!(Rule::parse(b"/").is_err());
        let e = Rule::parse(b"x[").unwrap_err();
        assert!(e.to_string().contains("\"x[\""), "{e}");
    }

    #[test]
    fn walk_order_first_matching_rule_reported() {
        let f = Filters::new(&["*.o", "/keep/"]).unwrap();
        assert_eq!(f.excluded(b"keep", true).unwrap().text(), b"/keep/");
        assert_eq!(f.excluded(b"a.o", false).unwrap().text(), b"*.o");
        assert!(f.excluded(b"keep", false).is_none());
        let (at, r) = f.excluded_path(b"keep/deep/file", false).unwrap();
        assert_eq!((at, r.text()), (&b"keep"[..], &b"/keep/"[..]));
        assert!(Filters::default().excluded_path(b"a", false).is_none());
    }

    #[test]
    fn lists_read_as_rsync_reads_them() {
        let l = read_list(b"# comment\n; also\n\n*.o\r\n/build/\rtail", false);
        assert_eq!(
            l,
            vec![b"*.o".to_vec(), b"/build/".to_vec(), b"tail".to_vec()]
        );
        let l = read_list(b"a\nb\0#c\0\0d\n\0", true);
        assert_eq!(l, vec![b"a\nb".to_vec(), b"d\n".to_vec()]);
        assert!(read_list(b"", false).is_empty());
    }

    #[test]
    fn pathological_backtracking_stays_fast() {
        let r = Rule::parse(b"/a*a*a*a*a*a*a*a*a*b").unwrap();
        let text = vec![b'a'; 200];
        let t0 = std::time::Instant::now();
        assert!(!r.matches(&text, false));
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    }
}
