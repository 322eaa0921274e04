//! walsync's own checkpoints: PASSIVE past `min_checkpoint_pages`, behind a
//! writer-lock barrier; TRUNCATE past `truncate_checkpoint_pages`, once
//! every frame is stored.
//!
//! The checkpoint window is where replicators lose data: a commit that
//! lands after the last ship but before the checkpoint backfills it,
//! followed by a WAL restart, is gone from the WAL unseen. Each mode closes
//! that window its own way (see the functions). While a checkpoint's file is
//! not stored yet, the saved state says so (`checkpointing`), so that a
//! restart after a crash can tell why it finds the WAL restarted.

use super::build::Incremental;
use super::shipper::{Cause, Continuity, Shipper};
use crate::error::Result;
use crate::event::Event;
use crate::wal;
use std::time::{Duration, Instant};

/// Which of walsync's checkpoints ran.
#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    Passive,
    Truncate,
}

impl Shipper {
    /// Number of WAL frames past the last checkpoint, as shipped.
    fn shipped_wal_frames(&self) -> u64 {
        let Some(s) = self.state() else { return 0 };
        let base = match self.last_checkpoint {
            Some((salt1, offset)) if salt1 == s.wal_salt1 => offset,
            _ => wal::HEADER_SIZE,
        };
        s.wal_offset.saturating_sub(base) / (wal::FRAME_HEADER_SIZE + u64::from(self.page_size))
    }

    /// Remembers the WAL position a checkpoint covered: the end of the batch
    /// built for it when that is still uploading, else the shipped position.
    fn note_checkpoint(&mut self, mode: Checkpoint, wal_pages: u64) {
        let at = match &self.pending {
            Some(batch) => Some(&batch.new_state),
            None => self.state(),
        };
        self.last_checkpoint = at.map(|s| (s.wal_salt1, s.wal_offset));
        // The tally's index is the order of `Tally::checkpoints`.
        let (mode, setting, index) = match mode {
            Checkpoint::Passive => ("PASSIVE", "min_checkpoint_pages", 0),
            Checkpoint::Truncate => ("TRUNCATE", "truncate_checkpoint_pages", 1),
        };
        self.health.tally.checkpoints[index] += 1;
        self.health.changed = true;
        self.emit(Event::Checkpointed {
            db: self.name.clone(),
            mode,
            wal_pages,
            setting,
        });
    }

    /// Saves the state with `checkpointing` set (or cleared).
    fn mark_checkpointing(&self, on: bool) -> Result<()> {
        match self.state() {
            Some(s) => {
                let mut s = s.clone();
                s.checkpointing = on;
                self.state_dir.save(&s)
            }
            None => Ok(()),
        }
    }

    /// Runs a checkpoint when the WAL is past a threshold and everything in
    /// it is shipped or built. Returns the batch built for it, which the
    /// caller uploads like any other.
    pub fn maybe_checkpoint(&mut self, now_ms: i64) -> Result<Option<&super::build::Batch>> {
        if self.pending.is_some() || self.state().is_none() || self.source.is_none() {
            return Ok(None);
        }
        let ran = self.checkpoint_if_due(now_ms);
        self.page = Vec::new();
        self.pagesums.release();
        // A TRUNCATE checkpoint stores what it ships itself; a failed upload
        // of it waits for the normal retry.
        Ok(if ran? { self.pending.as_ref() } else { None })
    }

