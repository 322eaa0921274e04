//! A poller thread: it owns a shard of [`Shipper`]s, polls each when its
//! sync interval is due, hands built batches to the uploaders and records
//! their acknowledgements. The fleet adds and removes databases through
//! [`Command`]s; a database whose file is gone is released on the spot.
//!
//! Slots are indexed, and an acknowledgement names its slot and the
//! generation of the shipper it was for, so a late answer for a released
//! database never lands on the one that took its slot.

use super::build::{Batch, UploadRequest};
use super::changes::{Changes, FULL_CHECK};
use super::circuit::{Circuit, Transition};
use super::compactor::StoredFile;
use super::shipper::{Settings, Shipper};
use super::status::Board;
use crate::backoff::Backoff;
use crate::cancel::CancelToken;
use crate::event::Event;
use crate::fsutil;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upload handed from a poller to the uploader pool.
pub(super) struct Job {
    pub poller: usize,
    pub slot: SlotId,
    pub batch: UploadRequest,
}

/// An uploader's answer.
pub(super) struct Ack {
    pub slot: SlotId,
    pub result: crate::error::Result<()>,
}

/// A slot and the generation of the shipper in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotId {
    index: usize,
    generation: u64,
}

/// What the fleet asks of a poller.
pub(super) enum Command {
    /// Replicate this database too.
    Add(Box<Shipper>),
    /// Stop replicating the database at this (absolute) path.
    Remove(PathBuf),
    /// Replicate the database at this path with these settings from now
    /// on (a reloaded config changed them).
    Retune { key: PathBuf, settings: Settings },
    /// Store a snapshot of the database named so, and answer with its TXID.
    Snapshot {
        name: String,
        reply: Sender<Result<u64, String>>,
    },
}

/// Polls due within this are made together: thousands of databases with
/// staggered schedules wake a poller at most every few milliseconds, not
/// once per database.
const COALESCE: Duration = Duration::from_millis(5);

/// Whether the poller runs or is stopping (then every database is polled
/// in full, and walsync runs no checkpoint of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Running,
    Stopping,
}

/// A database released by a poller, and why.
pub(super) enum Released {
    /// Its file is gone.
    Gone(PathBuf),
    /// The fleet asked.
    Removed(PathBuf),
}

struct Slot {
    shipper: Shipper,
    generation: u64,
    next_poll: Instant,
    /// The last poll failed (nothing built: what it had to ship still waits).
    failed: bool,
    /// Its folder is watched for changes (see [`super::changes`]).
    watched: bool,
    /// A change was reported since its last poll.
    changed: bool,
    /// When it was last polled in full.
    last_full: Instant,
}

/// Channels a poller talks through.
pub(super) struct Links {
    pub jobs: Sender<Job>,
    pub acks: Receiver<Ack>,
    pub commands: Receiver<Command>,
    pub released: Sender<Released>,
    pub board: Arc<Board>,
    /// The storage's health, shared by all pollers.
    pub circuit: Arc<Circuit>,
    /// The retry schedule every database starts with.
    pub upload_backoff: Backoff,
    /// Where stored files are told, when `watch` compacts.
    pub stored: Option<Sender<StoredFile>>,
}

pub(super) struct Poller {
    index: usize,
    slots: Vec<Option<Slot>>,
    generations: u64,
    links: Links,
    changes: Changes,
    /// Cleared when a full poll finds a change the kernel did not report
    /// (a file system inotify does not follow): every poll is full then.
    trust_changes: bool,
}

impl Poller {
    pub fn new(index: usize, shippers: Vec<Shipper>, links: Links) -> Poller {
        let mut p = Poller {
            index,
            slots: Vec::new(),
            generations: 0,
            links,
            changes: Changes::new(),
            trust_changes: true,
        };
        for s in shippers {
            p.add(s);
        }
        p
    }

    /// Polls until `stop`, then flushes. Returns whether every batch of the
    /// databases still there was stored before the timeout.
    pub fn run(mut self, stop: &CancelToken, shutdown_timeout: Duration) -> bool {
        while !stop.is_cancelled() {
            self.take_commands();
            self.tick(Instant::now(), Turn::Running);
            let wait = self.until_next_poll();
            self.wait_for_ack(wait);
        }
        // Shutdown: poll every database until none has anything left to ship
        // (a database whose upload was in flight is polled again once it is
        // stored: commits may have landed behind it; one whose poll failed
        // is tried again), or the timeout.
        let deadline = Instant::now() + shutdown_timeout;
        while Instant::now() < deadline {
            let now = Instant::now();
            self.live().for_each(|slot| slot.next_poll = now);
            self.tick(now, Turn::Stopping);
            if !self.unfinished() {
                break;
            }
            self.wait_for_ack(Duration::from_millis(100));
        }
        let clean = !self.unfinished();
        for slot in self.slots.into_iter().flatten() {
            close(slot.shipper);
        }
        clean
    }

    fn live(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().flatten()
    }

