//! The pipeline: the walk recorded as it comes, pending files dispatched to the copy workers from
//! the journal (single files, then hard-link groups once all their names are known), outcomes
//! taken back and recorded, deferred files retried.

use super::*;

impl Runner {
    /// Send jobs after their `copying` state is committed (so recovery knows about them).
    pub(super) fn dispatch(&mut self, jobs: Vec<Job>) -> Result<()> {
        let jobs = self.hold_back(jobs);
        if jobs.is_empty() {
            return Ok(());
        }
        // Committed before any job leaves, so that recovery knows of every temporary: never
        // inside a caller's transaction, which could not be committed here.
        if self.j.in_transaction() {
            return Err(Error::Setup(
                "internal error: jobs dispatched inside a journal transaction".into(),
            ));
        }
        let j = self.j.clone();
        let tx = j.tx()?;
        for job in &jobs {
            for r in &job.names {
                self.j.mark_copying(r.id)?;
            }
        }
        tx.commit()?;
        let Some(tx) = &self.chan.job_tx else {
            return Ok(());
        };
        for job in jobs {
            for r in &job.names {
                self.flight.inflight_ids.insert(r.id);
            }
            self.flight.in_flight += 1;
            self.flight.dispatched += 1;
            let _ = tx.send(job);
        }
        Ok(())
    }

    /// The walk is recorded as fast as it comes (so `status` knows the whole tree early), while
    /// pending files are sent to the workers from the journal in id order, as fast as they copy.
    pub(super) fn phase_walk(&mut self, wrx: &Receiver<WalkMsg>) -> Result<bool> {
        let link_prefix = self.ctx.link_prefix.clone();
        let mut walking = true;
        let mut complete = false;
        let mut cursor = 0i64;
        let mut excluded = 0u64;
        loop {
            let mut progressed = false;
            if walking {
                let mut msgs = Vec::new();
                while msgs.len() < 2048 {
                    // (With step points armed, the walk is recorded whole or in full pages, so
                    // that its journal commits do not depend on the walker's pace.)
                    let m = if steps::enabled() {
                        wrx.recv().ok()
                    } else {
                        wrx.try_recv().ok()
                    };
                    match m {
                        Some(m) => {
                            let last = matches!(m, WalkMsg::Done { .. });
                            msgs.push(m);
                            if last {
                                break;
                            }
                        }
                        None => break,
                    }
                }
                if !msgs.is_empty() {
                    progressed = true;
                    let t0 = Instant::now();
                    let j = self.j.clone();
                    let tx = j.tx()?;
                    for m in msgs {
                        match m {
                            WalkMsg::Entry(s) => {
                                if s.kind == Kind::Reserved {
                                    let name = fsx::split_parent(&s.path).1.to_vec();
                                    if let Some((id, _)) = self.ctx.parse_tmp(&name) {
                                        self.reserved_seen.push((id, s.path.clone()));
                                        continue;
                                    }
                                }
                                if s.kind == Kind::File {
                                    Stats::add(&self.stats.files_seen, 1);
                                    Stats::add(&self.stats.bytes_seen, s.size);
                                }
                                let target = if s.kind == Kind::Symlink {
                                    self.ctx.link_target(&s.path)
                                } else {
                                    link_prefix.clone()
                                };
                                // What to copy is read back from the journal below.
                                self.j.observe(&s, self.run_id, &target)?;
                            }
                            WalkMsg::Excluded { seen, rule } => {
                                excluded += 1;
                                // A unit's rule is evac's own words; a pattern is the user's bytes.
                                let rule = if rule.starts_with(b"unit: ") {
                                    String::from_utf8_lossy(&rule).into_owned()
                                } else {
                                    quoted(&rule)
                                };
                                self.j.record_excluded(
                                    &seen.path,
                                    seen.kind,
                                    &rule,
                                    self.run_id,
                                )?;
                            }
                            WalkMsg::Error { path, op, err } => {
                                self.walk_errors += 1;
                                let msg = format!("{op} {}: {err}", quoted(&path));
                                self.j.log(Some(self.run_id), "error", &msg)?;
                                self.say(format!("evac: {msg}"));
                            }
                            WalkMsg::Done { complete: c } => {
                                walking = false;
                                complete = c;
                                self.stats.walk_done.store(true, Ordering::Relaxed);
                                // Tests read this line to show copying starts before the walk
                                // ends.
                                self.j.log(
                                    Some(self.run_id),
                                    "info",
                                    &format!(
                                        "inventory {}: {} regular files seen, {} already sent to copy workers, {} relocated so far",
                                        if c { "complete" } else { "incomplete" },
                                        self.stats.files_seen.load(Ordering::Relaxed),
                                        self.flight.dispatched,
                                        self.stats.files_done.load(Ordering::Relaxed)
                                    ),
                                )?;
                                if excluded > 0 {
                                    self.j.log(
                                        Some(self.run_id),
                                        "info",
                                        &format!("{excluded} paths left as they are in SOURCE (excluded by --exclude, or version-control trees left whole), directories not entered (`evac status --list excluded`)"),
                                    )?;
                                }
                            }
                        }
                    }
                    tx.commit()?;
                    self.prof.observe += t0.elapsed();
                    self.handle_reserved()?;
                }
            }
            let mut drained = true;
            // (With step points armed, copying waits for the walk: one schedule to replay.)
            if walking && steps::enabled() {
                drained = false;
            } else if self.flight.in_flight < self.flight.max_in_flight && !self.stopping() {
                let want = (self.flight.max_in_flight - self.flight.in_flight).min(512) as i64;
                let recs = self.j.files_in_state(FileState::Pending, cursor, want)?;
                if let Some(l) = recs.last() {
                    cursor = l.id;
                    drained = false;
                    progressed = true;
                }
                self.dispatch(single_name_jobs(recs))?;
            } else if !self.stopping() {
                drained = false;
            }
            if self.stopping() && walking {
                // The walker stops on its own; keep draining so it can finish sending.
                while let Ok(m) = wrx.try_recv() {
                    if let WalkMsg::Done { .. } = m {
                        walking = false;
                    }
                }
            }
            if !walking && drained && self.flight.in_flight == 0 && self.batch.is_empty() {
                break;
            }
            progressed |= self.pump(!progressed)?;
            if !progressed && walking {
                // Nothing to do: wait for the walker or a worker.
                crossbeam_channel::select! {
                    recv(self.chan.res_rx) -> r => { if let Ok(r) = r { self.take(r); } }
                    default(Duration::from_millis(5)) => {}
                }
            }
        }
        Ok(complete)
    }

