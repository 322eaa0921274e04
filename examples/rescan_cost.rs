//! What one rescan of the selection costs while every database it names
//! but one is already replicated, without the rest of `watch` around it:
//! a full one (what `watch` does after a reload, every 5 minutes, or when
//! the kernel could not say what changed) and one that looks only at the
//! folder that appeared (what `watch` does when a tenant is added).
//! `scripts/fleet-scale.sh` measures the same in the running process.
//!
//!   cargo run --release --example rescan_cost -- CONFIG [ROUNDS]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use walsync::glob::Scope;
use walsync::selection::{absolute, Replicated, Running, Selection};
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
    // The last database is the one that appeared: the scope is its folder.
    let Some(newest) = placed.keys().max().cloned() else {
        eprintln!("the configuration names no database");
        std::process::exit(2);
    };
    let appeared = vec![newest.parent().unwrap_or(&newest).to_path_buf()];
    let mut running = Known(placed, HashMap::new());
    running.0.remove(&newest);
    running.1 = running
        .0
        .iter()
        .map(|(key, (name, _))| (name.clone(), key.clone()))
        .collect();
    for (label, scope) in [
        ("full", Scope::Everywhere),
        ("one new folder", Scope::Under(&appeared)),
    ] {
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            if let Ok(rescan) = selection.rescan(replica, &&running, scope, &mut |_| {}) {
                assert_eq!(rescan.changed.len(), 1, "the new database is found");
                std::hint::black_box(rescan.changed);
            }
        }
        println!(
            "{} databases, {label}: {:.3} ms a rescan",
            running.0.len() + 1,
            started.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
        );
    }
}

/// The databases replicated, by absolute path, and their paths by name.
struct Known(
    HashMap<PathBuf, (String, Settings)>,
    HashMap<String, PathBuf>,
);

impl<'k> Running<'k> for &'k Known {
    fn replicated(&self, key: &Path) -> Option<Replicated<'k>> {
        self.0
            .get(key)
            .map(|(name, settings)| Replicated { name, settings })
    }

    fn taken_by(&self, name: &str) -> Option<&'k Path> {
        self.1.get(name).map(PathBuf::as_path)
    }
}
