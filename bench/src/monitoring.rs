//! The monitoring phase: what metrics, webhooks, the heartbeat and
//! periodic validation cost a fleet. Three processes replicate copies of
//! the same databases under the same writes, side by side: walsync plain,
//! walsync with everything of issue 14 switched on (a metrics endpoint
//! scraped every 5 s, two webhooks, a heartbeat every 10 s, validation of
//! each database every minute), and Litestream with its metrics endpoint
//! scraped alike. Measured per process: median and peak RSS, CPU, and the
//! lag from a commit to its level-0 file on the server, sampled on ten
//! databases of each that the fleet writer leaves alone.

use super::*;

/// A loopback HTTP receiver that answers 200 to everything (webhooks and
/// heartbeats); returns its base URL.
fn receiver() -> R<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok(url)
}

fn free_port() -> R<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GETs `/metrics` at `addr`; returns the answer's length, how long it
/// took, and how many databases it shows validated.
fn scrape(addr: &str) -> Option<(usize, f64, usize)> {
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).ok()?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let validated = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("walsync_db_validation_ok{"))
        .count();
    Some((body.len(), took, validated))
}

/// The config of a walsync process: the same databases and sync interval
/// for both, and with `monitoring` (the metrics address and the
/// receiver's URL) everything of issue 14 on.
fn walsync_config(env: &Env, set: &DbSet, monitoring: Option<(&str, &str)>) -> R<PathBuf> {
    let name = if monitoring.is_some() {
        "monitored"
    } else {
        "plain"
    };
    let socket = env.work.join(format!("monitoring-{name}.sock"));
    let mut t = format!(
        "[s3]\nbucket = \"s3://{WS}/{}\"\n[control]\nsocket = \"{}\"\n[sync]\nsync_interval = \"1s\"\n",
        set.prefix,
        socket.display()
    );
    if let Some((metrics, hooks)) = monitoring {
        let _ = write!(
            t,
            "validation_interval = \"{VALIDATION}\"\n\
             [monitoring]\nmetrics_addr = \"{metrics}\"\nheartbeat_url = \"{hooks}/ping\"\nheartbeat_interval = \"10s\"\n\
             [[webhooks]]\nurl = \"{hooks}/a\"\nsecret = \"bench-secret\"\n[[webhooks]]\nurl = \"{hooks}/b\"\n"
        );
    }
    for i in 0..set.n {
        let _ = write!(t, "[[databases]]\npath = \"{}\"\n", set.path(i).display());
    }
    let path = env.work.join(format!("monitoring-walsync-{name}.toml"));
    std::fs::write(&path, t)?;
    Ok(path)
}

/// How often the monitored walsync validates each database: at 1,000
/// databases that is more validations than the validator's pace allows,
/// so it runs back to back from 20 s after start (before the window
/// opens), which is its heaviest.
const VALIDATION: &str = "20s";

fn start_walsync(env: &Env, config: &Path, name: &str) -> R<Running> {
    let logf = std::fs::File::create(env.work.join(format!("monitoring-walsync-{name}.log")))?;
    let child = Command::new(&env.opts.walsync)
        .arg("watch")
        .arg("--config")
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL_S3", &env.proxied)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()?;
    Ok(Running {
        tool: Tool::Walsync,
        child,
    })
}

fn start_litestream(env: &Env, set: &DbSet, metrics: &str) -> R<Running> {
    let cfg = env.work.join("monitoring-litestream.yml");
    let yaml = format!(
        "addr: {metrics}\n{}",
        litestream_yaml(env, &[set], Duration::from_secs(1), &env.proxied)
    );
    std::fs::write(&cfg, yaml)?;
    let logf = std::fs::File::create(env.work.join("monitoring-litestream.log"))?;
    let child = Command::new(&env.opts.litestream)
        .arg("replicate")
        .arg("-config")
        .arg(&cfg)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()?;
    Ok(Running {
        tool: Tool::Litestream,
        child,
    })
}

/// Databases that only the lag sampler writes.
const LAG_DBS: usize = 10;

