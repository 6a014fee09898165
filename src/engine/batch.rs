//! Committing a batch of copies: one syncfs, links made and recorded with the placement, final
//! names at DEST, the swaps, one syncfs of SOURCE, the relocations recorded; the originals go
//! after the next batch's syncfs.

use super::*;

impl Runner {
    /// A copy that will not be relocated this time: remove what it left at DEST, count it, and
    /// queue its state (with the reason) for the next journal commit.
    pub(super) fn give_up(&mut self, c: &Copied, state: FileState, why: Why) {
        protocol::discard(&self.ctx, c, false);
        let ids: Vec<i64> = c.names.iter().map(|n| n.rec.id).collect();
        let put_back = c.put_back();
        if put_back.iter().any(protocol::PutBack::keeps_copy) {
            // The copy stays at DEST as this path's linked copy: resync gives it to a link that
            // names it, or to the trash once walks show no link names it.
            self.to_record
                .kept_copies
                .push((ids.clone(), c.dst_st.st_ino));
        }
        let why = if put_back.is_empty() {
            why
        } else {
            protocol::put_back_reason(why, c)
        };
        match state {
            FileState::Failed => {
                Stats::add(&self.stats.failed, ids.len() as u64);
                self.report_failure(&c.names[0].rec.path, &why.text);
            }
            FileState::Deferred => Stats::add(&self.stats.deferred, ids.len() as u64),
            _ => {}
        }
        self.forget(&ids);
        self.to_record.outcomes.push((ids, state, Some(why)));
    }

    /// A recorded relocation whose originals went back: the journal must stop naming the copy
    /// that `give_up` removes (unless a link may still name it), or the file would wait as if a
    /// link still needed it.
    pub(super) fn give_up_recorded(&mut self, c: &Copied, why: Why) {
        if !c.put_back().iter().any(protocol::PutBack::keeps_copy) {
            let ids = c.names.iter().map(|n| n.rec.id).collect();
            self.to_record.dropped_copies.push((ids, c.dst_st.st_ino));
        }
        self.give_up(c, FileState::Deferred, why);
    }

    /// DEST could not be made durable: put the unfinished batch's originals back.
    pub(super) fn unswap_unfinished(&mut self, why: &str) {
        for c in std::mem::take(&mut self.unfinished) {
            protocol::unswap(&c, why);
            self.give_up_recorded(&c, Why::new(Cause::Error, why));
        }
    }

    /// Remove the originals of swapped files whose DEST names a syncfs has since made durable.
    pub(super) fn finish_unfinished(&mut self) {
        let items = std::mem::take(&mut self.unfinished);
        let results = each_in_parallel(items, protocol::finish);
        for (c, r) in results {
            let ids: Vec<i64> = c.names.iter().map(|n| n.rec.id).collect();
            match r {
                Ok(()) => {
                    Stats::add(&self.stats.files_done, ids.len() as u64);
                    Stats::add(&self.stats.bytes_done, c.bytes);
                }
                Err(why) => self.give_up_recorded(&c, Why::new(Cause::Error, why)),
            }
            self.forget(&ids);
        }
    }

