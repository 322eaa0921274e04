//! The `watch` engine: a fixed pool of poller threads shares all databases,
//! a small uploader pool stores what they build, bounded crossbeam channels
//! run between them and acknowledgements flow back. No thread per database.
//!
//! Each poller ([`poller`]) owns a shard of [`Shipper`]s and wakes at the
//! next due poll or when an acknowledgement arrives. A shipper has at most
//! one batch in flight. The calling thread keeps the fleet ([`fleet`]): it
//! rediscovers databases every `discover_interval` or when asked to reload,
//! and answers the control channel ([`control`]). When the stop token is
//! cancelled (the CLI does it on the first SIGINT or SIGTERM) the pollers
//! ship what is committed, wait (up to a timeout) for the uploads and
//! release their databases.

mod build;
mod changes;
mod checkpoint;
pub mod circuit;
mod compactor;
pub mod control;
mod fleet;
mod folders;
pub mod heartbeat;
pub mod identity;
mod inotify;
mod outage;
mod pagesums;
mod poller;
mod shipper;
pub mod source;
mod spool;
mod state;
pub mod status;
mod triggers;
mod validator;

pub use build::{Batch, BatchKind, UploadRequest};
pub use circuit::CircuitSettings;
pub use shipper::{Cause, Settings, Shipper};
pub use spool::{MEMORY_BUDGET as SPOOL_MEMORY_BUDGET, MEMORY_SPELL as SPOOL_MEMORY_SPELL};
pub use state::{kept_name, peek as peek_local_state, LocalState};
pub use status::{Board, DbStatus};

use crate::backoff::Backoff;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::monitor::metered::Metered;
use crate::monitor::webhook::Alerting;
use crate::monitor::{exposition, Metrics};
use crate::selection::Selection;
use crate::storage::Storage;
use control::Request;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use fleet::Fleet;
use poller::{Ack, Job, Links, Poller, Released};
use std::path::PathBuf;
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
    /// How often the config's globs are looked at again for new databases.
    pub discover_interval: Duration,
    /// Where the control channel listens (`walsync status`, `snapshot`).
    pub control_socket: Option<PathBuf>,
    /// The first and the longest delay before a failed upload is retried
    /// (`[retry] base_delay_ms`, `max_delay_ms`).
    pub upload_retry: (Duration, Duration),
    /// The storage circuit breaker (see [`circuit`]).
    pub circuit: CircuitSettings,
    /// Compact and apply this retention as files are stored (see
    /// [`compactor`]); `None` keeps every file.
    pub retention: Option<crate::compact::policy::Retention>,
    /// The dead-man's-switch heartbeat (see [`heartbeat`]), if one.
    pub heartbeat: Option<heartbeat::HeartbeatSettings>,
    /// Where Prometheus metrics are served (see [`crate::monitor`]), if
    /// anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where alerts are POSTed (see [`crate::monitor::webhook`]).
    pub webhooks: Vec<crate::monitor::webhook::Webhook>,
}

impl Default for WatchOptions {
    /// `min(4, cores)` pollers, 4 uploaders, 30 s to stop, discovery every
    /// 10 s, no control channel.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        WatchOptions {
            pollers: cores.min(4),
            uploaders: 4,
            shutdown_timeout: Duration::from_secs(30),
            discover_interval: Duration::from_secs(10),
            control_socket: None,
            upload_retry: crate::backoff::UPLOAD_DELAYS,
            circuit: CircuitSettings::default(),
            retention: None,
            heartbeat: None,
            metrics_addr: None,
            webhooks: Vec::new(),
        }
    }
}

/// What the caller steers a running `watch` with.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Cancelled: ship what is committed and stop.
    pub stop: CancelToken,
    /// Set: read the config file again and rediscover (SIGHUP).
    pub reload: crate::cancel::Trigger,
    /// The status board the watch keeps (what `walsync status` shows): an
    /// embedder reads it with [`Board::all`].
    pub board: Arc<Board>,
    /// Set once every database given at start is open and replication is
    /// under way (`--exec` starts its child then; the Python package
    /// returns from `watch()`).
    pub started: crate::cancel::Trigger,
}

