//! The retention phase: a long run compressed into minutes, both tools
//! compacting and pruning their own copies of the same databases, then
//! idle. Measures, per database: objects stored at the end (by level), S3
//! requests by kind per hour under load and while idle, the files a latest
//! restore reads (GETs through the proxy), and walsync's `verify` time as
//! the run grows.
//!
//! The schedule is the defaults compressed (Litestream's and walsync's
//! alike): levels 30 s / 5 m / 1 h → 2 s / 10 s / 60 s, snapshots every
//! hour → 60 s, level 0 kept 5 m → 10 s after compaction, the window and
//! snapshot retention 24 h → 120 s.

use super::*;

const LEVELS: [&str; 3] = ["2s", "10s", "60s"];
const SNAPSHOT_INTERVAL: &str = "60s";
const L0_RETENTION: &str = "10s";
const WINDOW: &str = "120s";

fn walsync_config(env: &Env, set: &DbSet) -> R<PathBuf> {
    let mut t = format!(
        "[s3]\nbucket = \"s3://{WS}/{}\"\n[sync]\nsync_interval = \"1s\"\nsnapshot_interval = \"{SNAPSHOT_INTERVAL}\"\n[retention]\npitr_window = \"{WINDOW}\"\nsnapshot_retention = \"{WINDOW}\"\nl0_retention = \"{L0_RETENTION}\"\ncompaction_levels = [{}]\n",
        set.prefix,
        LEVELS.map(|l| format!("\"{l}\"")).join(", ")
    );
    for i in 0..set.n {
        let _ = write!(t, "[[databases]]\npath = \"{}\"\n", set.path(i).display());
    }
    let path = env.work.join("retention-walsync.toml");
    std::fs::write(&path, t)?;
    Ok(path)
}

fn litestream_config(env: &Env, set: &DbSet, endpoint: &str) -> R<PathBuf> {
    let mut y = String::from("levels:\n");
    for l in LEVELS {
        let _ = writeln!(y, "  - interval: {l}");
    }
    let _ = write!(
        y,
        "snapshot:\n  interval: {SNAPSHOT_INTERVAL}\n  retention: {WINDOW}\nl0-retention: {L0_RETENTION}\n"
    );
    y.push_str(&litestream_yaml(
        env,
        &[set],
        Duration::from_secs(1),
        endpoint,
    ));
    let path = env
        .work
        .join(format!("retention-litestream-{}.yml", endpoint.len()));
    std::fs::write(&path, y)?;
    Ok(path)
}