/// Commits on each lag database of every set in turn, one a second, and
/// measures for each set how long until its level-0 file is on the server.
fn sample_lag(env: &Env, sets: &[&DbSet], until: Instant) -> R<Vec<Vec<f64>>> {
    let mut conns = Vec::new();
    for set in sets {
        let mut row = Vec::new();
        for i in 0..LAG_DBS {
            row.push(open_writer(&set.path(i))?);
        }
        conns.push(row);
    }
    let mut lags = vec![Vec::new(); sets.len()];
    let mut rng = Rng::new(77);
    let mut k = 0;
    while Instant::now() < until {
        let i = k % LAG_DBS;
        k += 1;
        thread::sleep(Duration::from_millis(rng.below(1000) + 20));
        let body = rng.bytes(100);
        let mut waiting = Vec::new();
        for (s, set) in sets.iter().enumerate() {
            let remote = set.remote_dir(env, i);
            let before = max_l0_txid(&remote);
            conns[s][i].execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
            waiting.push((s, remote, before, Instant::now()));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !waiting.is_empty() && Instant::now() < deadline {
            waiting.retain(|(s, remote, before, t0)| {
                if max_l0_txid(remote) > *before {
                    lags[*s].push(t0.elapsed().as_secs_f64() * 1000.0);
                    false
                } else {
                    true
                }
            });
            thread::sleep(Duration::from_millis(2));
        }
    }
    for l in &mut lags {
        l.sort_by(f64::total_cmp);
    }
    Ok(lags)
}

pub fn run(env: &Env) -> R<Value> {
    let o = &env.opts;
    let n = o.monitor_dbs.max(LAG_DBS + 1);
    let window = o.monitor_secs;
    let phase = "monitoring";
    log(format!(
        "{phase}: creating {n} databases for each of three processes"
    ));
    let (plain, ls_set) = create_sets(env, phase, n)?;
    let watched = DbSet {
        tool: Tool::Walsync,
        dir: env.work.join(phase).join("walsync-monitored"),
        prefix: format!("{phase}-monitored"),
        n,
    };
    std::fs::create_dir_all(&watched.dir)?;
    for i in 0..n {
        std::fs::copy(plain.path(i), watched.path(i))?;
    }
    let hooks = receiver()?;
    let (ws_metrics, ls_metrics) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let plain_config = walsync_config(env, &plain, None)?;
    let watched_config = walsync_config(env, &watched, Some((&ws_metrics, &hooks)))?;
    let mut a = start_walsync(env, &plain_config, "plain")?;
    let mut b = start_walsync(env, &watched_config, "monitored")?;
    let mut c = start_litestream(env, &ls_set, &ls_metrics)?;
    let boot = 60 + n as u64 / 5;
    wait_initial(env, &plain, boot, &mut a)?;
    wait_initial(env, &watched, boot, &mut b)?;
    wait_initial(env, &ls_set, boot, &mut c)?;
    thread::sleep(Duration::from_secs(2));
    log(format!(
        "{phase}: all three replicate every database; writing for {window}s"
    ));
    let pids = vec![a.pid(), b.pid(), c.pid()];
    let sampler = Sampler::start(pids.clone());
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
    let until = Instant::now() + Duration::from_secs(window);
    let stop_scrapes = Arc::new(AtomicBool::new(false));
    let scrapes = {
        let (stop, addrs) = (
            stop_scrapes.clone(),
            [ws_metrics.clone(), ls_metrics.clone()],
        );
        thread::spawn(move || {
            let mut seen: Vec<Vec<(usize, f64, usize)>> = vec![Vec::new(), Vec::new()];
            while !stop.load(Ordering::Relaxed) {
                for (k, addr) in addrs.iter().enumerate() {
                    if let Some(s) = scrape(addr) {
                        seen[k].push(s);
                    }
                }
                thread::sleep(Duration::from_secs(5));
            }
            seen
        })
    };
    let writer = {
        let sets = [plain.clone(), watched.clone(), ls_set.clone()];
        thread::spawn(move || -> R<u64> {
            let mut conns = Vec::new();
            for i in LAG_DBS..n {
                let mut row = Vec::new();
                for set in &sets {
                    row.push(open_writer(&set.path(i))?);
                }
                conns.push(row);
            }
            let rate = ((n - LAG_DBS) as f64 * 2.0).min(100.0);
            let mut rng = Rng::new(n as u64);
            let start = Instant::now();
            let mut k = 0u64;
            while Instant::now() < until {
                let row = &conns[(k as usize) % conns.len()];
                let body = rng.bytes(100);
                for conn in row {
                    conn.execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
                }
                k += 1;
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            Ok(k)
        })
    };
    let lags = sample_lag(env, &[&plain, &watched, &ls_set], until)?;
    let commits = writer.join().map_err(|_| "writer panicked")??;
    thread::sleep(Duration::from_secs(2));
    stop_scrapes.store(true, Ordering::Relaxed);
    let scraped = scrapes.join().map_err(|_| "scraper panicked")?;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_secs(*p) - c0)
        .collect();
    let medians = sampler.finish();
    let peaks: Vec<u64> = pids
        .iter()
        .map(|p| status_kib(*p, "VmHWM:").unwrap_or(0))
        .collect();
    let validated = std::fs::read_to_string(env.work.join("monitoring-walsync-monitored.log"))
        .map(|l| l.matches("validation FAILED").count())
        .unwrap_or(0);
    for (p, name) in [(a, "plain"), (b, "monitored")] {
        if !p.stop() {
            env.fail(format!(
                "{phase}: walsync ({name}) did not exit 0 on SIGINT"
            ));
        }
    }
    c.stop();
    if validated > 0 {
        env.fail(format!(
            "{phase}: {validated} validation(s) failed on a healthy replica"
        ));
    }
    for i in sample_indices(n, 5) {
        check_restore(env, &watched, i, Tool::Walsync)?;
    }
    let per = |k: usize| {
        let l = &lags[k];
        json!({
            "rss_median_kib": medians[k],
            "rss_peak_kib": peaks[k],
            "cpu_s": cpu[k],
            "lag_samples": l.len(),
            "lag_p50_ms": pct(l, 0.50),
            "lag_p99_ms": pct(l, 0.99),
        })
    };
    let scrape_json = |k: usize| {
        let s = &scraped[k];
        let mut ms: Vec<f64> = s.iter().map(|x| x.1).collect();
        ms.sort_by(f64::total_cmp);
        json!({
            "scrapes": s.len(),
            "bytes": s.last().map_or(0, |x| x.0),
            "p50_ms": pct(&ms, 0.5),
            "max_ms": ms.last().copied().unwrap_or(f64::NAN),
            "databases_validated": s.last().map_or(0, |x| x.2),
        })
    };
    Ok(json!({
        "databases": n,
        "window_secs": window,
        "commits_per_process": commits,
        "walsync_plain": per(0),
        "walsync_monitored": per(1),
        "litestream_metrics": per(2),
        "walsync_scrape": scrape_json(0),
        "litestream_scrape": scrape_json(1),
    }))
}

pub fn report(s: &mut String, r: &Value) {
    if r.is_null() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Monitoring: {} databases, {} s at up to 100 commits/s in all; walsync plain, walsync with metrics (scraped every 5 s), two webhooks, a 10 s heartbeat and validation of each database every 60 s (back to back), Litestream with metrics (scraped alike)\n",
        r["databases"], r["window_secs"]
    );
    let _ = writeln!(
        s,
        "| | walsync plain | walsync monitored | Litestream + metrics |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let keys = ["walsync_plain", "walsync_monitored", "litestream_metrics"];
    let row = |s: &mut String, what: &str, f: &dyn Fn(&Value) -> String| {
        let cells: Vec<String> = keys.iter().map(|k| f(&r[*k])).collect();
        let _ = writeln!(s, "| {what} | {} |", cells.join(" | "));
    };
    let mib = |v: &Value, k: &str| format!("{:.1} MiB", v[k].as_f64().unwrap_or(0.0) / 1024.0);
    row(s, "RSS median", &|v| mib(v, "rss_median_kib"));
    row(s, "RSS peak", &|v| mib(v, "rss_peak_kib"));
    row(s, "CPU seconds", &|v| {
        format!("{:.1}", v["cpu_s"].as_f64().unwrap_or(0.0))
    });
    row(s, "lag p50 (commit to level-0 file)", &|v| {
        format!("{:.0} ms", v["lag_p50_ms"].as_f64().unwrap_or(f64::NAN))
    });
    row(s, "lag p99", &|v| {
        format!("{:.0} ms", v["lag_p99_ms"].as_f64().unwrap_or(f64::NAN))
    });
    row(s, "lag samples", &|v| v["lag_samples"].to_string());
    let _ = writeln!(
        s,
        "\nA scrape: walsync {} bytes, p50 {:.1} ms; Litestream {} bytes, p50 {:.1} ms. Databases the monitored walsync had validated by the end: {}.",
        r["walsync_scrape"]["bytes"],
        r["walsync_scrape"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["litestream_scrape"]["bytes"],
        r["litestream_scrape"]["p50_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
        r["walsync_scrape"]["databases_validated"]
    );
}
