//! What one rescan of the selection costs while every database it names is
//! already replicated (as in a `watch` whose folders changed), without the
//! rest of `watch` around it: `scripts/fleet-scale.sh` measures it in the
//! running process.
//!
//!   cargo run --release --example rescan_cost -- CONFIG [ROUNDS]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use walsync::selection::{absolute, Replicated, Selection};
use walsync::Settings;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(config) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: rescan_cost CONFIG [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: u32 = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(100);
    let selection = match Selection::load(Some(&config), Default::default(), Vec::new()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    };
    let replica = "file:///nowhere";
    let placed: HashMap<PathBuf, (String, Settings)> = match selection.resolve(replica) {
        Ok(dbs) => dbs
            .into_iter()
            .map(|(db, settings)| (absolute(&db.path).into_owned(), (db.name, settings)))
            .collect(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    };
    let known = |p: &Path| {
        placed
            .get(p)
            .map(|(name, settings)| Replicated { name, settings })
    };
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        if let Ok(rescan) = selection.rescan(replica, &known, &mut Vec::new()) {
            std::hint::black_box(rescan.changed);
        }
    }
    println!(
        "{} databases: {:.2} ms a rescan",
        placed.len(),
        started.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
}