    fn add(&mut self, mut shipper: Shipper) {
        shipper.set_upload_backoff(self.links.upload_backoff.clone());
        self.generations += 1;
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        let slot = Slot {
            watched: self.changes.watch(i, &shipper.key),
            shipper,
            generation: self.generations,
            next_poll: Instant::now(),
            failed: false,
            changed: true,
            last_full: Instant::now(),
        };
        if i == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[i] = Some(slot);
        }
    }

    fn take_commands(&mut self) {
        while let Ok(command) = self.links.commands.try_recv() {
            match command {
                Command::Add(shipper) => self.add(*shipper),
                Command::Remove(key) => {
                    if let Some(i) = self.find(|s| s.key == key) {
                        self.release(i, Released::Removed(key));
                    }
                }
                Command::Retune { key, settings } => {
                    if let Some(i) = self.find(|s| s.key == key) {
                        self.retune(i, settings);
                    }
                }
                Command::Snapshot { name, reply } => match self.find(|s| s.name == name) {
                    Some(i) => {
                        if let Some(slot) = &mut self.slots[i] {
                            slot.shipper.request_snapshot(reply);
                            slot.next_poll = Instant::now();
                        }
                    }
                    None => {
                        let _ = reply.send(Err(format!("'{name}' is not watched here")));
                    }
                },
            }
        }
    }

    /// New settings for the database in slot `i`: its next poll comes at
    /// once, and from then on at its new interval.
    fn retune(&mut self, i: usize, settings: Settings) {
        if let Some(slot) = &mut self.slots[i] {
            let db = slot.shipper.name.clone();
            slot.shipper.settings = settings;
            slot.shipper.health.changed = true;
            slot.next_poll = Instant::now();
            slot.shipper.events.emit(Event::Retuned { db });
        }
    }

    fn find(&self, is: impl Fn(&Shipper) -> bool) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| is(&s.shipper)))
    }

    /// Takes the database out of its slot, closes it and tells the fleet.
    fn release(&mut self, i: usize, why: Released) {
        if let Some(slot) = self.slots[i].take() {
            self.changes.unwatch(i, &slot.shipper.key);
            self.links.board.remove(&slot.shipper.name);
            close(slot.shipper);
            let _ = self.links.released.send(why);
        }
    }

    fn unfinished(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.shipper.has_pending() || s.failed)
    }

    fn until_next_poll(&self) -> Duration {
        let now = Instant::now();
        let next = self.slots.iter().flatten().map(|s| s.next_poll).min();
        next.unwrap_or(now + Duration::from_millis(250))
            .saturating_duration_since(now)
            .min(Duration::from_millis(250))
            .max(COALESCE)
    }

    fn wait_for_ack(&mut self, wait: Duration) {
        match self.links.acks.recv_timeout(wait) {
            Ok(ack) => self.handle_ack(ack),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(ack) = self.links.acks.try_recv() {
            self.handle_ack(ack);
        }
    }

    fn handle_ack(&mut self, ack: Ack) {
        let now = Instant::now();
        // Every outcome counts for the circuit, a released database's too:
        // the outcome of its probe must always come back to it.
        let recoveries = self.links.circuit.recoveries();
        let transition = match &ack.result {
            Ok(()) => self.links.circuit.succeeded(now),
            Err(_) => self.links.circuit.failed(now),
        };
        let i = ack.slot.index;
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if slot.generation != ack.slot.generation {
            return; // for a database released since
        }
        let s = &mut slot.shipper;
        match transition {
            Transition::Recovered(after) => s.emit(Event::StorageBack { after }),
            Transition::Opened(failures) => s.emit(Event::StorageDown { failures }),
            Transition::None => {}
        }
        match ack.result {
            // The next poll keeps its schedule: one file per interval at
            // most, whatever landed during the upload goes in it.
            Ok(()) => {
                let stored = s.uploaded_and_report();
                if let (Some((file, time_ms)), Some(tx)) = (stored, &self.links.stored) {
                    let db = s.name.clone();
                    let _ = tx.send(StoredFile { db, file, time_ms });
                }
            }
            Err(e) if s.check_gone() => {
                // Its files are gone (a deleted tenant): nothing to retry.
                let key = s.key.clone();
                let _ = e;
                self.release(i, Released::Gone(key));
                return;
            }
            Err(e) => s.upload_failed_and_report(e, now, recoveries),
        }
        slot.shipper.publish(&self.links.board);
    }

    /// Sends the pending batches whose retry is due: by their backoff, or
    /// at once when storage recovered since they failed. While the circuit
    /// is open only its one probe goes out, taken by the first database
    /// with a retry waiting once the cooldown is over.
    fn resend_due(&mut self, now: Instant) {
        let recoveries = self.links.circuit.recoveries();
        for i in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[i] else {
                continue;
            };
            let s = &mut slot.shipper;
            // The circuit's probe is any waiting retry, due or not: storage
            // that came back is seen within a cooldown, not a backoff.
            let probe = s.retry_waiting() && self.links.circuit.wants_probe(now);
            let due = s.retry_after_recovery(recoveries) || s.retry_due(now) || probe;
            if due && self.links.circuit.allow(now) {
                if let Some(req) = slot.shipper.take_retry().map(Batch::request) {
                    let id = SlotId {
                        index: i,
                        generation: slot.generation,
                    };
                    self.send(id, req);
                }
            }
        }
    }

    /// Polls the databases that are due (and resends failed uploads).
    /// Running, a database the kernel reports unchanged is skipped; walsync
    /// runs its own checkpoints only then, not while stopping.
    fn tick(&mut self, now: Instant, turn: Turn) {
        self.resend_due(now);
        let slots = &mut self.slots;
        self.changes.drain(|i| {
            if let Some(Some(slot)) = slots.get_mut(i) {
                slot.changed = true;
            }
        });
        let now_ms = fsutil::now_ms();
        let checkpoints = turn == Turn::Running;
        for i in 0..self.slots.len() {
            let Some(slot) = &mut self.slots[i] else {
                continue;
            };
            if now + COALESCE < slot.next_poll || slot.shipper.has_pending() {
                continue;
            }
            slot.next_poll = now + slot.shipper.settings().sync_interval;
            let unreported = slot.watched && !slot.changed && self.trust_changes;
            let unchanged = unreported
                && now.duration_since(slot.last_full) < FULL_CHECK
                && slot.shipper.can_skip(now_ms);
            if turn == Turn::Running && unchanged {
                continue;
            }
            slot.changed = false;
            slot.last_full = now;
            let id = SlotId {
                index: i,
                generation: slot.generation,
            };
            let built = poll_one(slot, now, now_ms, checkpoints);
            if unreported && turn == Turn::Running && slot.shipper.saw_change {
                self.check_reported(i);
            }
            let Some(slot) = &mut self.slots[i] else {
                continue;
            };
            if slot.shipper.gone() {
                let key = slot.shipper.key.clone();
                self.release(i, Released::Gone(key));
                continue;
            }
            slot.shipper.publish(&self.links.board);
            if let Some(req) = built {
                self.send(id, req);
            }
        }
    }

    /// A full poll of slot `i` found its WAL changed with no event seen:
    /// unless the event is queued now (it is, from the moment of the write,
    /// when inotify follows the file system), stop trusting events.
    fn check_reported(&mut self, i: usize) {
        let mut reported = false;
        let slots = &mut self.slots;
        self.changes.drain(|s| {
            reported |= s == i;
            if let Some(Some(slot)) = slots.get_mut(s) {
                slot.changed = true;
            }
        });
        if reported {
            return;
        }
        self.trust_changes = false;
        if let Some(Some(slot)) = self.slots.get(i) {
            slot.shipper.emit(Event::DiscoveryFailed {
                error: format!(
                    "the kernel did not report a change to {} (a file system inotify does not follow?); polling every database in full from now on",
                    slot.shipper.path().display()
                ),
            });
        }
    }

    fn send(&mut self, slot: SlotId, batch: UploadRequest) {
        let job = Job {
            poller: self.index,
            slot,
            batch,
        };
        if let Err(e) = self.links.jobs.send(job) {
            if let Some(Some(s)) = self.slots.get(e.0.slot.index) {
                s.shipper.emit(Event::UploadFailed {
                    db: s.shipper.name.clone(),
                    error: "the uploader pool is gone".into(),
                    class: crate::error::ErrorClass::Other,
                    retry_in: Duration::ZERO,
                });
            }
        }
    }
}