    /// The checkpoint [`Shipper::maybe_checkpoint`] runs, if one is due;
    /// `true` when it built a batch for the caller to upload.
    fn checkpoint_if_due(&mut self, now_ms: i64) -> Result<bool> {
        let frames = self.shipped_wal_frames();
        if frames >= self.settings.truncate_checkpoint_pages {
            self.checkpoint_truncate(now_ms, frames).map(|()| false)
        } else if frames >= self.settings.min_checkpoint_pages {
            if let Err(e) = self.checkpoint_passive(now_ms, frames) {
                // A batch built before the failure must still be uploaded.
                if self.pending.is_none() {
                    return Err(e);
                }
                self.health.count_error(e.error_class());
                self.emit(Event::CheckpointFailed {
                    db: self.name.clone(),
                    error: e.to_string(),
                });
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// PASSIVE checkpoint behind a writer-lock barrier: build (not upload)
    /// what landed before the barrier, drop the read transaction,
    /// checkpoint, take it again, release the barrier. The application waits
    /// only for the local work; the batch is uploaded after the barrier.
    ///
    /// Why that loses nothing: the batch's spool file holds every frame up to
    /// the WAL end, so a WAL restart after the barrier overwrites nothing
    /// unbuilt; the shipped position reaches that end when the batch is
    /// stored, and until then nothing else is built. If walsync dies before
    /// the upload, the next start finds the replica behind a restarted WAL
    /// and ships the pages that changed.
    fn checkpoint_passive(&mut self, now_ms: i64, frames: u64) -> Result<()> {
        let Some(_barrier) = self.source()?.barrier(Duration::from_millis(200))? else {
            return Ok(()); // a long application write; try at the next poll
        };
        match self.build_incremental(now_ms)? {
            Incremental::Nothing => {}
            Incremental::Reset => {
                self.continuity = Continuity::NeedsDiff(self.reset_cause());
                return Ok(());
            }
            Incremental::Batch(batch) => {
                self.pending = Some(*batch);
                self.mark_checkpointing(true)?;
            }
        }
        let checkpointed = self.source_mut()?.checkpoint("PASSIVE");
        self.begin_new_read()?;
        checkpointed?;
        self.note_checkpoint(Checkpoint::Passive, frames);
        // Under the barrier nothing was appended: once the batch is stored
        // (and nothing is built before), the position is the WAL end.
        self.continuity = Continuity::Covered;
        Ok(())
    }

    /// TRUNCATE checkpoint (emergency size): needs the writer lock itself, so
    /// no barrier. `data_version` is read once the long read transaction is
    /// dropped (inside it the value would not move); commits that landed
    /// before that are still in the WAL and are shipped next; a commit after
    /// it may have been truncated away unseen, so it is answered with a diff.
    fn checkpoint_truncate(&mut self, now_ms: i64, frames: u64) -> Result<()> {
        if !self.ship_now(now_ms)? {
            return Ok(());
        }
        self.source_mut()?.end_read()?;
        let before = self.source()?.data_version()?;
        if !self.ship_now(now_ms)? {
            return self.begin_new_read();
        }
        self.mark_checkpointing(true)?;
        let (busy, _, _) = self.source_mut()?.checkpoint("TRUNCATE")?;
        self.begin_new_read()?;
        self.note_checkpoint(Checkpoint::Truncate, frames);
        let after = self.source()?.data_version()?;
        if !busy && before != after {
            self.continuity = Continuity::NeedsDiff(Cause::CommitDuringTruncate);
        } else {
            self.continuity = Continuity::Covered;
            self.mark_checkpointing(false)?;
        }
        Ok(())
    }

    /// Builds and stores (synchronously) whatever the WAL holds beyond the
    /// shipped position. `false` when the upload failed (the batch stays
    /// pending for the normal retry path).
    fn ship_now(&mut self, now_ms: i64) -> Result<bool> {
        match self.build_incremental(now_ms)? {
            Incremental::Nothing => Ok(true),
            Incremental::Reset => {
                self.continuity = Continuity::NeedsDiff(self.reset_cause());
                Ok(false)
            }
            Incremental::Batch(batch) => {
                let stored = batch.request().upload(self.storage.as_ref());
                self.pending = Some(*batch);
                match stored {
                    Ok(()) => {
                        self.uploaded()?;
                        Ok(true)
                    }
                    Err(e) => {
                        // Outside the pollers' view of the circuit: this
                        // retry keeps its own backoff.
                        let retry_in = self.upload_failed(Instant::now(), u64::MAX);
                        self.emit(Event::UploadFailed {
                            db: self.name.clone(),
                            error: format!("upload before a checkpoint: {e}"),
                            class: e.error_class(),
                            retry_in,
                        });
                        Ok(false)
                    }
                }
            }
        }
    }
}
