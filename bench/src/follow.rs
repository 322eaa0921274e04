//! The follow phase: read replicas side by side. One primary database per
//! tool, written alike (a commit about every second, at a random phase),
//! replicated at a 1 s sync interval straight to s3s-fs (not counted);
//! each tool's follower (`walsync replicate --interval 1s`, `litestream
//! restore -f -follow-interval 1s`) reads its tool's replica through the
//! counting proxy. Measured per follower: the time from a commit on the
//! primary to the row being visible to a read-only reader of the
//! follower's file (p50, p99), its requests per hour while the primary
//! writes and while it is idle, and its RSS.

use super::*;

const SYNC: Duration = Duration::from_secs(1);

fn ls_yaml(db: &Path, prefix: &str, endpoint: &str) -> String {
    format!(
        "dbs:\n  - path: {}\n    monitor-interval: 1s\n    replica:\n      type: s3\n      bucket: {LS}\n      path: {prefix}/db\n      endpoint: {endpoint}\n      region: us-east-1\n      access-key-id: {ACCESS_KEY}\n      secret-access-key: {SECRET_KEY}\n      force-path-style: true\n      sync-interval: 1s\n",
        db.display()
    )
}

fn spawn(env: &Env, mut cmd: Command, log_name: &str, tool: Tool) -> R<Running> {
    let logf = std::fs::File::create(env.work.join(log_name))?;
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    Ok(Running {
        tool,
        child: cmd.spawn()?,
    })
}

fn walsync_cmd(env: &Env, endpoint: &str) -> Command {
    let mut c = Command::new(&env.opts.walsync);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL_S3", endpoint)
        .env("AWS_REGION", "us-east-1");
    c
}

/// The highest id a read-only reader sees in `path`, if it can open it.
fn visible_max(path: &Path) -> Option<i64> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(Duration::from_millis(200)).ok()?;
    c.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
        .ok()
}