/// One database's turn: walsync's own checkpoint when due (it builds what
/// the WAL holds under its barrier, so it is tried before polling: a
/// database that is never idle gets one), else a poll. Returns the batch to
/// upload, if any.
fn poll_one(
    slot: &mut Slot,
    now: Instant,
    now_ms: i64,
    checkpoints: bool,
) -> Option<UploadRequest> {
    let s = &mut slot.shipper;
    if checkpoints {
        match s.maybe_checkpoint(now_ms).map(|b| b.map(Batch::request)) {
            Ok(Some(req)) => {
                slot.failed = false;
                return Some(req);
            }
            Ok(None) => {}
            Err(e) => {
                s.health.count_error(e.error_class());
                s.emit(Event::CheckpointFailed {
                    db: s.name.clone(),
                    error: e.to_string(),
                })
            }
        }
    }
    match s.poll(now_ms).map(|b| b.map(Batch::request)) {
        Ok(built) => {
            slot.failed = false;
            built
        }
        Err(e) => {
            slot.failed = true;
            let retry_in = s.settings().sync_interval.max(Duration::from_secs(5));
            slot.next_poll = now + retry_in;
            s.poll_failed_and_report(e, retry_in, now_ms);
            None
        }
    }
}

fn close(shipper: Shipper) {
    let (db, events) = (shipper.name.clone(), Arc::clone(&shipper.events));
    if let Err(e) = shipper.close() {
        events.emit(Event::CloseFailed {
            db,
            error: e.to_string(),
        });
    }
}
