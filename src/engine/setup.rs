//! Setting a run up: SOURCE, DEST and LINK_PREFIX settled from the arguments and the journal's
//! plan (a resume with others is refused), the journal kept out of SOURCE, what the walk prunes.

use super::*;

impl Runner {
    pub(super) fn prune_list(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(self.plan.dest_dev, self.plan.dest_ino)];
        if let Ok(st) = fsx::fstat(self.ctx.dst_root.as_fd()) {
            v.push((st.st_dev, st.st_ino));
        }
        if let Ok(jd) = journal_dir(&self.o.journal) {
            if let Ok(id) = stat_path(&jd) {
                v.push(id);
            }
        }
        v
    }
}

pub(super) fn q(p: &Path) -> String {
    quoted(p.as_os_str().as_encoded_bytes())
}

pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::Setup(format!("current directory: {e}")))?;
    Ok(cwd.join(p))
}

pub(super) fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf> {
    let c = std::fs::canonicalize(p).map_err(|e| Error::Setup(format!("{what} {}: {e}", q(p))))?;
    if !c.is_dir() {
        return Err(Error::Setup(format!("{what} {}: not a directory", q(p))));
    }
    Ok(c)
}

/// The journal's directory, resolved, so "inside SOURCE" can be decided on real paths.
pub(super) fn journal_dir(journal: &Path) -> Result<PathBuf> {
    let parent = journal.parent().unwrap_or(Path::new("/"));
    canonical_dir(parent, "journal directory")
}

pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

pub(super) fn new_journal_id() -> String {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = crate::util::time::now().to_bits() ^ u64::from(std::process::id());
        b = t.to_le_bytes();
    }
    journal::blake3_hex(&b)
}

pub(super) fn stat_path(p: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::stat(p).map_err(|e| Error::Setup(format!("stat {}: {e}", q(p))))?;
    Ok((st.st_dev, st.st_ino))
}

/// Settle SOURCE, DEST and LINK_PREFIX from the arguments and/or the journal's plan.
pub(super) fn settle_plan(o: &RunOpts, existing: Option<Plan>) -> Result<(Plan, bool)> {
    let given = match (&o.source, &o.dest) {
        (Some(s), Some(d)) => Some((s.clone(), d.clone())),
        (None, None) => None,
        _ => {
            return Err(Error::Setup(
                "give both SOURCE and DEST, or neither to resume from the journal".into(),
            ))
        }
    };
    if let Some(p) = existing {
        if let Some((s, d)) = given {
            let s = canonical_dir(&s, "SOURCE")?;
            let d = canonical_dir(&d, "DEST")?;
            if s != p.source || d != p.dest {
                return Err(Error::Setup(format!(
                    "journal {} belongs to SOURCE {} and DEST {}; refusing to resume it with SOURCE {} and DEST {}",
                    q(&o.journal),
                    q(&p.source),
                    q(&p.dest),
                    q(&s),
                    q(&d)
                )));
            }
        }
        if let Some(lp) = &o.link_prefix {
            if lp != &p.link_prefix {
                return Err(Error::Setup(format!(
                    "journal {} uses link prefix {}; refusing a different one ({})",
                    q(&o.journal),
                    q(&p.link_prefix),
                    q(lp)
                )));
            }
        }
        canonical_dir(&p.source, "SOURCE")?;
        canonical_dir(&p.dest, "DEST")?;
        return Ok((p, false));
    }
    let Some((s, d)) = given else {
        return Err(Error::Setup(format!(
            "journal {} has no plan yet: give SOURCE and DEST",
            q(&o.journal)
        )));
    };
    let s = canonical_dir(&s, "SOURCE")?;
    if !d.exists() {
        std::fs::create_dir(&d).map_err(|e| Error::Setup(format!("create DEST {}: {e}", q(&d))))?;
    }
    let d = canonical_dir(&d, "DEST")?;
    if s == d || s.starts_with(&d) {
        return Err(Error::Setup(format!(
            "SOURCE {} must not be DEST or lie inside it ({})",
            q(&s),
            q(&d)
        )));
    }
    let link_prefix = match &o.link_prefix {
        Some(lp) if lp.is_absolute() => lp.clone(),
        Some(lp) => {
            return Err(Error::Setup(format!(
                "--link-prefix {} must be an absolute path",
                q(lp)
            )))
        }
        None => d.clone(),
    };
    let (sdev, sino) = stat_path(&s)?;
    let (ddev, dino) = stat_path(&d)?;
    Ok((
        Plan {
            journal_id: new_journal_id(),
            source: s,
            dest: d,
            link_prefix,
            source_dev: sdev,
            source_ino: sino,
            dest_dev: ddev,
            dest_ino: dino,
        },
        true,
    ))
}

/// The exclude patterns of a run: those given, or the journal's. A journal keeps the set it was
/// started with (`recorded`; None for a new journal): what a run relocates must not depend on
/// which resume it was, so a resume with another set is refused.
pub(super) fn settle_filters(
    o: &RunOpts,
    recorded: Option<Vec<Vec<u8>>>,
) -> Result<crate::util::filter::Filters> {
    use crate::util::filter::Filters;
    let from_journal = |r: &[Vec<u8>]| {
        Filters::new(r).map_err(|e| {
            Error::Setup(format!(
                "journal {}: recorded {e}; this evac cannot use it",
                q(&o.journal)
            ))
        })
    };
    let (given, recorded) = match (&o.exclude, recorded) {
        (None, None) => return Ok(Filters::default()),
        (None, Some(r)) => return from_journal(&r),
        (Some(g), None) => return Ok(g.clone()),
        (Some(g), Some(r)) => (g, r),
    };
    let set = |v: &[Vec<u8>]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    if set(&given.patterns()) == set(&recorded) {
        return from_journal(&recorded);
    }
    let show = |v: &[Vec<u8>]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(" ")
        }
    };
    Err(Error::Setup(format!(
        "journal {} was started with exclude patterns {}; refusing to go on with {}: the patterns decide what is relocated and hold for the journal's life (resume without --exclude to use the recorded ones, or start a new journal)",
        q(&o.journal),
        show(&recorded),
        show(&given.patterns())
    )))
}

pub(super) fn refuse_journal_in_source(journal: &Path, source: &Path) -> Result<()> {
    let jd = journal_dir(journal)?;
    if jd.starts_with(source) {
        return Err(Error::Setup(format!(
            "the journal {} lies inside SOURCE {}: put it elsewhere (evac replaces files in SOURCE)",
            q(journal),
            q(source)
        )));
    }
    Ok(())
}