fn start(env: &Env, set: &DbSet) -> R<Running> {
    let logf = std::fs::File::create(env.work.join(format!("retention-{}.log", set.tool.label())))?;
    let mut cmd = match set.tool {
        Tool::Walsync => {
            let mut c = Command::new(&env.opts.walsync);
            c.arg("watch")
                .arg("--config")
                .arg(walsync_config(env, set)?)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_ENDPOINT_URL_S3", &env.proxied)
                .env("AWS_REGION", "us-east-1");
            c
        }
        Tool::Litestream => {
            let mut c = Command::new(&env.opts.litestream);
            c.arg("replicate")
                .arg("-config")
                .arg(litestream_config(env, set, &env.proxied)?)
                .env_remove("AWS_CA_BUNDLE");
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    Ok(Running {
        tool: set.tool,
        child: cmd.spawn()?,
    })
}

/// Objects per level over all databases of a set, and in all.
fn objects(env: &Env, set: &DbSet) -> (BTreeMap<String, usize>, usize) {
    let mut by_level: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..set.n {
        for (level, n) in remote_files(&set.remote_dir(env, i)) {
            *by_level.entry(level).or_default() += n;
        }
    }
    let total = by_level.values().sum();
    (by_level, total)
}

/// Restores database 0 of `set` with its own tool through the proxy;
/// returns (seconds, GETs it made, whether the rows equal the source).
fn latest_restore(env: &Env, set: &DbSet) -> R<(f64, u64, bool)> {
    let out = env
        .work
        .join(format!("retention-restored-{}.db", set.tool.label()));
    let _ = std::fs::remove_file(&out);
    let before = env.counters.snapshot();
    let started = Instant::now();
    let ok = match set.tool {
        Tool::Walsync => Command::new(&env.opts.walsync)
            .arg("restore")
            .arg(format!("{}/{}", set.prefix, db_name(0)))
            .arg("-o")
            .arg(&out)
            .arg("-b")
            .arg(format!("s3://{WS}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_ENDPOINT_URL_S3", &env.proxied)
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .output()?,
        Tool::Litestream => {
            let one = DbSet {
                n: 1,
                ..set.clone()
            };
            let cfg = env.work.join("retention-restore.yml");
            std::fs::write(
                &cfg,
                litestream_yaml(env, &[&one], Duration::from_secs(1), &env.proxied),
            )?;
            Command::new(&env.opts.litestream)
                .arg("restore")
                .arg("-config")
                .arg(&cfg)
                .arg("-o")
                .arg(&out)
                .arg(set.path(0))
                .env_remove("AWS_CA_BUNDLE")
                .stdin(Stdio::null())
                .output()?
        }
    }
    .status
    .success();
    let secs = started.elapsed().as_secs_f64();
    let gets = diff(&before, &env.counters.snapshot(), set.tool.bucket())["GET"];
    let same = ok && fingerprint(&out)? == fingerprint(&set.path(0))?;
    Ok((secs, gets, same))
}

/// `walsync verify` of database 0 (straight to the server): seconds.
fn verify_secs(env: &Env, set: &DbSet) -> R<f64> {
    let started = Instant::now();
    let ok = Command::new(&env.opts.walsync)
        .arg("verify")
        .arg(format!("{}/{}", set.prefix, db_name(0)))
        .arg("-b")
        .arg(format!("s3://{WS}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL_S3", &env.direct)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()?
        .status
        .success();
    if !ok {
        env.fail("retention: walsync verify failed during the run".into());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Requests by kind per database per hour over `secs`.
fn per_db_hour(counts: &BTreeMap<String, u64>, dbs: usize, secs: f64) -> Value {
    let scale = 3600.0 / secs.max(1.0) / dbs.max(1) as f64;
    let mut m = serde_json::Map::new();
    for (k, v) in counts {
        m.insert(k.clone(), json!((*v as f64 * scale * 10.0).round() / 10.0));
    }
    Value::Object(m)
}

pub fn day(env: &Env) -> R<Value> {
    let o = &env.opts;
    let n = o.load_dbs;
    let (load, idle) = (o.day_secs, o.day_idle_secs);
    let (a, b) = create_sets(env, "retention", n)?;
    log(format!(
        "retention: {n} databases per tool, {load}s at 1 commit/s each, then {idle}s idle"
    ));
    let mut ws = start(env, &a)?;
    let mut ls = start(env, &b)?;
    wait_initial(env, &a, 60, &mut ws)?;
    wait_initial(env, &b, 60, &mut ls)?;
    let c0 = env.counters.snapshot();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push((open_writer(&a.path(i))?, open_writer(&b.path(i))?));
    }
    let mut rng = Rng::new(42);
    let started = Instant::now();
    let mut verify = Vec::new();
    let mut next_verify = 60u64;
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(load) {
        for c in &conns {
            let body = rng.bytes(200);
            c.0.execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
            c.1.execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
        }
        k += 1;
        if started.elapsed().as_secs() >= next_verify {
            let s = verify_secs(env, &a)?;
            verify.push(json!({"at_s": next_verify, "verify_s": s}));
            next_verify += 60;
        }
        let due = started + Duration::from_secs(k);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    drop(conns);
    let load_secs = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_secs(2));
    let c1 = env.counters.snapshot();
    // A latest restore as the writes end, while both tools run: the files
    // it reads (snapshot, compactions, level 0) are what a restore after a
    // long run costs.
    let mut restores = BTreeMap::new();
    for set in [&a, &b] {
        let (secs, gets, same) = latest_restore(env, set)?;
        if !same {
            env.fail(format!(
                "retention: {}'s latest restore differs from the source",
                set.tool.label()
            ));
        }
        restores.insert(set.tool.label(), (secs, gets));
    }
    // Idle: first the work the last writes still cause (a snapshot of
    // them within the snapshot interval, the passes that answer it), then
    // requests are counted.
    let settle = 70.min(idle / 2);
    thread::sleep(Duration::from_secs(settle));
    let c2 = env.counters.snapshot();
    thread::sleep(Duration::from_secs(idle - settle));
    let c3 = env.counters.snapshot();
    let stopped_ws = ws.stop();
    let _ = ls.stop();
    if !stopped_ws {
        env.fail("retention: walsync did not exit 0 on SIGINT".into());
    }
    let mut per = serde_json::Map::new();
    for set in [&a, &b] {
        let tool = set.tool;
        let (by_level, total) = objects(env, set);
        let (restore_s, restore_gets) = restores[tool.label()];
        per.insert(
            tool.label().into(),
            json!({
                "objects_per_db": total as f64 / n as f64,
                "objects_by_level": by_level,
                "latest_restore_gets": restore_gets,
                "latest_restore_s": restore_s,
                "requests_per_db_hour_load": per_db_hour(&diff(&c0, &c1, tool.bucket()), n, load_secs),
                "requests_per_db_hour_idle": per_db_hour(&diff(&c2, &c3, tool.bucket()), n, (idle - settle) as f64),
                "requests_idle": diff(&c2, &c3, tool.bucket()),
            }),
        );
    }
    Ok(json!({
        "databases": n,
        "load_secs": load,
        "idle_secs": idle,
        "idle_counted_secs": idle - settle,
        "commits_per_db": k,
        "schedule": {"levels": LEVELS, "snapshot_interval": SNAPSHOT_INTERVAL, "l0_retention": L0_RETENTION, "window": WINDOW},
        "verify": verify,
        "walsync": per.remove("walsync"),
        "litestream": per.remove("litestream"),
    }))
}

/// The phase's section of the report.
pub fn report(s: &mut String, r: &Value) {
    if r.is_null() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Retention: {} databases, {} s at 1 commit/s each, then {} s idle (schedule compressed: levels 2 s/10 s/60 s, snapshots 60 s, level 0 kept 10 s, window 120 s)\n",
        r["databases"], r["load_secs"], r["idle_secs"]
    );
    let _ = writeln!(s, "| per database | walsync | Litestream |");
    let _ = writeln!(s, "|---|---:|---:|");
    let row = |s: &mut String, what: &str, f: &dyn Fn(&Value) -> String| {
        let _ = writeln!(
            s,
            "| {what} | {} | {} |",
            f(&r["walsync"]),
            f(&r["litestream"])
        );
    };
    row(s, "objects at the end", &|v| {
        format!("{:.1}", v["objects_per_db"].as_f64().unwrap_or(0.0))
    });
    row(s, "objects by level (all databases)", &|v| {
        v["objects_by_level"].to_string()
    });
    row(s, "GETs of a latest restore", &|v| {
        v["latest_restore_gets"].to_string()
    });
    for kind in ["PUT", "GET", "LIST", "HEAD", "DELETE", "POST"] {
        row(s, &format!("{kind} per hour under load"), &|v| {
            v["requests_per_db_hour_load"][kind].to_string()
        });
    }
    let counted = r["idle_counted_secs"].clone();
    row(
        s,
        &format!("requests while idle, last {counted} s (all kinds, all databases)"),
        &|v| {
            v["requests_idle"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
                .to_string()
        },
    );
    let times: Vec<String> = r["verify"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{} s: {:.2} s",
                v["at_s"],
                v["verify_s"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nwalsync verify of one database as the run grows: {}",
        times.join(", ")
    );
}
