//! A GET body that survives the network.
//!
//! A response body can break after its headers arrived: the connection is
//! reset, stalls past the read timeout, or closes before `Content-Length`
//! bytes. [`ResumingBody`] then asks for the rest with a `Range` request
//! from the first byte it has not handed out, on the request schedule, and
//! carries on; the reader above it (a restore streaming a snapshot, a
//! download to disk, verify's replay) never sees the break.
//!
//! Invariants:
//! - the bytes handed out are exactly the object's bytes `0..received`, in
//!   order: a resumed response is checked to start at `received` (a server
//!   that ignores `Range` sends it all again, and the bytes already handed
//!   out are skipped), and it is pinned to the first response's ETag with
//!   `If-Match`, so an object replaced meanwhile fails instead of mixing;
//! - the body ends (`Ok(0)`) only after `size` bytes: a short body is a
//!   break, never an end;
//! - when the breaks use up their budget, the error is a
//!   [`TransferFailed`](crate::storage::TransferFailed): the transport
//!   failed, nothing is known to be wrong with the object. Callers report
//!   it as a storage error (exit 4), never as damage (exit 5).

use super::S3Storage;
use crate::backoff::Backoff;
use crate::storage::TransferFailed;
use std::io::{self, Read};

/// How many times one object's body may break before the download fails.
/// Each resume is itself a request with its own retries.
pub const MAX_BREAKS: u32 = 12;

/// Progress between two breaks that earns the body a fresh budget: a
/// download that keeps moving is never given up, one that breaks again and
/// again with next to nothing arriving is.
const PROGRESS_RESETS_BUDGET: u64 = 64 << 10;

pub struct ResumingBody {
    storage: S3Storage,
    key: String,
    full_key: String,
    etag: Option<String>,
    /// The object's size (the first response's `Content-Length`).
    size: u64,
    /// Bytes handed out so far.
    received: u64,
    /// Bytes of the current response to drop before handing out more (a
    /// server that answered a `Range` request with the whole object).
    skip: u64,
    inner: Option<ureq::BodyReader<'static>>,
    breaks: u32,
    received_at_last_break: u64,
    backoff: Backoff,
}

impl ResumingBody {
    pub fn new(
        storage: S3Storage,
        key: &str,
        full_key: String,
        etag: Option<String>,
        size: u64,
        first: ureq::BodyReader<'static>,
    ) -> ResumingBody {
        ResumingBody {
            storage,
            key: key.to_string(),
            full_key,
            etag,
            size,
            received: 0,
            skip: 0,
            inner: Some(first),
            breaks: 0,
            received_at_last_break: 0,
            backoff: Backoff::request(),
        }
    }

    /// Counts a break and, within the budget, opens a response for the rest.
    fn resume(&mut self, reason: String) -> io::Result<()> {
        if self.received - self.received_at_last_break >= PROGRESS_RESETS_BUDGET {
            self.breaks = 0;
            self.backoff.reset();
        }
        self.breaks += 1;
        self.received_at_last_break = self.received;
        if self.breaks > MAX_BREAKS {
            return Err(self.failed(format!(
                "the transfer broke off {MAX_BREAKS} times without progress (last: {reason})"
            )));
        }
        std::thread::sleep(self.backoff.next_delay());
        let rest = self.size - self.received;
        let storage = &self.storage;
        let (key, full, etag) = (&self.key, &self.full_key, self.etag.as_deref());
        let range = Some((self.received, rest));
        let resp = storage
            .with_retries("GET (resumed)", key, |_| {
                storage.get_once("GET (resumed)", key, full, range, etag)
            })
            .map_err(|e| self.failed(e.message().trim_end_matches('.').to_string()))?;
        let Some(resp) = resp else {
            return Err(self.failed("the object is gone".to_string()));
        };
        self.skip = match resp.status().as_u16() {
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                if range != Some((self.received, self.size)) {
                    return Err(self.failed(format!(
                        "the server answered the resumed read with another range ({range:?})"
                    )));
                }
                0
            }
            // The whole object again: drop what was handed out already.
            _ => self.received,
        };
        self.inner = Some(resp.into_body().into_with_config().limit(u64::MAX).reader());
        Ok(())
    }

    fn failed(&self, why: String) -> io::Error {
        io::Error::other(TransferFailed(format!(
            "S3 GET of '{}' from {} failed after {} of {} bytes: {why}; nothing says the object is damaged: run the command again",
            self.key, self.storage.host, self.received, self.size
        )))
    }

    /// Reads from the current response, dropping bytes to skip. `Err`: the
    /// response broke, and why.
    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let Some(inner) = &mut self.inner else {
            return Err("no response".to_string());
        };
        loop {
            let want = if self.skip > 0 {
                buf.len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX))
            } else {
                let rest = self.size - self.received;
                buf.len().min(usize::try_from(rest).unwrap_or(usize::MAX))
            };
            match inner.read(&mut buf[..want]) {
                Ok(0) => return Err("the connection closed before the end".to_string()),
                Ok(n) if self.skip > 0 => self.skip -= n as u64,
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{:?}", e.kind())),
            }
        }
    }
}

impl Read for ResumingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.received >= self.size {
            return Ok(0);
        }
        loop {
            match self.read_inner(buf) {
                Ok(n) => {
                    self.received += n as u64;
                    return Ok(n);
                }
                Err(reason) => {
                    self.inner = None;
                    self.resume(reason)?;
                }
            }
        }
    }
}

/// The first byte and the object's total size of a `Content-Range:
/// bytes FIRST-LAST/TOTAL` header.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, _) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, total.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range() {
        assert_eq!(
            super::parse_content_range("bytes 200-999/1000"),
            Some((200, 1000))
        );
        assert_eq!(super::parse_content_range("bytes */1000"), None);
        assert_eq!(super::parse_content_range("items 0-1/2"), None);
    }
}
