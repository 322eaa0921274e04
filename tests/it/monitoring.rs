//! What `watch` tells the world about itself: the dead-man's-switch
//! heartbeat and webhooks, against a small HTTP receiver that records what
//! arrives; the Prometheus endpoint, scraped while storage fails and
//! after; periodic validation finding a flipped byte; `explain`.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    method: String,
    target: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP receiver on loopback: answers every request 200 and records
/// each one whole.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(conn, &seen));
            }
        });
        Receiver { url, hits }
    }

    fn count_between(&self, from: Instant, to: Instant) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "GET" && h.at >= from && h.at < to)
            .count()
    }

    /// The POSTs to `target`.
    fn posts(&self, target: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "POST" && h.target == target)
            .cloned()
            .collect()
    }
}

/// Reads requests off one connection (keep-alive) and records them.
fn serve(conn: TcpStream, seen: &Mutex<Vec<Hit>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            if let Some((name, value)) = header.trim_end().split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            header.clear();
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(Hit {
            at: Instant::now(),
            method,
            target,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let mut w = &conn;
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        line.clear();
    }
}

/// Scrapes until `series` satisfies `ok` (or panics after `timeout`).
fn wait_for_sample(addr: &str, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = scrape(addr).and_then(|t| sample(&t, series));
        if let Some(v) = value.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {value:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
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
        .hits
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.target.clone())
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
    // A WAL rate on record: main was watched, and its local state says
    // 1,200 pages were shipped in the 2 minutes since its snapshot.
    dest.replicate_commits(&main, "main", 1, 1, 100);
    let state_file = dir.path().join(".main.db-walsync").join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    state["last_snapshot_ms"] = (now_ms - 120_000).into();
    state["pages_since_snapshot"] = 1200.into();
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"{}\"\n[sync]\nsnapshot_interval = \"30m\"\nvalidation_interval = \"1h\"\n[retention]\npitr_window = \"6h\"\nsnapshot_retention = \"7d\"\n[monitoring]\nheartbeat_url = \"https://hc-ping.com/secret-token\"\nmetrics_addr = \":9464\"\n[[webhooks]]\nurl = \"https://hooks.example.com/T0/webhook-token\"\nsecret = \"webhook-secret\"\nevents = [\"sync_failed\", \"recovered\"]\n[[databases]]\npath = \"{}/tenants/*/app.db\"\nname = \"t/{{1}}\"\n[[databases]]\npath = \"{}\"\nname = \"main\"\nsync_interval = \"250ms\"\nsnapshot_max_changes = 5000\n",
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
    assert_eq!(plan["metrics_addr"], "127.0.0.1:9464", "{plan}");
    assert_eq!(plan["webhooks"][0]["host"], "hooks.example.com", "{plan}");
    assert_eq!(plan["webhooks"][0]["signed"], true, "{plan}");
    assert_eq!(
        plan["webhooks"][0]["events"],
        serde_json::json!(["sync_failed", "recovered"]),
        "{plan}"
    );
    assert!(
        !text(&out).contains("webhook-token") && !text(&out).contains("webhook-secret"),
        "{}",
        text(&out)
    );
    assert_eq!(main_db["validation_interval"], "1h", "{plan}");
    // The estimate: main's 10 pages/s, the tenants' none on record.
    let month = &plan["databases"][0]["estimate_per_month"];
    let rate = month["wal_pages_per_second"].as_f64().unwrap();
    assert!((9.9..=10.0).contains(&rate), "{plan}");
    assert!(
        month["write_requests"].as_u64() > Some(1_000_000),
        "a file a 250 ms: {plan}"
    );
    assert!(month["usd"]["aws_s3"].as_f64() > Some(0.0), "{plan}");
    assert!(plan["databases"][1]["estimate_per_month"]["wal_pages_per_second"].is_null());
    // Nothing was replicated by explain.
    assert!(dest.files("t/acme").is_empty());
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
    assert!(
        said.contains("metrics: http://127.0.0.1:9464/metrics"),
        "{said}"
    );
    assert!(
        said.contains("webhook: POST to hooks.example.com (signed) on sync_failed, recovered"),
        "{said}"
    );
    assert!(
        said.contains("estimate per month: ") && said.contains("aws_s3 $"),
        "{said}"
    );
    assert!(
        said.contains("2 database(s) have no recorded WAL rate yet"),
        "{said}"
    );
}

/// Storage refuses uploads for a while under a steady writer: the lag
/// metric grows while it does and is 0 once walsync caught up; errors and
/// failed requests are counted; the log tells the outage in two lines.
#[test]
fn metrics_show_lag_while_storage_refuses_and_zero_once_caught_up() {
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
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "metrics", "r").via(&relay);
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(&cfg, "[retry]\nmax_retries = 0\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "100ms",
            "--config",
            cfg.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let lag = r#"walsync_db_lag_seconds{db="app"}"#;
    let files = r#"walsync_db_shipped_files_total{db="app"}"#;
    wait_for_sample(&addr, files, Duration::from_secs(10), |v| v >= 1.0);
    let before = scrape(&addr).unwrap();
    assert_eq!(sample(&before, lag), Some(0.0), "{before}");
    assert_eq!(sample(&before, "walsync_databases_watched"), Some(1.0));
    assert!(
        sample(
            &before,
            r#"walsync_storage_requests_total{op="put",outcome="ok"}"#
        ) >= Some(1.0)
    );
    outage.store(true, Ordering::SeqCst);
    let mut id = 1;
    let mut write_for = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            insert_ids(&mut conn, id..=id, 100);
            id += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    write_for(Duration::from_secs(3));
    let first = scrape(&addr).unwrap();
    write_for(Duration::from_secs(2));
    let second = scrape(&addr).unwrap();
    let (lag1, lag2) = (sample(&first, lag).unwrap(), sample(&second, lag).unwrap());
    assert!(lag1 >= 2.0, "lag {lag1} after 3 s of refusals\n{first}");
    assert!(lag2 >= lag1 + 1.5, "lag {lag1} then {lag2}: it grows");
    assert!(
        sample(
            &second,
            r#"walsync_db_errors_total{db="app",class="storage"}"#
        ) >= Some(1.0),
        "{second}"
    );
    assert!(
        sample(
            &second,
            r#"walsync_storage_requests_total{op="put",outcome="error"}"#
        ) >= Some(1.0),
        "{second}"
    );
    let files_then = sample(&second, files).unwrap();
    outage.store(false, Ordering::SeqCst);
    wait_for_sample(&addr, lag, Duration::from_secs(20), |v| v == 0.0);
    let after = scrape(&addr).unwrap();
    assert!(sample(&after, files) > Some(files_then), "{after}");
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    let of_db: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("walsync: app: "))
        .collect();
    let count = |what: &str| of_db.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("retrying in"), 1, "{}", of_db.join("\n"));
    assert_eq!(count("recovered after"), 1, "{}", of_db.join("\n"));
    assert!(
        of_db
            .iter()
            .any(|l| l.contains("file(s) shipped; caught up")),
        "{}",
        of_db.join("\n")
    );
    // Every line carries a timestamp and a level.
    for line in log.lines().filter(|l| l.contains("walsync: app: ")) {
        let mut words = line.split(' ');
        let time = words.next().unwrap_or("");
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{line}");
        assert!(
            matches!(words.next(), Some("INFO" | "WARN" | "ERROR" | "DEBUG")),
            "{line}"
        );
    }
}

