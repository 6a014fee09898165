//! `--dry-run`: walk and classify exactly as a run would, touching nothing and writing no journal.

use super::*;

/// `--dry-run`: walk and classify exactly as a run would, touching nothing and writing no journal.
/// With `--list`, each regular file a run would relocate goes to `listed` (path relative to
/// SOURCE, raw bytes).
pub fn dry_run(o: &RunOpts, listed: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<i32> {
    // Where a relative --journal is, before its directory is judged.
    let journal = absolute(&o.journal)?;
    let (plan, recorded, units_off) = if journal.exists() {
        let j = Journal::open_read(&journal)?;
        match j.plan()? {
            Some(p) => (
                Some(p),
                Some(j.excludes()?),
                j.plan_option("units")?.as_deref() == Some("off"),
            ),
            None => (None, None, false),
        }
    } else {
        (None, None, false)
    };
    // The patterns a run would use (or its refusal).
    let filters = settle_filters(o, recorded)?;
    let (source, link_prefix, dest) = match (&o.source, &o.dest, plan) {
        (Some(s), Some(d), _) => {
            let s = canonical_dir(s, "SOURCE")?;
            let dabs = std::fs::canonicalize(d).unwrap_or(absolute(d)?);
            refuse_journal_in_source(&journal, &s)?;
            let lp = o.link_prefix.clone().unwrap_or(dabs.clone());
            (s, lp, Some(dabs))
        }
        (None, None, Some(p)) => (p.source, p.link_prefix, Some(p.dest)),
        _ => {
            return Err(Error::Setup(
                "--dry-run needs SOURCE and DEST (or a journal with a plan)".into(),
            ))
        }
    };
    let root = fsx::open_root(&source).ctx("open SOURCE", source.as_os_str().as_encoded_bytes())?;
    let root_dev = fsx::fstat(root.as_fd()).ctx("stat SOURCE", b".")?.st_dev;
    let mut prune = Vec::new();
    if let Some(d) = &dest {
        if let Ok(id) = stat_path(d) {
            prune.push(id);
        }
    }
    if let Ok(jd) = journal_dir(&journal) {
        if let Ok(id) = stat_path(&jd) {
            prune.push(id);
        }
    }
    let lp = journal::path_bytes(&link_prefix);
    let (tx, rx) = crossbeam_channel::bounded(8192);
    let stop = AtomicBool::new(false);
    let opts = WalkOpts {
        root_dev,
        prune,
        reserved_prefix: b"\0".to_vec(),
        filters,
        units: (!o.no_default_units && !units_off)
            .then(|| journal.exists().then(|| journal.clone())),
        hsm: crate::hsm::detect::Mode::None,
        hsm_timeout: Duration::from_secs(60),
        source_abs: PathBuf::new(),
    };
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut linked = 0u64;
    let mut skipped = 0u64;
    let mut dirs = 0u64;
    let mut errors = 0u64;
    let mut excluded = 0u64;
    let mut hard: HashSet<(u64, u64)> = HashSet::new();
    std::thread::scope(|sc| {
        sc.spawn(|| walk::walk(&root, &opts, &tx, &stop));
        for m in rx.iter() {
            match m {
                WalkMsg::Entry(s) => match s.kind {
                    Kind::File => {
                        files += 1;
                        if s.nlink <= 1 || hard.insert((s.dev, s.ino)) {
                            bytes += s.size;
                        }
                        if o.list {
                            // A closed pipe ends the listing, not the count.
                            let _ = listed(&s.path);
                        }
                    }
                    Kind::Dir => dirs += 1,
                    Kind::Symlink => {
                        let mut t = lp.clone();
                        if !t.ends_with(b"/") {
                            t.push(b'/');
                        }
                        t.extend_from_slice(&s.path);
                        if s.target.as_deref() == Some(t.as_slice()) {
                            linked += 1;
                        } else {
                            skipped += 1;
                        }
                    }
                    _ => skipped += 1,
                },
                WalkMsg::Excluded { .. } => excluded += 1,
                WalkMsg::Error { path, op, err } => {
                    errors += 1;
                    crate::util::notice::say(format!("evac: {op} {}: {err}", quoted(&path)));
                }
                WalkMsg::Done { .. } => break,
            }
        }
    });
    if !o.quiet {
        crate::util::notice::say(format!(
            "evac: dry run of {}: would relocate {files} files ({}) in {dirs} directories; {linked} already relocated; {skipped} left as they are (symlinks, special files){}; {errors} errors; nothing was changed",
            q(&source),
            human_bytes(bytes as f64),
            if excluded > 0 {
                format!("; {excluded} left as they are (excluded by --exclude, or version-control trees left whole; directories not entered)")
            } else {
                String::new()
            }
        ));
    }
    Ok(if errors > 0 { EXIT_LEFT } else { EXIT_OK })
}