pub fn run(env: &Env) -> R<Value> {
    let o = &env.opts;
    let phase = "follow";
    let dir = env.work.join(phase);
    std::fs::create_dir_all(&dir)?;
    let primary = [
        dir.join("walsync-primary.db"),
        dir.join("litestream-primary.db"),
    ];
    for p in &primary {
        create_db(p)?;
    }
    let ls_cfg = dir.join("primary.yml");
    std::fs::write(&ls_cfg, ls_yaml(&primary[1], phase, &env.direct))?;
    let mut wp = walsync_cmd(env, &env.direct);
    wp.arg("watch")
        .arg(&primary[0])
        .args(["-b", &format!("s3://{WS}/{phase}"), "--sync-interval", "1s"])
        .args(["--socket", &dir.join("primary.sock").display().to_string()]);
    let ws_primary = spawn(env, wp, "follow-walsync-primary.log", Tool::Walsync)?;
    let mut lp = Command::new(&o.litestream);
    lp.arg("replicate")
        .arg("-config")
        .arg(&ls_cfg)
        .env_remove("AWS_CA_BUNDLE");
    let ls_primary = spawn(env, lp, "follow-litestream-primary.log", Tool::Litestream)?;
    thread::sleep(Duration::from_secs(4));
    let local = [
        dir.join("walsync-follower.db"),
        dir.join("litestream-follower.db"),
    ];
    // walsync names the primary's replica after its file.
    let mut wf = walsync_cmd(env, &env.proxied);
    wf.args(["replicate", "walsync-primary", "--interval", "1s"])
        .arg("--local")
        .arg(&local[0])
        .args(["-b", &format!("s3://{WS}/{phase}")]);
    let ws_follower = spawn(env, wf, "follow-walsync-follower.log", Tool::Walsync)?;
    let follow_cfg = dir.join("follower.yml");
    std::fs::write(&follow_cfg, ls_yaml(&primary[1], phase, &env.proxied))?;
    let mut lf = Command::new(&o.litestream);
    lf.args(["restore", "-f", "-follow-interval", "1s", "-config"])
        .arg(&follow_cfg)
        .arg("-o")
        .arg(&local[1])
        .arg(&primary[1])
        .env_remove("AWS_CA_BUNDLE");
    let ls_follower = spawn(env, lf, "follow-litestream-follower.log", Tool::Litestream)?;
    let pids = vec![ws_follower.pid(), ls_follower.pid()];
    let boot = Instant::now() + Duration::from_secs(60);
    while !local.iter().all(|l| visible_max(l).is_some()) {
        if Instant::now() > boot {
            return Err("a follower did not restore within 60 s".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    log(format!(
        "{phase}: both followers are up; idle for {}s",
        o.follow_idle_secs
    ));
    let c0 = env.counters.snapshot();
    thread::sleep(Duration::from_secs(o.follow_idle_secs));
    let c1 = env.counters.snapshot();
    log(format!(
        "{phase}: {} commits on each primary",
        o.follow_commits
    ));
    let sampler = Sampler::start(pids.clone());
    let writers: Vec<Connection> = primary.iter().map(|p| open_writer(p)).collect::<R<_>>()?;
    let mut rng = Rng::new(5);
    let mut lags: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut timeouts = [0usize; 2];
    let started = Instant::now();
    for k in 1..=o.follow_commits as i64 {
        thread::sleep(Duration::from_millis(rng.below(1000) + 20));
        let body = rng.bytes(100);
        for w in &writers {
            w.execute(
                "INSERT INTO t(id, body) VALUES (?1, ?2)",
                params![k + 1, body],
            )?;
        }
        let t0 = Instant::now();
        let mut pending = vec![0usize, 1];
        let deadline = t0 + SYNC * 2 + Duration::from_secs(10);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|&i| {
                if visible_max(&local[i]).is_some_and(|m| m > k) {
                    lags[i].push(t0.elapsed().as_secs_f64() * 1000.0);
                    false
                } else {
                    true
                }
            });
            thread::sleep(Duration::from_millis(5));
        }
        for i in pending {
            timeouts[i] += 1;
        }
    }
    let busy_secs = started.elapsed().as_secs_f64();
    let c2 = env.counters.snapshot();
    let medians = sampler.finish();
    let peaks: Vec<u64> = pids
        .iter()
        .map(|p| status_kib(*p, "VmHWM:").unwrap_or(0))
        .collect();
    for p in [ws_follower, ls_follower, ws_primary, ls_primary] {
        p.stop();
    }
    for l in &mut lags {
        l.sort_by(f64::total_cmp);
    }
    let per_hour = |a: &BTreeMap<(String, String), u64>, b, bucket, secs: f64| {
        let d = diff(a, b, bucket);
        let total: u64 = d.values().sum();
        json!({ "by_kind": d, "per_hour": (total as f64 * 3600.0 / secs).round() })
    };
    let idle = o.follow_idle_secs as f64;
    let per = |i: usize, tool: Tool| {
        json!({
            "lag_p50_ms": pct(&lags[i], 0.5),
            "lag_p99_ms": pct(&lags[i], 0.99),
            "lag_samples": lags[i].len(),
            "timeouts": timeouts[i],
            "rss_median_kib": medians[i],
            "rss_peak_kib": peaks[i],
            "requests_idle": per_hour(&c0, &c1, tool.bucket(), idle),
            "requests_busy": per_hour(&c1, &c2, tool.bucket(), busy_secs),
        })
    };
    Ok(json!({
        "commits": o.follow_commits,
        "idle_secs": o.follow_idle_secs,
        "walsync": per(0, Tool::Walsync),
        "litestream": per(1, Tool::Litestream),
    }))
}

pub fn report(s: &mut String, r: &Value) {
    if r.is_null() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Read replica: a commit a second on the primary ({} commits), primary sync 1 s, follower interval 1 s; the followers' requests counted ({} s idle first)\n",
        r["commits"], r["idle_secs"]
    );
    let _ = writeln!(
        s,
        "| follower | walsync replicate | litestream restore -f |"
    );
    let _ = writeln!(s, "|---|---:|---:|");
    let row = |s: &mut String, what: &str, f: &dyn Fn(&Value) -> String| {
        let _ = writeln!(
            s,
            "| {what} | {} | {} |",
            f(&r["walsync"]),
            f(&r["litestream"])
        );
    };
    let ms = |v: &Value, k: &str| format!("{:.0} ms", v[k].as_f64().unwrap_or(f64::NAN));
    row(s, "commit → visible p50", &|v| ms(v, "lag_p50_ms"));
    row(s, "commit → visible p99", &|v| ms(v, "lag_p99_ms"));
    row(s, "samples (timeouts)", &|v| {
        format!("{} ({})", v["lag_samples"], v["timeouts"])
    });
    row(s, "requests per hour, primary idle", &|v| {
        v["requests_idle"]["per_hour"].to_string()
    });
    row(s, "requests per hour, primary writing", &|v| {
        v["requests_busy"]["per_hour"].to_string()
    });
    row(s, "RSS median / peak (MiB)", &|v| {
        format!(
            "{:.1} / {:.1}",
            v["rss_median_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            v["rss_peak_kib"].as_f64().unwrap_or(0.0) / 1024.0
        )
    });
}
