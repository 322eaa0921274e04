//! The `watch` engine: a fixed pool of poller threads shares all databases,
//! a small uploader pool stores what they build, bounded crossbeam channels
//! run between them and acknowledgements flow back. No thread per database.
//!
//! Each poller owns a shard of [`Shipper`]s and wakes at the next due poll or
//! when an acknowledgement arrives. A shipper has at most one batch in flight.
//! When the stop token is cancelled (the CLI does it on the first SIGINT or
//! SIGTERM) the pollers ship what is committed, wait (up to a timeout) for
//! the uploads and release their databases.

mod build;
mod checkpoint;
mod pagesums;
mod shipper;
pub mod source;
mod state;

pub use build::{Batch, BatchKind, UploadRequest};
pub use shipper::{Cause, Settings, Shipper};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::fsutil;
use crate::names::NamedDb;
use crate::storage::Storage;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How `watch` runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub pollers: usize,
    pub uploaders: usize,
    /// How long a shutdown waits for uploads in flight.
    pub shutdown_timeout: Duration,
}

impl Default for WatchOptions {
    /// `min(4, cores)` pollers, 4 uploaders, 30 s to stop.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        WatchOptions {
            pollers: cores.min(4),
            uploaders: 4,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// An upload handed from a poller to the uploader pool.
struct Job {
    poller: usize,
    db: usize,
    batch: UploadRequest,
}

/// An uploader's answer.
struct Ack {
    db: usize,
    result: Result<Stored>,
}

/// What an upload stored.
struct Stored {
    key: String,
    txid: u64,
    bytes: u64,
}

/// Replicates `dbs` until `stop` is cancelled (the CLI cancels it on the
/// first SIGINT/SIGTERM), then ships what is committed and returns. Errors
/// when a database cannot be opened, or when something committed could not
/// be stored by the shutdown timeout (nothing is lost locally: the WAL
/// keeps it and a restart ships it).
pub fn watch(
    storage: Arc<dyn Storage>,
    dbs: Vec<(NamedDb, Settings)>,
    options: &WatchOptions,
    stop: &CancelToken,
    events: Arc<dyn EventSink>,
) -> Result<()> {
    if dbs.is_empty() {
        return Err(Error::Usage(
            "no databases to watch: name them on the command line or in [[databases]] of the config file".into(),
        ));
    }
    let pollers = options.pollers.clamp(1, dbs.len());
    let uploaders = options.uploaders.max(1);
    let shippers = open_all(&storage, dbs, pollers, &events)?;
    events.emit(Event::Watching {
        databases: shippers.iter().map(Vec::len).sum(),
        replica: storage.describe(),
        pollers,
        uploaders,
    });
    let (job_tx, job_rx) = bounded::<Job>(uploaders * 2);
    let (ack_txs, ack_rxs): (Vec<_>, Vec<_>) = (0..pollers).map(|_| unbounded::<Ack>()).unzip();
    let uploader_threads: Vec<_> = (0..uploaders)
        .map(|_| {
            let (rx, acks, storage) = (job_rx.clone(), ack_txs.clone(), Arc::clone(&storage));
            thread::spawn(move || upload_loop(storage.as_ref(), &rx, &acks))
        })
        .collect();
    drop((job_rx, ack_txs));
    let poller_threads: Vec<_> = shippers
        .into_iter()
        .zip(ack_rxs)
        .enumerate()
        .map(|(i, (shard, acks))| {
            let (jobs, stop, timeout) = (job_tx.clone(), stop.clone(), options.shutdown_timeout);
            thread::spawn(move || Poller::new(i, shard, jobs, acks).run(&stop, timeout))
        })
        .collect();
    drop(job_tx);
    let mut clean = true;
    for t in poller_threads {
        clean &= t.join().unwrap_or(false);
    }
    for t in uploader_threads {
        let _ = t.join();
    }
    events.emit(Event::Stopped { clean });
    if clean {
        Ok(())
    } else {
        Err(Error::Other(
            "stopped before everything committed was stored (see the errors above); nothing is lost locally: a restart ships the rest".into(),
        ))
    }
}

/// Opens every database in parallel (one thread per shard), refusing the
/// whole run when one of them cannot be replicated.
fn open_all(
    storage: &Arc<dyn Storage>,
    dbs: Vec<(NamedDb, Settings)>,
    pollers: usize,
    events: &Arc<dyn EventSink>,
) -> Result<Vec<Vec<Shipper>>> {
    let mut shards: Vec<Vec<(NamedDb, Settings)>> = (0..pollers).map(|_| Vec::new()).collect();
    for (i, db) in dbs.into_iter().enumerate() {
        shards[i % pollers].push(db);
    }
    let opened: Vec<Result<Vec<Shipper>>> = thread::scope(|scope| {
        let handles: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                scope.spawn(move || {
                    shard
                        .into_iter()
                        .map(|(db, settings)| {
                            let (storage, events) = (Arc::clone(storage), Arc::clone(events));
                            Shipper::open(&db.path, &db.name, storage, settings, events)
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Other("a database failed to open".into())))
            })
            .collect()
    });
    opened.into_iter().collect()
}

struct Poller {
    index: usize,
    shippers: Vec<Shipper>,
    next_poll: Vec<Instant>,
    /// Whether the last poll of each database failed (nothing built: what
    /// it had to ship is still waiting).
    failed: Vec<bool>,
    jobs: Sender<Job>,
    acks: Receiver<Ack>,
}

impl Poller {
    fn new(index: usize, shippers: Vec<Shipper>, jobs: Sender<Job>, acks: Receiver<Ack>) -> Poller {
        let now = Instant::now();
        Poller {
            index,
            next_poll: vec![now; shippers.len()],
            failed: vec![false; shippers.len()],
            shippers,
            jobs,
            acks,
        }
    }