    pub(super) fn take(&mut self, (ids, out): (Vec<i64>, Outcome)) {
        self.flight.in_flight -= 1;
        match out {
            Outcome::Copied(c) => {
                if self.batch.is_empty() {
                    self.batch_started = Instant::now();
                }
                self.batch.push(c);
            }
            Outcome::Deferred(why) => {
                Stats::add(&self.stats.deferred, ids.len() as u64);
                self.forget(&ids);
                self.to_record
                    .outcomes
                    .push((ids, FileState::Deferred, Some(why)));
            }
            Outcome::Failed(job, why) => {
                Stats::add(&self.stats.failed, ids.len() as u64);
                self.report_failure(&job.names[0].path, &why.text);
                self.forget(&ids);
                self.to_record
                    .outcomes
                    .push((ids, FileState::Failed, Some(why)));
            }
            Outcome::StagedOut(why) => {
                self.forget(&ids);
                self.to_record
                    .outcomes
                    .push((ids, FileState::StagedOut, Some(why)));
            }
            Outcome::Gone => {
                self.forget(&ids);
                self.to_record.outcomes.push((
                    ids,
                    FileState::Gone,
                    Some(Why::new(
                        Cause::Changed,
                        "vanished from SOURCE before its copy",
                    )),
                ));
            }
            Outcome::Aborted => {
                self.forget(&ids);
                self.to_record
                    .outcomes
                    .push((ids, FileState::Pending, None));
            }
        }
    }