/// The webhooks a fleet's life calls for arrive in order, each signed with
/// HMAC-SHA256 over its exact body; a webhook gets only the events it
/// asked for; neither the secret nor the URL's token is logged.
#[test]
fn webhooks_arrive_in_order_and_signed() {
    use hmac::{KeyInit, Mac};
    const UP: u8 = 0;
    const DOWN: u8 = 1;
    const DENIED: u8 = 2;
    let server = S3Server::start();
    let mode = Arc::new(AtomicU8::new(UP));
    let now = mode.clone();
    let relay = Relay::start(&server.endpoint, move |_, method| {
        match (method, now.load(Ordering::SeqCst)) {
            ("PUT", DOWN) => Action::SlowDown,
            ("PUT", DENIED) => Action::AccessDenied,
            _ => Action::Forward,
        }
    });
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    let dest = Dest::s3(&server, "hooks", "r").via(&relay);
    let a = tenants.join("a.db");
    let mut conn = create_db(&a, 4096);
    let secret = "hook-secret-4242";
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sync]\ndiscover_interval = \"500ms\"\n[retry]\nmax_retries = 0\ncircuit_breaker_threshold = 3\ncircuit_breaker_cooldown_ms = 500\n\
             [[webhooks]]\nurl = \"{url}/hook/tok-123\"\nsecret = \"{secret}\"\n\
             [[webhooks]]\nurl = \"{url}/discovered\"\nevents = [\"database_discovered\"]\n\
             [[databases]]\npath = \"{}/*.db\"\n",
            tenants.display(),
            url = receiver.url
        ),
    )
    .unwrap();
    let w = dest.watch(
        &[],
        &[
            "--sync-interval",
            "100ms",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    dest.wait_for_txid("a", 1, Duration::from_secs(20));
    // A tenant appears.
    let b = tenants.join("b.db");
    create_db(&b, 4096);
    dest.wait_for_txid("b", 1, Duration::from_secs(20));
    // Storage refuses a's uploads past the first summary (30 s).
    mode.store(DOWN, Ordering::SeqCst);
    let mut id = 1;
    let started = Instant::now();
    while Instant::now() < started + Duration::from_secs(33) {
        insert_ids(&mut conn, id..=id, 100);
        id += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    mode.store(UP, Ordering::SeqCst);
    dest.wait_for_txid("a", dest.max_txid("a") + 1, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .posts("/hook/tok-123")
        .iter()
        .any(|h| h.body.contains("\"recovered\""))
    {
        assert!(Instant::now() < deadline, "no recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Credentials refused.
    mode.store(DENIED, Ordering::SeqCst);
    insert_ids(&mut conn, id..=id, 100);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !receiver
        .posts("/hook/tok-123")
        .iter()
        .any(|h| h.body.contains("auth_failure"))
    {
        assert!(Instant::now() < deadline, "no auth_failure");
        std::thread::sleep(Duration::from_millis(100));
    }
    mode.store(UP, Ordering::SeqCst);
    // The tenant goes.
    std::fs::remove_file(&b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !receiver
        .posts("/hook/tok-123")
        .iter()
        .any(|h| h.body.contains("database_removed"))
    {
        assert!(Instant::now() < deadline, "no database_removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(!log.contains(secret) && !log.contains("tok-123"), "{log}");
    let hits = receiver.posts("/hook/tok-123");
    let mut events = Vec::new();
    for hit in &hits {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(hit.body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hit.header("x-walsync-signature"),
            Some(format!("sha256={hex}").as_str()),
            "{hit:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&hit.body).unwrap();
        assert_eq!(
            hit.header("x-walsync-event"),
            v["event"].as_str(),
            "{hit:?}"
        );
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
        assert!(
            v["timestamp"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok(),
            "{v}"
        );
        events.push((
            v["event"].as_str().unwrap().to_string(),
            v["database"].as_str().map(str::to_string),
            v,
        ));
    }
    let names: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|(e, d, _)| (e.as_str(), d.as_deref()))
        .collect();
    // In order, each once (the circuit may open once more under refused
    // credentials).
    let expected = [
        ("database_discovered", Some("b")),
        ("circuit_breaker_open", None),
        ("sync_failed", Some("a")),
        ("recovered", Some("a")),
        ("auth_failure", Some("a")),
        ("database_removed", Some("b")),
    ];
    let mut at = 0;
    for e in &names {
        if at < expected.len() && *e == expected[at] {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "{names:?}");
    for (event, _, v) in &events {
        match event.as_str() {
            "sync_failed" => {
                assert!(v["attempts"].as_u64() >= Some(2), "{v}");
                assert!(v["error"].as_str().unwrap().contains("SlowDown"), "{v}");
            }
            "auth_failure" => assert!(v["error"].as_str().unwrap().contains("credentials"), "{v}"),
            _ => {}
        }
    }
    let only: Vec<String> = receiver
        .posts("/discovered")
        .iter()
        .map(|h| h.body.clone())
        .collect();
    assert_eq!(only.len(), 1, "{only:?}");
    assert!(only[0].contains("\"database_discovered\""), "{only:?}");
    assert!(receiver.posts("/discovered")[0]
        .header("x-walsync-signature")
        .is_none());
}

/// A byte flipped in a stored file is found by the periodic validation:
/// said in the log, in the metrics and by the webhook.
#[test]
fn periodic_validation_catches_a_flipped_byte() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let dest = Dest::file(&replica);
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert(&mut conn, 200, 500, 7);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[webhooks]]\nurl = \"{}/v\"\nevents = [\"validation_failed\"]\n",
            receiver.url
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let w = dest.watch(
        &[&db],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--validation-interval",
            "1s",
            "--metrics-addr",
            &addr,
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let ok = r#"walsync_db_validation_ok{db="app"}"#;
    wait_for_sample(&addr, ok, Duration::from_secs(15), |v| v == 1.0);
    let snapshot = find_files(&replica, "ltx")
        .into_iter()
        .find(|p| p.parent().is_some_and(|d| d.ends_with("9")))
        .expect("a snapshot file");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, &bytes).unwrap();
    wait_for_sample(&addr, ok, Duration::from_secs(20), |v| v == 0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.posts("/v").is_empty() {
        assert!(Instant::now() < deadline, "no validation_failed webhook");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, log) = w.stop();
    let file_name = snapshot.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR walsync: app: validation FAILED") && l.contains(&file_name)),
        "{log}"
    );
    let v: serde_json::Value = serde_json::from_str(&receiver.posts("/v")[0].body).unwrap();
    assert_eq!(v["event"], "validation_failed", "{v}");
    assert_eq!(v["database"], "app", "{v}");
}

/// Every file under `root` whose name ends with `.ext`.
fn find_files(root: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_metrics_address_in_use_stops_watch_before_it_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    create_db(&db, 4096);
    let out = dest.walsync(&[
        "watch",
        db.to_str().unwrap(),
        "-b",
        &dest.url,
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot serve metrics"),
        "{}",
        text(&out)
    );
    assert!(dest.files("app").is_empty(), "nothing was replicated");
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        "[[webhooks]]\nurl = \"https://x.example/h\"\nevents = [\"sync_fialed\"]\n",
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
        stderr(&out).contains("unknown event 'sync_fialed'"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("sync_failed"),
        "known events listed: {}",
        text(&out)
    );
}