    /// Durability, placement and swap for a batch of copies (the per-file protocol's durability, placement and swap steps: see `protocol`).
    /// One syncfs per batch: it makes this batch's data durable and, with it, the previous
    /// batch's DEST names, so the previous batch's originals are removed right after it.
    pub(super) fn commit_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let ctx = self.ctx.clone();
        self.prof.batches += 1;
        let mut t = Instant::now();
        // 1. Data and temporary names of this batch, DEST names of the last one, on disk.
        if let Err(e) = self.sync_dest()? {
            let why = format!("make DEST durable (syncfs): {e}");
            self.say(format!("evac: {why}"));
            self.unswap_unfinished(&why);
            for c in batch {
                self.give_up(&c, FileState::Failed, Why::new(Cause::Error, why.clone()));
            }
            return self.flush_outcomes();
        }
        self.prof.sync1 += t.elapsed();
        t = Instant::now();
        self.finish_unfinished();
        self.prof.finish += t.elapsed();
        t = Instant::now();
        // 2. Each name's link beside its original, then each copy's DEST inode and link
        // recorded before its final name exists, so that recovery knows both.
        let mut batch = batch;
        let made: Vec<_> = batch
            .par_iter_mut()
            .map(|c| protocol::make_links(&ctx, c))
            .collect();
        let mut linked = Vec::with_capacity(batch.len());
        for (c, r) in batch.into_iter().zip(made) {
            match r {
                Ok(()) => linked.push(c),
                Err(why) => self.give_up(&c, FileState::Failed, Why::new(Cause::Error, why)),
            }
        }
        let batch = linked;
        let j = self.j.clone();
        let tx = j.tx()?;
        self.record_outcomes()?;
        for c in &batch {
            for n in &c.names {
                self.j.mark_placed(
                    n.rec.id,
                    &c.hash,
                    c.dst_st.st_ino,
                    &c.st,
                    (n.link_ino, n.link_handle.as_deref()),
                )?;
            }
        }
        tx.commit()?;
        self.prof.placed_tx += t.elapsed();
        t = Instant::now();
        // 3. Final names at DEST.
        let placed = each_in_parallel(batch, |c| protocol::place(&ctx, c));
        let mut ok = Vec::with_capacity(placed.len());
        for (c, r) in placed {
            let r = match r {
                Err(protocol::PlaceFault::Conflict) if self.release_stale_name(&c)? => {
                    protocol::place(&ctx, &c)
                }
                r => r,
            };
            match r {
                Ok(()) => ok.push(c),
                // place() already removed what it had put at DEST.
                Err(why) => self.give_up_placing(&c, why),
            }
        }
        self.prof.place += t.elapsed();
        t = Instant::now();
        // 4. Swap. Without leases, one /proc scan for the whole batch finds writers.
        let writers = if ok.iter().any(|c| !c.src.leased) {
            if !self.notes_logged.0 {
                self.notes_logged.0 = true;
                self.j.log(Some(self.run_id), "warn", "leases unavailable for some files: scanning /proc for writers before each batch's swap")?;
            }
            Some(busy::open_for_writing(ctx.src_dev))
        } else {
            None
        };
        let swaps: Vec<Swap> = ok
            .into_par_iter()
            .map(|c| protocol::swap(&ctx, c, writers.as_ref()))
            .collect();
        let mut swapped = Vec::with_capacity(swaps.len());
        for s in swaps {
            match s {
                Swap::Swapped(c) => swapped.push(c),
                Swap::Deferred(c, why) => self.give_up(&c, FileState::Deferred, why),
                Swap::Failed(c, why) => self.give_up(&c, FileState::Failed, why),
            }
        }
        if !swapped.is_empty() {
            if let Some(d) = pause_after_swap() {
                std::thread::sleep(d);
            }
        }
        if ctx.no_exchange_seen.load(Ordering::Relaxed) && !self.notes_logged.1 {
            self.notes_logged.1 = true;
            self.j.log(Some(self.run_id), "warn", "RENAME_EXCHANGE unsupported on SOURCE: swapping by rename with the original kept in an attic until checked")?;
        }
        // The swaps (and, on one filesystem, the DEST names) on disk before the journal says
        // relocated: its records are file data that can reach the disk before the filesystem
        // commits these renames (even within the commit's own fsync), or live on another disk.
        if !swapped.is_empty() {
            steps::at(Step::SyncSource, b"");
            if let Err(e) = fsx::syncfs(ctx.src_root.as_fd()) {
                self.unfinished = std::mem::take(&mut swapped);
                self.unswap_unfinished(&format!("make the swaps durable (syncfs SOURCE): {e}"));
            }
        }
        self.prof.swap += t.elapsed();
        t = Instant::now();
        // 5. Record the relocations; the originals go after the next syncfs. A swap a lease
        // break has put back since is not recorded.
        let (swapped, undone): (Vec<_>, Vec<_>) =
            swapped.into_iter().partition(|c| c.put_back().is_empty());
        for c in undone {
            let why = c
                .swap
                .as_ref()
                .and_then(|s| s.lock().why.clone())
                .unwrap_or_default();
            // A lease break (a user opening the file to write) put the original back.
            self.give_up(&c, FileState::Deferred, Why::new(Cause::Busy, why));
        }
        let j = self.j.clone();
        let tx = j.tx()?;
        self.record_outcomes()?;
        for c in &swapped {
            for n in &c.names {
                self.j.mark_relocated(
                    n.rec.id,
                    self.run_id,
                    &c.hash,
                    c.dst_st.st_ino,
                    (n.link_ino, n.link_handle.as_deref()),
                    &c.st,
                )?;
            }
        }
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for c in &swapped {
            for n in &c.names {
                self.touch_ancestors(&n.rec.path, &mut dirs)?;
            }
        }
        self.heartbeat()?;
        tx.commit()?;
        self.prof.reloc_tx += t.elapsed();
        self.unfinished = swapped;
        Ok(())
    }

    /// Make the last batch's DEST names durable and remove its originals.
    pub(super) fn settle_unfinished(&mut self) -> Result<()> {
        if self.unfinished.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sync_dest()? {
            self.unswap_unfinished(&format!("make DEST durable (syncfs): {e}"));
        } else {
            self.finish_unfinished();
        }
        self.flush_outcomes()
    }
}

/// Run one step of the protocol on every copy of a batch at once (each is independent), keeping
/// each copy with its result.
pub(super) fn each_in_parallel<F, E>(
    items: Vec<Box<Copied>>,
    f: F,
) -> Vec<(Box<Copied>, std::result::Result<(), E>)>
where
    F: Fn(&Copied) -> std::result::Result<(), E> + Sync,
    E: Send,
{
    items
        .into_par_iter()
        .map(|c| {
            let r = f(&c);
            (c, r)
        })
        .collect()
}

/// Lets tests hold a run between a batch's swaps and their record in the journal (milliseconds),
/// the window in which a user may rename, delete or replace a fresh link before a crash.
pub(super) fn pause_after_swap() -> Option<Duration> {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var("EVAC_TEST_PAUSE_AFTER_SWAP")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}