    pub(super) fn forget(&mut self, ids: &[i64]) {
        for id in ids {
            self.flight.inflight_ids.remove(id);
        }
    }

    pub(super) fn report_failure(&mut self, path: &[u8], why: &str) {
        self.failures_printed += 1;
        if self.failures_printed <= 100 {
            self.say(format!("evac: {}: {why}", quoted(path)));
        } else if self.failures_printed == 101 {
            self.say("evac: more failures; see `evac status --list failed`".into());
        }
    }

    /// Take finished copies; commit a batch when it is full, old, or nothing else is coming.
    pub(super) fn pump(&mut self, block: bool) -> Result<bool> {
        self.watch()?;
        let mut progressed = false;
        if block && self.flight.in_flight > 0 && self.batch.len() < self.o.batch_files {
            if let Ok(r) = self.chan.res_rx.recv_timeout(Duration::from_millis(20)) {
                self.take(r);
                progressed = true;
            }
        }
        while let Ok(r) = self.chan.res_rx.try_recv() {
            self.take(r);
            progressed = true;
        }
        let full = self.batch.len() >= self.o.batch_files;
        // With step points armed, a test replays one schedule: batches end only when full or
        // when every copy dispatched is back, never by the clock.
        let timed = !steps::enabled();
        let idle = self.flight.in_flight == 0
            || (timed
                && self.flight.in_flight < self.flight.max_in_flight
                && self.chan.job_rx.is_empty());
        let old = timed && self.batch_started.elapsed() > Duration::from_secs(2);
        if !self.batch.is_empty() && (full || idle || old || self.stopping()) {
            self.commit_batch()?;
            progressed = true;
        } else if self.to_record.outcomes.len() >= 256
            || (!self.to_record.outcomes.is_empty() && self.flight.in_flight == 0)
        {
            self.flush_outcomes()?;
            progressed = true;
        }
        Ok(progressed)
    }

