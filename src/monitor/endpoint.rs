//! The metrics endpoint: a small HTTP/1.1 server on one thread that
//! answers `GET /metrics` (and `/`) with the Prometheus text. Scrapes are
//! rare and small, so connections are served one at a time, each with a
//! short deadline: a client that stalls cannot hold the thread for long,
//! and nothing it does reaches the shipping path.

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a client may take to send its request or read the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Parses `--metrics-addr` / `metrics_addr`: `HOST:PORT`, or `:PORT` or
/// `PORT` for loopback (127.0.0.1). `0.0.0.0:PORT` listens everywhere, on
/// purpose only.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    let text = text.trim();
    let port_only = text.strip_prefix(':').unwrap_or(text);
    let with_host = if port_only.parse::<u16>().is_ok() {
        format!("127.0.0.1:{port_only}")
    } else {
        text.to_string()
    };
    with_host
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Error::Usage(format!(
                "metrics address '{text}' is not HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:9090)"
            ))
        })
}

/// Binds `addr`. A port in use or not allowed is a usage error (exit 2),
/// found before anything starts.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        Error::Usage(format!(
            "cannot serve metrics on {addr}: {e}; choose another --metrics-addr"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Other(format!("metrics listener on {addr}: {e}")))?;
    Ok(listener)
}

/// Serves scrapes until `stop` is cancelled; `render` writes the metrics.
pub fn serve(
    listener: &TcpListener,
    stop: &CancelToken,
    render: &dyn Fn(&mut dyn Write) -> std::io::Result<()>,
) {
    while !stop.is_cancelled() {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client that goes away mid-answer is its own business.
                let _ = answer(stream, render);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Out of descriptors, a reset before accept: try again soon.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn answer(
    mut stream: TcpStream,
    render: &dyn Fn(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    // The answer goes out in several writes: without this, Nagle's
    // algorithm and the client's delayed ACK stall each scrape ~40 ms.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CLIENT_DEADLINE))?;
    stream.set_write_timeout(Some(CLIENT_DEADLINE))?;
    let head = read_head(&mut stream)?;
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let mut out = BufWriter::with_capacity(32 * 1024, stream);
    match (method, path) {
        ("GET", "/metrics") => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nConnection: close\r\n\r\n")?;
            render(&mut out)?;
        }
        ("GET", "/") => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nwalsync: metrics are at /metrics\n")?;
        }
        ("GET" | "HEAD", _) => {
            out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nnot found: try /metrics\n")?;
        }
        _ => {
            out.write_all(
                b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    out.flush()
}

/// Reads up to the end of the request head (or [`MAX_HEAD`] bytes).
fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_loopback() {
        assert_eq!(parse_addr("9090").unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(parse_addr(":9091").unwrap().to_string(), "127.0.0.1:9091");
        assert_eq!(
            parse_addr("0.0.0.0:9092").unwrap().to_string(),
            "0.0.0.0:9092"
        );
        assert_eq!(parse_addr("nonsense").unwrap_err().exit_code(), 2);
        assert_eq!(parse_addr("127.0.0.1:99999").unwrap_err().exit_code(), 2);
    }
}
