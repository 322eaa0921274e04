//! A TCP relay in front of the S3 server that reads each HTTP request's head
//! and does with the request what the test chose: pass it on, hold it for a
//! while (a slow store), refuse it with `503 SlowDown` (a throttling
//! store), cut its response's body short (a network that breaks), or never
//! answer (a hung endpoint). It records every request, so a test can tell what was in flight
//! when.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the relay does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass it to the server at once.
    Forward,
    /// Hold it (head and body) this long, then pass it on.
    Delay(Duration),
    /// Read it whole, answer `503 SlowDown` and close the connection.
    SlowDown,
    /// Pass it on, then send back the response's head and only this many
    /// bytes of its body, and close the connection (a network that breaks
    /// mid-body).
    Truncate(u64),
    /// Read it and never answer, holding the connection open (an endpoint
    /// that accepts connections and hangs).
    BlackHole,
    /// Read it whole, answer `501 NotImplemented` and close the connection
    /// (a provider without this operation).
    NotImplemented,
    /// Read it whole, answer `403 AccessDenied` and close the connection
    /// (credentials revoked or a bucket policy that refuses).
    AccessDenied,
}

/// One request as the relay read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Its path and query (a listing has `list-type=2`, a batched delete
    /// `delete` in its query).
    pub target: String,
    /// Its body's length (Content-Length; 0 without one).
    pub len: u64,
    pub action: Action,
    /// When its head had arrived.
    pub arrived: Instant,
    /// When the relay began passing it to the server (never for a refused
    /// request).
    pub passed: Option<Instant>,
}

impl Request {
    /// Whether the relay held it back all through `from..=to`: the client
    /// had sent it and the server had not seen it, so it had not finished.
    pub fn held_during(&self, from: Instant, to: Instant) -> bool {
        self.action != Action::SlowDown
            && self.arrived <= from
            && self.passed.is_none_or(|p| p > to)
    }
}

/// The caller's choice: (index of the request among all the relay read,
/// from 0; its method; its target, the path and query) -> what to do with
/// it.
type Rule = dyn Fn(usize, &str, &str) -> Action + Send + Sync;

/// A running relay; it stops accepting connections when dropped.
pub struct Relay {
    /// `http://127.0.0.1:<port>`: the endpoint to give clients.
    pub endpoint: String,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays to `upstream` (`http://127.0.0.1:PORT`); `rule(index, method)`
    /// chooses the action for each request.
    pub fn start(
        upstream: &str,
        rule: impl Fn(usize, &str) -> Action + Send + Sync + 'static,
    ) -> Relay {
        Relay::start_by_target(upstream, move |i, method, _| rule(i, method))
    }