    pub(super) fn record_outcomes(&mut self) -> Result<()> {
        for (ids, ino) in std::mem::take(&mut self.to_record.kept_copies) {
            for id in ids {
                self.j.keep_copy(id, ino)?;
            }
        }
        for (ids, ino) in std::mem::take(&mut self.to_record.dropped_copies) {
            for id in ids {
                self.j.drop_copy(id, ino)?;
            }
        }
        for (ids, state, why) in std::mem::take(&mut self.to_record.outcomes) {
            for id in ids {
                self.j.set_state(id, state, why.as_ref())?;
                if matches!(state, FileState::Deferred | FileState::Failed) {
                    let text = why.as_ref().map_or("", |w| w.text.as_str());
                    let cause = why.as_ref().map(|w| w.cause);
                    self.j
                        .file_event(id, Some(self.run_id), state.as_str(), text, cause)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn flush_outcomes(&mut self) -> Result<()> {
        if self.to_record.outcomes.is_empty() {
            return Ok(());
        }
        let j = self.j.clone();
        let tx = j.tx()?;
        self.record_outcomes()?;
        tx.commit()
    }

    pub(super) fn heartbeat(&mut self) -> Result<()> {
        let bytes = self.stats.bytes_done.load(Ordering::Relaxed);
        let rate = self.rate.update(bytes);
        self.j.heartbeat(
            self.run_id,
            self.stats.files_done.load(Ordering::Relaxed),
            bytes,
            rate,
            "none",
        )?;
        self.last_heartbeat = Instant::now();
        self.record_decisions()
    }

    /// Wait until nothing is in flight and every copy is committed.
    pub(super) fn drain_all(&mut self) -> Result<()> {
        while self.flight.in_flight > 0 || !self.batch.is_empty() {
            self.pump(true)?;
        }
        self.settle_unfinished()
    }

    /// Dispatch jobs produced by `next` (pages of journal rows), keeping the pipeline full.
    pub(super) fn phase_pending(&mut self) -> Result<()> {
        let mut after = 0;
        loop {
            if self.stopping() {
                break;
            }
            while self.flight.in_flight >= self.flight.max_in_flight {
                self.pump(true)?;
            }
            let recs = self.j.files_in_state(FileState::Pending, after, 256)?;
            let Some(last) = recs.last() else { break };
            after = last.id;
            self.dispatch(single_name_jobs(recs))?;
            self.pump(false)?;
        }
        self.drain_all()
    }

    /// Hard-linked files, once the walk has found all their names: one job per inode. Pages end
    /// on an inode boundary (a partial last group is fetched again with the next page).
    pub(super) fn phase_hardlinks(&mut self) -> Result<()> {
        let mut after = (i64::MIN, i64::MIN);
        let mut limit = 1024i64;
        loop {
            if self.stopping() {
                break;
            }
            while self.flight.in_flight >= self.flight.max_in_flight {
                self.pump(true)?;
            }
            let mut recs = self.j.hardlink_pending(after, limit)?;
            let Some(last) = recs.last() else { break };
            let last_key = (last.dev, last.ino);
            let full_page = recs.len() as i64 == limit;
            if full_page {
                let split = recs
                    .iter()
                    .position(|r| (r.dev, r.ino) == last_key)
                    .unwrap_or(0);
                if split == 0 {
                    // One inode has more names than a page holds.
                    limit *= 2;
                    continue;
                }
                recs.truncate(split);
            }
            if let Some(l) = recs.last() {
                after = (l.dev as i64, l.ino as i64);
            }
            let mut jobs = Vec::new();
            let mut group: Vec<FileRec> = Vec::new();
            let j = self.j.clone();
            let tx = j.tx()?;
            for r in recs {
                if group
                    .first()
                    .is_some_and(|g| (g.dev, g.ino) != (r.dev, r.ino))
                {
                    self.hardlink_group(std::mem::take(&mut group), &mut jobs)?;
                }
                group.push(r);
            }
            if !group.is_empty() {
                self.hardlink_group(group, &mut jobs)?;
            }
            // The groups' records first: dispatch commits the copying states on its own.
            tx.commit()?;
            self.dispatch(jobs)?;
            if !full_page {
                break;
            }
            self.pump(false)?;
        }
        self.drain_all()
    }

    pub(super) fn hardlink_group(
        &mut self,
        group: Vec<FileRec>,
        jobs: &mut Vec<Job>,
    ) -> Result<()> {
        if group.iter().any(|r| r.linked_ino.is_some()) {
            // A name's old copy still stands at DEST (see phase_pending): the group waits whole.
            return Ok(());
        }
        let nlink = group.iter().map(|r| r.nlink).max().unwrap_or(1);
        if (group.len() as u64) < nlink {
            let why = format!(
                "hard-linked: {} of its {} names are outside SOURCE; relocating would split the file",
                nlink - group.len() as u64,
                nlink
            );
            for r in &group {
                self.j.set_state(
                    r.id,
                    FileState::Skipped,
                    Some(&Why::new(Cause::HardLinks, why.clone())),
                )?;
            }
            return Ok(());
        }
        jobs.push(Job { names: group });
        Ok(())
    }

    pub(super) fn requeue_deferred(&mut self) -> Result<bool> {
        if !self.retry_worthwhile() {
            return Ok(false);
        }
        let n = self.j.requeue_deferred()?;
        if n == 0 {
            return Ok(false);
        }
        self.j.log(
            Some(self.run_id),
            "info",
            &format!("retrying {n} deferred files"),
        )?;
        let until = Instant::now() + self.o.retry_delay;
        while Instant::now() < until && !self.stopping() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stats.deferred.store(0, Ordering::Relaxed);
        Ok(true)
    }
}

/// Jobs for the pending files of one name. Hard-linked files go as groups (`hardlink_group`);
/// a new file where a link was waits while the old copy is still at its DEST path: that copy may
/// belong to a link renamed elsewhere, and resync moves it to the trash once no walk has seen a
/// link naming it.
fn single_name_jobs(recs: Vec<FileRec>) -> Vec<Job> {
    recs.into_iter()
        .filter(|r| r.nlink <= 1 && r.linked_ino.is_none())
        .map(|r| Job { names: vec![r] })
        .collect()
}