/// Replicates the databases of `selection`, and those that appear in it
/// while it runs, until `controls.stop` is cancelled; then ships what is
/// committed and returns. Errors when a database given by path cannot be
/// opened at start, when two databases would share a name, or when
/// something committed could not be stored by the shutdown timeout
/// (nothing is lost locally: the WAL keeps it and a restart ships it).
pub fn watch(
    storage: Arc<dyn Storage>,
    selection: Selection,
    options: &WatchOptions,
    controls: &Controls,
    events: Arc<dyn EventSink>,
) -> Result<()> {
    let pollers = options.pollers.max(1);
    let uploaders = options.uploaders.max(1);
    // Bound first: a port in use stops `watch` before anything starts.
    let metrics_listener = options
        .metrics_addr
        .map(crate::monitor::endpoint::bind)
        .transpose()?;
    let metrics = Arc::new(Metrics::default());
    let storage: Arc<dyn Storage> = Arc::new(Metered::new(storage, Arc::clone(&metrics)));
    // Cancelled once everything else stopped: the endpoint answers and the
    // webhooks deliver until then.
    let finish = CancelToken::new();
    let (events, alerting) = if options.webhooks.is_empty() {
        (events, None)
    } else {
        let (sink, thread) = Alerting::start(
            options.webhooks.clone(),
            events,
            Arc::clone(&metrics),
            finish.clone(),
        );
        (sink as Arc<dyn EventSink>, Some(thread))
    };
    let mut fleet = Fleet::new(Arc::clone(&storage), selection, Arc::clone(&events));
    let shards = fleet.open_initial(pollers, pollers.max(8))?;
    if fleet.len() == 0 && fleet.selection.config().databases.is_empty() {
        return Err(Error::Usage(
            "no databases to watch: name them on the command line or in [[databases]] of the config file".into(),
        ));
    }
    events.emit(Event::Watching {
        databases: fleet.len(),
        replica: storage.describe(),
        pollers,
        uploaders,
    });
    controls.started.set();
    let board = Arc::clone(&controls.board);
    let circuit = Arc::new(circuit::Circuit::new(options.circuit));
    let (job_tx, job_rx) = bounded::<Job>(uploaders * 2);
    let queue = job_rx.clone();
    let (ack_txs, ack_rxs): (Vec<_>, Vec<_>) = (0..pollers).map(|_| unbounded::<Ack>()).unzip();
    let uploader_threads: Vec<_> = (0..uploaders)
        .map(|_| {
            let (rx, acks, storage) = (job_rx.clone(), ack_txs.clone(), Arc::clone(&storage));
            thread::spawn(move || upload_loop(storage.as_ref(), &rx, &acks))
        })
        .collect();
    drop((job_rx, ack_txs));
    let (released_tx, released_rx) = unbounded::<Released>();
    let (stored_tx, compactor) = match &options.retention {
        Some(retention) => {
            let (tx, rx) = unbounded();
            let compactor = compactor::Compactor::new(
                Arc::clone(&storage),
                retention.clone(),
                Arc::clone(&events),
            );
            let stop = controls.stop.clone();
            (
                Some(tx),
                Some(thread::spawn(move || compactor.run(&rx, &stop))),
            )
        }
        None => (None, None),
    };
    let mut commands = Vec::new();
    let poller_threads: Vec<_> = shards
        .into_iter()
        .zip(ack_rxs)
        .enumerate()
        .map(|(i, (shard, acks))| {
            let (command_tx, command_rx) = unbounded();
            commands.push(command_tx);
            let links = Links {
                jobs: job_tx.clone(),
                acks,
                commands: command_rx,
                released: released_tx.clone(),
                board: Arc::clone(&board),
                circuit: Arc::clone(&circuit),
                upload_backoff: Backoff::new(options.upload_retry.0, options.upload_retry.1),
                stored: stored_tx.clone(),
            };
            let (stop, timeout) = (controls.stop.clone(), options.shutdown_timeout);
            thread::spawn(move || Poller::new(i, shard, links).run(&stop, timeout))
        })
        .collect();
    drop((job_tx, released_tx, stored_tx));
    fleet.connect(commands);
    let (request_tx, request_rx) = unbounded::<Request>();
    let control = options.control_socket.as_ref().and_then(|path| {
        control::serve(
            path,
            Arc::clone(&board),
            request_tx,
            &controls.stop,
            &events,
        )
    });
    let heartbeat = options.heartbeat.clone().map(|settings| {
        let (board, stop, events) = (
            Arc::clone(&board),
            controls.stop.clone(),
            Arc::clone(&events),
        );
        thread::spawn(move || heartbeat::run(&settings, &board, &stop, &events))
    });
    let validator = fleet.selection.validates_any().then(|| {
        let (storage, board, stop, events) = (
            Arc::clone(&storage),
            Arc::clone(&board),
            controls.stop.clone(),
            Arc::clone(&events),
        );
        thread::spawn(move || validator::run(storage.as_ref(), &board, &stop, &events))
    });
    let endpoint = metrics_listener.map(|listener| {
        let (board, metrics, finish) = (Arc::clone(&board), Arc::clone(&metrics), finish.clone());
        thread::spawn(move || {
            let render = |out: &mut dyn std::io::Write| {
                let rows = board.metrics_rows(crate::fsutil::now_ms());
                let process = exposition::Process {
                    queue_depth: queue.len(),
                    resident_bytes: crate::memory::resident_bytes(),
                };
                exposition::write(out, &rows, &metrics, process)
            };
            crate::monitor::endpoint::serve(&listener, &finish, &render);
        })
    });
    supervise(&mut fleet, options, controls, &released_rx, &request_rx);
    let mut clean = true;
    for t in poller_threads {
        clean &= t.join().unwrap_or(false);
    }
    for t in uploader_threads {
        let _ = t.join();
    }
    if let Some(t) = compactor {
        let _ = t.join();
    }
    if let Some(t) = heartbeat {
        let _ = t.join();
    }
    if let Some(t) = control {
        let _ = t.join();
    }
    if let Some(t) = validator {
        let _ = t.join();
    }
    events.emit(Event::Stopped { clean });
    finish.cancel();
    for t in [endpoint, alerting].into_iter().flatten() {
        let _ = t.join();
    }
    if clean {
        Ok(())
    } else {
        Err(Error::Other(
            "stopped before everything committed was stored (see the errors above); nothing is lost locally: the WAL keeps it and a restart ships it".into(),
        ))
    }
}