    /// Polls until the first signal, then flushes. Returns whether every
    /// batch was stored before the timeout.
    fn run(mut self, stop: &CancelToken, shutdown_timeout: Duration) -> bool {
        while !stop.is_cancelled() {
            self.tick(Instant::now(), true);
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
            self.next_poll.iter_mut().for_each(|t| *t = now);
            self.tick(now, false);
            if !self.unfinished() {
                break;
            }
            self.wait_for_ack(Duration::from_millis(100));
        }
        let clean = !self.unfinished();
        for s in self.shippers {
            let (db, events) = (s.name.clone(), Arc::clone(&s.events));
            if let Err(e) = s.close() {
                events.emit(Event::CloseFailed {
                    db,
                    error: e.to_string(),
                });
            }
        }
        clean
    }

    fn unfinished(&self) -> bool {
        self.shippers.iter().any(Shipper::has_pending) || self.failed.iter().any(|&f| f)
    }

    fn until_next_poll(&self) -> Duration {
        let now = Instant::now();
        let next = self.next_poll.iter().min().copied().unwrap_or(now);
        next.saturating_duration_since(now)
            .min(Duration::from_millis(250))
            .max(Duration::from_millis(1))
    }

    fn wait_for_ack(&mut self, wait: Duration) {
        match self.acks.recv_timeout(wait) {
            Ok(ack) => self.handle_ack(ack),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(ack) = self.acks.try_recv() {
            self.handle_ack(ack);
        }
    }

    fn handle_ack(&mut self, ack: Ack) {
        let s = &mut self.shippers[ack.db];
        let db = s.name.clone();
        let event = match ack.result {
            // The next poll keeps its schedule: one file per interval at
            // most, whatever landed during the upload goes in it.
            Ok(stored) => match s.uploaded() {
                Ok(()) => Event::Stored {
                    db,
                    key: stored.key,
                    txid: stored.txid,
                    bytes: stored.bytes,
                },
                Err(e) => Event::StateNotSaved {
                    db,
                    error: e.to_string(),
                },
            },
            Err(e) => Event::UploadFailed {
                db,
                error: e.to_string(),
                retry_in: s.upload_failed(Instant::now()),
            },
        };
        s.events.emit(event);
    }

    fn resend_due(&mut self, now: Instant) {
        for db in 0..self.shippers.len() {
            if self.shippers[db].retry_due(now) {
                if let Some(req) = self.shippers[db].take_retry().map(Batch::request) {
                    self.send(db, req);
                }
            }
        }
    }

    /// Polls the databases that are due (and resends failed uploads);
    /// `checkpoints` allows walsync's own checkpoints (not while stopping).
    fn tick(&mut self, now: Instant, checkpoints: bool) {
        self.resend_due(now);
        let now_ms = fsutil::now_ms();
        for db in 0..self.shippers.len() {
            if now < self.next_poll[db] || self.shippers[db].has_pending() {
                continue;
            }
            let s = &mut self.shippers[db];
            self.next_poll[db] = now + s.settings().sync_interval;
            // A checkpoint builds what the WAL holds under its barrier and
            // hands that batch over for upload after it; it is tried before
            // polling so a database that is never idle gets one.
            if checkpoints {
                match s.maybe_checkpoint(now_ms).map(|b| b.map(Batch::request)) {
                    Ok(Some(req)) => {
                        self.failed[db] = false;
                        self.send(db, req);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => s.events.emit(Event::CheckpointFailed {
                        db: s.name.clone(),
                        error: e.to_string(),
                    }),
                }
            }
            let built = s.poll(now_ms).map(|b| b.map(Batch::request));
            self.failed[db] = built.is_err();
            match built {
                Ok(Some(req)) => self.send(db, req),
                Ok(None) => {}
                Err(e) => {
                    let retry_in = s.settings().sync_interval.max(Duration::from_secs(5));
                    self.next_poll[db] = now + retry_in;
                    s.events.emit(Event::PollFailed {
                        db: s.name.clone(),
                        error: e.to_string(),
                        retry_in,
                    });
                }
            }
        }
    }

    fn send(&mut self, db: usize, batch: UploadRequest) {
        let job = Job {
            poller: self.index,
            db,
            batch,
        };
        if self.jobs.send(job).is_err() {
            let s = &self.shippers[db];
            s.events.emit(Event::UploadFailed {
                db: s.name.clone(),
                error: "the uploader pool is gone".into(),
                retry_in: Duration::ZERO,
            });
        }
    }
}

fn upload_loop(storage: &dyn Storage, jobs: &Receiver<Job>, acks: &[Sender<Ack>]) {
    for job in jobs {
        let result = job.batch.upload(storage).map(|()| Stored {
            key: job.batch.key.clone(),
            txid: job.batch.txid,
            bytes: job.batch.len,
        });
        let _ = acks[job.poller].send(Ack { db: job.db, result });
    }
}
