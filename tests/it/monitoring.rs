//! What `watch` tells the world about itself: the dead-man's-switch
//! heartbeat, against a small HTTP receiver that counts what arrives.

use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP receiver on loopback: answers every request 200 and records
/// when each GET arrived and its target.
struct Receiver {
    url: String,
    gets: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gets = Arc::new(Mutex::new(Vec::new()));
        let seen = gets.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        let mut parts = line.split_whitespace();
                        let (method, target) =
                            (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        if method == "GET" {
                            seen.lock()
                                .unwrap()
                                .push((Instant::now(), target.to_string()));
                        }
                        // Headers up to the blank line; GETs have no body.
                        let mut header = String::new();
                        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                            header.clear();
                        }
                        let mut w = &conn;
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        line.clear();
                    }
                });
            }
        });
        Receiver { url, gets }
    }

    fn count_between(&self, from: Instant, to: Instant) -> usize {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .count()
    }
}

#[test]
fn the_heartbeat_goes_out_while_caught_up_and_is_held_back_while_behind() {
    let server = S3Server::start();
    let outage = Arc::new(AtomicBool::new(false));
    let down = outage.clone();
    let relay = Relay::start(&server.endpoint, move |_, method| {
        if method == "PUT" && down.load(Ordering::SeqCst) {
            Action::SlowDown
        } else {
            Action::Forward
        }
    });
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "heartbeat", "r").via(&relay);
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[retry]\nmax_retries = 0\n[monitoring]\nheartbeat_url = \"{}/ping/secret-token\"\nheartbeat_interval = \"1s\"\n",
            receiver.url
        ),
    )
    .unwrap();
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "100ms",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    // Caught up: about one a second.
    let t0 = Instant::now();
    for id in 1..=40 {
        insert_ids(&mut conn, id..=id, 100);
        std::thread::sleep(Duration::from_millis(100));
    }
    let t1 = Instant::now();
    let caught_up = receiver.count_between(t0, t1);
    // Storage refuses every upload while commits keep coming: held back
    // once the oldest waits more than the interval.
    outage.store(true, Ordering::SeqCst);
    for id in 41..=80 {
        insert_ids(&mut conn, id..=id, 100);
        std::thread::sleep(Duration::from_millis(100));
    }
    let t2 = Instant::now();
    let behind = receiver.count_between(t1 + Duration::from_secs(2), t2);
    outage.store(false, Ordering::SeqCst);
    dest.wait_for_txid("app", dest.max_txid("app") + 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let back = receiver.count_between(t2, Instant::now());
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(
        (2..=6).contains(&caught_up),
        "{caught_up} heartbeats in 4 s caught up\n{log}"
    );
    assert_eq!(behind, 0, "heartbeats while behind\n{log}");
    assert!(back >= 1, "no heartbeat after catching up\n{log}");
    assert!(log.contains("heartbeat held back"), "{log}");
    assert!(
        !log.contains("secret-token"),
        "the URL's token never shows:\n{log}"
    );
    let targets: Vec<String> = receiver
        .gets
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert!(
        targets.iter().all(|t| t == "/ping/secret-token"),
        "{targets:?}"
    );
}

#[test]
fn a_bad_heartbeat_url_is_a_config_error_that_does_not_quote_it() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    create_db(&db, 4096);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        "[monitoring]\nheartbeat_url = \"hc-ping.com/secret-token\"\n",
    )
    .unwrap();
    let out = dest.walsync(&[
        "watch",
        db.to_str().unwrap(),
        "-b",
        &dest.url,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("heartbeat_url is not an http"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("secret-token"), "{}", text(&out));
}

#[test]
fn explain_says_what_watch_would_do_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    for tenant in ["acme", "bolt"] {
        create_db(
            &dir.path().join("tenants").join(tenant).join("app.db"),
            4096,
        );
    }
    let main = dir.path().join("main.db");
    create_db(&main, 4096);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"{}\"\n[sync]\nsnapshot_interval = \"30m\"\n[retention]\npitr_window = \"6h\"\nsnapshot_retention = \"7d\"\n[monitoring]\nheartbeat_url = \"https://hc-ping.com/secret-token\"\n[[databases]]\npath = \"{}/tenants/*/app.db\"\nname = \"t/{{1}}\"\n[[databases]]\npath = \"{}\"\nname = \"main\"\nsync_interval = \"250ms\"\nsnapshot_max_changes = 5000\n",
            dest.url,
            dir.path().display(),
            main.display()
        ),
    )
    .unwrap();
    let out = walsync(
        &["explain", "--config", cfg.to_str().unwrap(), "--json"],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let names: Vec<&str> = plan["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, vec!["main", "t/acme", "t/bolt"], "{plan}");
    let main_db = &plan["databases"][0]["settings"];
    assert_eq!(main_db["sync_interval"], "250ms", "{plan}");
    assert_eq!(
        main_db["snapshot_interval"], "30m",
        "[sync] applies: {plan}"
    );
    assert_eq!(main_db["snapshot_max_changes"], 5000, "{plan}");
    assert_eq!(
        plan["databases"][1]["settings"]["sync_interval"], "1s",
        "{plan}"
    );
    assert_eq!(plan["retention"]["pitr_window"], "6h", "{plan}");
    assert_eq!(
        plan["retention"]["snapshots_kept"]["by_age"], "7d",
        "{plan}"
    );
    assert_eq!(plan["heartbeat"]["host"], "hc-ping.com", "{plan}");
    assert!(!text(&out).contains("secret-token"), "{}", text(&out));
    // Nothing was replicated.
    assert!(dest.files("main").is_empty());
    let out = walsync(&["explain", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("databases: 3") && said.contains("-> t/acme"),
        "{said}"
    );
    assert!(
        said.contains("retention: every TXID of the last 6h restores"),
        "{said}"
    );
}
