//! Streaming-memory check for the LTX codec: encodes a 1 GiB snapshot
//! (262 144 pages of 4096 bytes, compressible pseudo-random content) to a
//! file in a temporary directory, decodes it back, and prints the process's
//! peak RSS (VmHWM) after each phase. Run through `scripts/ltx-rss.sh`.

use std::fs::File;
use std::io::BufWriter;
use std::time::Instant;

use walsync::ltx::{self, Decoder, Encoder, Header};

const PAGE_SIZE: u32 = 4096;
const PAGES: u32 = 262_144;

/// The page `pgno`: a deterministic mix of xorshift noise (half the page) and
/// repeated text, so it compresses roughly like real data.
fn fill_page(pgno: u32, page: &mut [u8]) {
    let mut x = u64::from(pgno).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for (i, chunk) in page.chunks_mut(8).enumerate() {
        if i % 2 == 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        } else {
            chunk.copy_from_slice(&b"walsync!"[..chunk.len()]);
        }
    }
}

fn status(field: &str) -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn report(phase: &str) {
    println!(
        "{phase:<8} peak RSS (VmHWM) {:>10}   current RSS (VmRSS) {:>10}",
        status("VmHWM:"),
        status("VmRSS:")
    );
}

fn main() -> walsync::error::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| walsync::error::Error::Other(e.to_string()))?;
    let path = dir.path().join("big.ltx");
    report("start");

    let t = Instant::now();
    let header = Header {
        page_size: PAGE_SIZE,
        commit: PAGES,
        min_txid: 1,
        max_txid: 1,
        timestamp_ms: 1_700_000_000_000,
        ..Header::default()
    };
    let file = File::create(&path).map_err(|e| walsync::error::Error::Other(e.to_string()))?;
    let mut enc = Encoder::new(BufWriter::with_capacity(256 * 1024, file), header)?;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut db = ltx::EMPTY_DB_CHECKSUM;
    for pgno in 1..=PAGES {
        fill_page(pgno, &mut page);
        db = ltx::db_checksum_add(db, ltx::page_checksum(pgno, &page));
        enc.write_page(pgno, &page)?;
    }
    let (trailer, _) = enc.finish(db)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "encoded {} MiB of pages into {} MiB in {:.1?} (post-apply {:016x})",
        (u64::from(PAGES) * u64::from(PAGE_SIZE)) >> 20,
        size >> 20,
        t.elapsed(),
        trailer.post_apply_checksum
    );
    report("encode");

    let t = Instant::now();
    let file = File::open(&path).map_err(|e| walsync::error::Error::Other(e.to_string()))?;
    let mut dec = Decoder::new(file)?;
    let mut buf = Vec::new();
    let mut n = 0u32;
    while let Some(pgno) = dec.next_page(&mut buf)? {
        n += 1;
        fill_page(pgno, &mut page);
        if buf != page {
            return Err(walsync::error::Error::Integrity(format!(
                "page {pgno} differs"
            )));
        }
    }
    let t2 = dec.finish()?;
    assert_eq!(t2, trailer);
    println!("decoded and verified {n} pages in {:.1?}", t.elapsed());
    report("decode");
    Ok(())
}
