//! Memory of walsync's per-database pieces at scale: opens N databases made
//! by `scripts/lightwriter.py create DIR N` as walsync's `Source` (SQLite
//! connection with a read transaction) and as whole `Shipper`s, printing
//! the resident memory after each. Run: cargo run --release --example conn_rss DIR N
use std::sync::Arc;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n): (&str, usize) = (&args[1], args[2].parse().unwrap());
    let path = |i: usize| std::path::PathBuf::from(format!("{dir}/t{i:04}/app.db"));
    println!("start: {} KB", rss_kb());
    let mut sources = Vec::new();
    for i in 0..n {
        let mut s = walsync::watch::source::Source::open(&path(i)).unwrap();
        s.begin_read().unwrap();
        sources.push(s);
    }
    let with_sources = rss_kb();
    println!("{n} sources: {with_sources} KB");
    let mut cur = 0i64;
    let mut hi = 0i64;
    unsafe {
        rusqlite::ffi::sqlite3_status64(
            rusqlite::ffi::SQLITE_STATUS_MEMORY_USED,
            &mut cur,
            &mut hi,
            0,
        );
    }
    println!(
        "sqlite memory used: {} KB ({} B each)",
        cur / 1024,
        cur / n as i64
    );
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut shm_rss = 0u64;
    let mut in_shm = false;
    for line in smaps.lines() {
        if line.contains(" /") || line.ends_with("]") || line.split_whitespace().count() == 5 {
            in_shm = line.ends_with("-shm");
        }
        if in_shm && line.starts_with("Rss:") {
            shm_rss += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    println!("-shm mappings resident: {shm_rss} KB");
    for line in std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
    {
        if line.starts_with("Rss")
            || line.starts_with("Anonymous")
            || line.starts_with("Shared")
            || line.starts_with("Private")
        {
            println!("  {line}");
        }
    }
    drop(sources);
    println!("dropped: {} KB", rss_kb());
    let storage: Arc<dyn walsync::Storage> = Arc::from(
        walsync::open_storage(&format!("file://{dir}/replica"), &Default::default()).unwrap(),
    );
    let before = rss_kb();
    let mut shippers = Vec::new();
    for i in 0..n {
        let name = format!("t{i:04}/app");
        let s = walsync::Shipper::open(
            &path(i),
            &name,
            storage.clone(),
            Default::default(),
            Arc::new(walsync::event::Discard),
        )
        .unwrap();
        shippers.push(s);
    }
    let after = rss_kb();
    println!(
        "{n} shippers: {after} KB (+{} KB, {} B each)",
        after - before,
        (after - before) * 1024 / n as u64
    );
    println!(
        "size_of Shipper: {} B",
        std::mem::size_of::<walsync::Shipper>()
    );
}
