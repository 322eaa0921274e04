//! LTX decoding of arbitrary bytes: `walsync::ltx::decode_all` and the
//! streaming `Decoder` (`new`, `next_page` until `None`, `finish`), driven
//! the way restore and verify drive it. Errors are fine; panics are not.
//!
//! Each input is decoded twice: as it is, and "repaired": when its pages
//! decode, the page index, index length, file checksum and snapshot
//! post-apply checksum are rewritten to match them, so that mutated files
//! get past the checksums (which random mutation almost never satisfies)
//! and into `finish`'s success path. When a file decodes, its pages are
//! written again with `Encoder` and the new file must decode to the same
//! header, pages and trailer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use walsync::ltx::{decode_all, Decoder, Encoder, CHECKSUM_FLAG, EMPTY_DB_CHECKSUM, TRAILER_SIZE};

/// A reader that hands out at most `step` bytes per `read`, so the decoder's
/// buffered reads see short reads at every boundary.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// `WALSYNC_FUZZ_VERBOSE=1`: print what each input decodes to (for checking
/// seeds with `cargo fuzz run ltx_decode seeds/ltx_decode -- -runs=0`).
fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("WALSYNC_FUZZ_VERBOSE").is_some())
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The hex number in `msg` right after `marker`.
fn hex_after(msg: &str, marker: &str) -> Option<u64> {
    let at = msg.find(marker)? + marker.len();
    let hex: String = msg[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// `data` with its page index, index length and trailer rewritten to match
/// its pages; `None` when its header or pages do not decode. The checksums
/// are taken from the decoder's own mismatch messages (src/ltx.rs
/// `Decoder::finish`); if those change, this repairs less, nothing worse.
fn repair(data: &[u8]) -> Option<Vec<u8>> {
    let mut dec = Decoder::new(data).ok()?;
    let header = *dec.header();
    let mut index = Vec::new();
    let mut buf = Vec::new();
    loop {
        let offset = dec.bytes_read();
        match dec.next_page(&mut buf) {
            Ok(Some(pgno)) => {
                put_uvarint(&mut index, u64::from(pgno));
                put_uvarint(&mut index, offset);
                put_uvarint(&mut index, dec.bytes_read() - offset);
            }
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    index.push(0);
    let end = dec.bytes_read() as usize;
    let mut out = data[..end].to_vec();
    out.extend_from_slice(&index);
    out.extend_from_slice(&(index.len() as u64).to_be_bytes());
    let post = match data.len().checked_sub(TRAILER_SIZE) {
        Some(t) if t >= end => u64::from_be_bytes(data[t..t + 8].try_into().unwrap()),
        _ => 0,
    };
    let post = if header.no_checksum() {
        0
    } else if header.commit == 0 {
        EMPTY_DB_CHECKSUM
    } else {
        post | CHECKSUM_FLAG
    };
    out.extend_from_slice(&post.to_be_bytes());
    out.extend_from_slice(&CHECKSUM_FLAG.to_be_bytes());
    let n = out.len();
    for _ in 0..3 {
        let Err(e) = decode_all(&out[..]) else {
            break;
        };
        let msg = e.to_string();
        if let Some(sum) = hex_after(&msg, "content gives ") {
            out[n - 8..].copy_from_slice(&sum.to_be_bytes());
        } else if let Some(sum) = hex_after(&msg, "does not match its pages (") {
            out[n - 16..n - 8].copy_from_slice(&sum.to_be_bytes());
        } else {
            break;
        }
    }
    Some(out)
}

fn check(data: &[u8]) {
    // 1. The one-call decoder, over a slice.
    let whole = decode_all(data);

    // 2. The streaming decoder, over a reader with short reads, page by page.
    let step = 1 + data.len() % 97;
    let streamed = (|| {
        let mut dec = Decoder::new(Trickle { data, step })?;
        let header = *dec.header();
        let mut pages = Vec::new();
        let mut buf = Vec::new();
        while let Some(pgno) = dec.next_page(&mut buf)? {
            assert_eq!(buf.len(), header.page_size as usize);
            pages.push((pgno, buf.clone()));
        }
        // After the end, next_page keeps answering None.
        assert!(dec.next_page(&mut buf)?.is_none());
        assert_eq!(dec.page_count() as usize, pages.len());
        let trailer = dec.finish()?;
        Ok::<_, walsync::Error>((header, pages, trailer))
    })();

    if verbose() {
        match &whole {
            Ok((h, p, _)) => eprintln!(
                "ltx: ok, page size {}, commit {}, TXIDs {}-{}, {} pages",
                h.page_size,
                h.commit,
                h.min_txid,
                h.max_txid,
                p.len()
            ),
            Err(e) => eprintln!("ltx: error: {e}"),
        }
    }

    // Both ways of decoding agree on whether the file is good, and on what
    // it holds.
    match (&whole, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode_all and Decoder disagree"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "decode_all and Decoder disagree: decode_all ok={} streamed ok={}",
            a.is_ok(),
            b.is_ok()
        ),
    }

    // 3. A decoder abandoned half way, then finished: must not panic.
    if let Ok(mut dec) = Decoder::new(data) {
        let mut buf = Vec::new();
        let _ = dec.next_page(&mut buf);
        let _ = dec.finish();
    }

    // 4. Round trip: what decodes, re-encodes to a file that decodes the same.
    let Ok((header, pages, trailer)) = whole else {
        return;
    };
    let Ok(mut enc) = Encoder::new(Vec::new(), header) else {
        panic!("Encoder refuses a header the decoder accepted: {header:?}");
    };
    for (pgno, page) in &pages {
        if let Err(e) = enc.write_page(*pgno, page) {
            panic!("Encoder refuses page {pgno} the decoder accepted: {e}");
        }
    }
    match enc.finish(trailer.post_apply_checksum) {
        Ok((t2, out)) => {
            let (h3, p3, t3) = decode_all(&out[..]).expect("re-encoded LTX file does not decode");
            assert_eq!(h3, header);
            assert_eq!(p3, pages);
            assert_eq!(t3, t2);
            assert_eq!(t3.post_apply_checksum, trailer.post_apply_checksum);
        }
        Err(e) => panic!(
            "Encoder refuses to finish a file the decoder accepted ({header:?}, {trailer:?}): {e}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = repair(data) {
        if fixed != data {
            check(&fixed);
        }
    }
});
