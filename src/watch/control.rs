//! The control channel of a running `watch`: a Unix socket on which
//! `walsync status` reads the status board and `walsync snapshot DB` asks
//! for a snapshot, instead of being refused.
//!
//! Only local processes can connect, and only those the socket's file
//! permissions allow: it is created with mode 0600 (its owner only). It
//! serves the status board and snapshot requests; nothing it answers holds
//! a secret (no credential, no presigned URL). The protocol is one JSON
//! object per line each way: `{"command":"status"}` →
//! `{"ok":true,"databases":[…]}`; `{"command":"snapshot","path":"/abs/db"}`
//! → `{"ok":true,"txid":42}`; an error is `{"ok":false,"error":"…"}`.

use super::status::{Board, DbStatus};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crossbeam_channel::{bounded, Sender};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A request that the fleet answers.
pub enum Request {
    /// A snapshot of the database at `path`, answered with its TXID.
    Snapshot {
        path: PathBuf,
        reply: Sender<Result<u64, String>>,
    },
}

/// What a client sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ClientRequest {
    Status,
    Snapshot { path: PathBuf },
}

/// What the server answers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<DbStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<u64>,
}

/// How long a snapshot request may take before the client is told so.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);

/// Listens at `path` until `stop`; `None` (said once) when it cannot. A
/// socket left by a walsync that died is replaced; one a live walsync
/// answers on is left alone.
pub fn serve(
    path: &Path,
    board: Arc<Board>,
    requests: Sender<Request>,
    stop: &CancelToken,
    events: &Arc<dyn EventSink>,
) -> Option<std::thread::JoinHandle<()>> {
    let listener = match bind(path) {
        Ok(l) => l,
        Err(e) => {
            events.emit(Event::DiscoveryFailed {
                error: format!("control channel: {e}"),
            });
            return None;
        }
    };
    let (path, stop) = (path.to_path_buf(), stop.clone());
    Some(std::thread::spawn(move || {
        while !stop.is_cancelled() {
            match listener.accept() {
                Ok((conn, _)) => {
                    let (board, requests) = (Arc::clone(&board), requests.clone());
                    std::thread::spawn(move || handle(conn, &board, &requests));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Usage(format!(
                "{} is in use by another walsync; `walsync status` and `snapshot` reach that one (give this watch another `socket` in [control])",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Other(format!("cannot create {}: {e}", dir.display())))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::Other(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Other(format!("cannot restrict {}: {e}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Other(format!("control channel {}: {e}", path.display())))?;
    Ok(listener)
}

fn handle(conn: UnixStream, board: &Board, requests: &Sender<Request>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let Ok(reader) = conn.try_clone() else {
        return;
    };
    if BufReader::new(reader).read_line(&mut line).is_err() {
        return;
    }
    let response = match serde_json::from_str::<ClientRequest>(&line) {
        Ok(ClientRequest::Status) => Response {
            ok: true,
            databases: Some(board.all(crate::fsutil::now_ms())),
            ..Response::default()
        },
        Ok(ClientRequest::Snapshot { path }) => snapshot(path, requests),
        Err(e) => failure(format!("bad request: {e}")),
    };
    let mut conn = conn;
    if let Ok(text) = serde_json::to_string(&response) {
        let _ = writeln!(conn, "{text}");
    }
}

fn snapshot(path: PathBuf, requests: &Sender<Request>) -> Response {
    let (reply, answer) = bounded(1);
    if requests.send(Request::Snapshot { path, reply }).is_err() {
        return failure("watch is stopping".into());
    }
    match answer.recv_timeout(SNAPSHOT_WAIT) {
        Ok(Ok(txid)) => Response {
            ok: true,
            txid: Some(txid),
            ..Response::default()
        },
        Ok(Err(e)) => failure(e),
        Err(_) => failure(format!(
            "no snapshot stored within {} s (is storage reachable?)",
            SNAPSHOT_WAIT.as_secs()
        )),
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        error: Some(error),
        ..Response::default()
    }
}

/// Sends one request to the `watch` listening at `path`. `Ok(None)` when
/// none listens there: no socket, nobody answers on it, or the watch hung
/// up without an answer (it was stopping). A caller may then do the work
/// itself; the database's exclusive claim keeps that safe.
pub fn ask(path: &Path, request: &ClientRequest) -> Result<Option<Response>> {
    let Ok(mut conn) = UnixStream::connect(path) else {
        return Ok(None);
    };
    let text = serde_json::to_string(request)
        .map_err(|e| Error::Other(format!("encoding the request: {e}")))?;
    let mut line = String::new();
    let exchanged =
        writeln!(conn, "{text}").and_then(|()| BufReader::new(conn).read_line(&mut line));
    match exchanged {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if hung_up(&e) => return Ok(None),
        Err(e) => return Err(Error::Other(format!("talking to {}: {e}", path.display()))),
    }
    serde_json::from_str(&line).map(Some).map_err(|e| {
        Error::Other(format!(
            "the watch at {} answered something else ({e})",
            path.display()
        ))
    })
}

/// The other end went away (rather than failing to answer).
fn hung_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// Where the control channel listens when the config does not say:
/// `$XDG_RUNTIME_DIR/walsync.sock`, else `/tmp/walsync-<uid>.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("walsync.sock"),
        // SAFETY: getuid cannot fail and touches no memory.
        None => PathBuf::from(format!("/tmp/walsync-{}.sock", unsafe { libc::getuid() })),
    }
}