    /// [`Relay::start`] with a rule that also sees each request's target
    /// (path and query: a listing has `list-type=2` in it).
    pub fn start_by_target(
        upstream: &str,
        rule: impl Fn(usize, &str, &str) -> Action + Send + Sync + 'static,
    ) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let up: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let rule: Arc<Rule> = Arc::new(rule);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (rule, log) = (rule.clone(), log.clone());
                    std::thread::spawn(move || serve(client, up, &*rule, &log));
                }
            });
        }
        Relay {
            endpoint: format!("http://{addr}"),
            addr,
            log,
            stop,
        }
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one client connection: request by request (HTTP/1.1 clients send
/// the next request after the previous response), responses copied back
/// as they come.
fn serve(client: TcpStream, up: SocketAddr, rule: &Rule, log: &Mutex<Vec<Request>>) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut from_client = BufReader::new(read_half);
    let mut server: Option<TcpStream> = None;
    while let Some((head, method, len)) = read_head(&mut from_client) {
        let (index, action) = {
            let mut log = log.lock().unwrap();
            let index = log.len();
            let target = String::from_utf8_lossy(&head)
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let action = rule(index, &method, &target);
            log.push(Request {
                method,
                target,
                len,
                action,
                arrived: Instant::now(),
                passed: None,
            });
            (index, action)
        };
        match action {
            Action::SlowDown | Action::NotImplemented | Action::AccessDenied => {
                let _ = std::io::copy(&mut (&mut from_client).take(len), &mut std::io::sink());
                refuse(&client, action);
                break;
            }
            Action::Truncate(body_bytes) => {
                let mut body = vec![0u8; usize::try_from(len).unwrap_or(0)];
                if from_client.read_exact(&mut body).is_ok() {
                    log.lock().unwrap()[index].passed = Some(Instant::now());
                    truncated(up, &client, &head, &body, body_bytes);
                }
                break;
            }
            Action::BlackHole => {
                // Until the client gives up and closes.
                let mut sink = [0u8; 4096];
                while matches!(from_client.read(&mut sink), Ok(n) if n > 0) {}
                break;
            }
            Action::Delay(d) => std::thread::sleep(d),
            Action::Forward => {}
        }
        if server.is_none() {
            server = connect(up, &client);
        }
        let Some(to_server) = server.as_mut() else {
            break;
        };
        log.lock().unwrap()[index].passed = Some(Instant::now());
        let sent = to_server.write_all(&head).and_then(|()| {
            let body = std::io::copy(&mut (&mut from_client).take(len), to_server)?;
            if body == len {
                Ok(())
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            }
        });
        if sent.is_err() {
            break;
        }
    }
    if let Some(s) = server {
        let _ = s.shutdown(Shutdown::Write);
    }
}

/// Reads a request head; returns its bytes, method and Content-Length, or
/// None at the end of the connection.
fn read_head(r: &mut impl BufRead) -> Option<(Vec<u8>, String, u64)> {
    let mut head = Vec::new();
    let mut len = 0;
    loop {
        let start = head.len();
        if r.read_until(b'\n', &mut head).ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&head[start..]).to_ascii_lowercase();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if line.starts_with("transfer-encoding:") {
            // Bodies are read by their Content-Length only (walsync's
            // requests have one): close rather than relay this one wrongly.
            return None;
        }
    }
    let method = String::from_utf8_lossy(&head)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    Some((head, method, len))
}

/// Connects to the server and copies its responses back to the client.
fn connect(up: SocketAddr, client: &TcpStream) -> Option<TcpStream> {
    let server = TcpStream::connect(up).ok()?;
    let mut from_server = server.try_clone().ok()?;
    let mut to_client = client.try_clone().ok()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    Some(server)
}

/// Sends one request to the server on a connection of its own and copies
/// back the response's head and `body_bytes` of its body, then closes.
fn truncated(up: SocketAddr, mut client: &TcpStream, head: &[u8], body: &[u8], body_bytes: u64) {
    let Ok(mut server) = TcpStream::connect(up) else {
        return;
    };
    if server
        .write_all(head)
        .and_then(|()| server.write_all(body))
        .is_err()
    {
        return;
    }
    let mut from_server = BufReader::new(server);
    let mut response_head = Vec::new();
    loop {
        let start = response_head.len();
        match from_server.read_until(b'\n', &mut response_head) {
            Ok(0) | Err(_) => return,
            Ok(_) if &response_head[start..] == b"\r\n" => break,
            Ok(_) => {}
        }
    }
    let _ = client.write_all(&response_head);
    let _ = std::io::copy(&mut from_server.take(body_bytes), &mut client);
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}

/// Answers S3's throttling error and closes the connection.
fn refuse(mut client: &TcpStream, action: Action) {
    let (status, code, message) = match action {
        Action::NotImplemented => (
            "501 Not Implemented",
            "NotImplemented",
            "A header you provided implies functionality that is not implemented.",
        ),
        Action::AccessDenied => ("403 Forbidden", "AccessDenied", "Access Denied"),
        _ => (
            "503 Service Unavailable",
            "SlowDown",
            "Reduce your request rate.",
        ),
    };
    let xml = format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>");
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}