/// The calling thread's part until `stop`: rediscovery, released
/// databases, control requests.
/// How often `watch` returns the memory its allocator holds free (see
/// [`crate::memory`]): waves of work are over by then, and an idle fleet
/// does not pay for it (a walk over malloc's free lists).
const GIVE_BACK_INTERVAL: Duration = Duration::from_secs(30);

fn supervise(
    fleet: &mut Fleet,
    options: &WatchOptions,
    controls: &Controls,
    released: &Receiver<Released>,
    requests: &Receiver<Request>,
) {
    let mut next_discovery = Instant::now() + options.discover_interval;
    let mut next_give_back = Instant::now() + GIVE_BACK_INTERVAL;
    // A channel with no sender left (no control socket could be served,
    // say) is ready at once, forever: it is swapped for one that never is,
    // or the wait below would return at once and spin.
    let never_released = crossbeam_channel::never();
    let never_requested = crossbeam_channel::never();
    let (mut released, mut requests) = (released, requests);
    while !controls.stop.is_cancelled() {
        if controls.reload.take() {
            if let Err(e) = fleet.selection.reload() {
                fleet.report(format!("reloading the config: {e}; keeping the one in use"));
            }
            fleet.rescan_fully();
            next_discovery = Instant::now();
        }
        if Instant::now() >= next_discovery {
            fleet.rediscover();
            next_discovery = Instant::now() + options.discover_interval;
        }
        if Instant::now() >= next_give_back {
            crate::memory::give_back();
            next_give_back = Instant::now() + GIVE_BACK_INTERVAL;
        }
        crossbeam_channel::select! {
            recv(released) -> r => match r {
                Ok(r) => fleet.released(r),
                Err(_) => released = &never_released,
            },
            recv(requests) -> r => match r {
                Ok(r) => answer(fleet, r),
                Err(_) => requests = &never_requested,
            },
            default(Duration::from_millis(100)) => {}
        }
    }
}

/// Answers a control request that needs the fleet.
fn answer(fleet: &Fleet, request: Request) {
    match request {
        Request::Snapshot { path, reply } => fleet.snapshot(&path, reply),
    }
}

fn upload_loop(storage: &dyn Storage, jobs: &Receiver<Job>, acks: &[Sender<Ack>]) {
    for job in jobs {
        let result = job.batch.upload(storage);
        let _ = acks[job.poller].send(Ack {
            slot: job.slot,
            result,
        });
    }
}
