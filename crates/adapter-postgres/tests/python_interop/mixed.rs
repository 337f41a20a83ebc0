//! The mixed run: Python workers (started, their events read, their read of
//! the seeded rows checked) and Rust workers leasing from one pool while a
//! sampler checks the invariants in SQL.

use super::*;

/// Seeds the pool, has Python read it, then runs Python and Rust workers on
/// it while sampling the invariants, and checks what each side did.
pub(crate) async fn mixed_run() {
    let python = python_interpreter();
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let seeded = seed(&storage).await;
    let rust_consumer = storage.ensure_consumer("rust-worker").await.unwrap();

    let mut child = spawn_worker(&python, &schema, &seeded, rust_consumer);
    let (stdout, stderr) = read_output(&mut child);
    let mut events = Events {
        lines: stdout,
        stderr,
        child,
    };

    let read = events.next("read").await;
    check_python_read(&read, &schema, &seeded);

    events.next("working").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(storage.clone(), seeded.pool.id, stop.clone()));
    let workers: Vec<_> = (0..RUST_WORKERS)
        .map(|w| {
            tokio::spawn(rust_worker(
                storage.clone(),
                seeded.pool.name.clone(),
                rust_consumer,
                w,
                stop.clone(),
            ))
        })
        .collect();
    let stopped = events
        .next_or_else("stopped", || stop.store(true, Ordering::Relaxed))
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut rust = RustCounts::default();
    for worker in workers {
        rust.add(worker.await.unwrap());
    }
    let samples = sampler.await.unwrap();
    let status = events.child.wait().unwrap();
    assert!(
        status.success(),
        "the Python worker exited with {status}; it said:\n{}",
        events.stderr_text()
    );

    // Python leased, without errors, and read every lease row (Rust's too).
    let counts = &stopped["counts"];
    let count = |name: &str| counts[name].as_u64().unwrap_or(0);
    assert_eq!(
        stopped["errors"],
        Value::Array(vec![]),
        "Python workers failed: {stopped}"
    );
    assert_eq!(count("errors"), 0, "{stopped}");
    assert!(count("acquired") > 0, "Python never leased: {stopped}");
    assert_eq!(count("released"), count("acquired"), "{stopped}");
    assert_eq!(stopped["lease_errors"], Value::Array(vec![]), "{stopped}");
    let leases = &stopped["leases"];
    let rust_rows = leases["rust"].as_u64().unwrap();
    assert!(
        rust_rows > 0,
        "Python read no Rust-written lease: {stopped}"
    );
    assert!(rust_rows <= rust.acquired, "{stopped} / {rust:?}");
    assert_eq!(
        leases["total"].as_u64().unwrap(),
        count("acquired") + rust_rows,
        "every lease row, Python's and Rust's: {stopped}"
    );

    // Rust leased beside it, without errors.
    assert!(rust.errors.is_empty(), "Rust workers failed: {rust:?}");
    assert!(rust.acquired > 0, "{rust:?}");
    assert_eq!(rust.released, rust.acquired, "{rust:?}");

    // The invariants held in every sample, and the samples saw both sides.
    assert!(
        samples.violations.is_empty(),
        "{} of {} samples broke an invariant, first ones: {:#?}",
        samples.violations.len(),
        samples.taken,
        &samples.violations[..samples.violations.len().min(5)]
    );
    assert!(samples.taken >= 20, "only {} samples", samples.taken);
    assert!(
        samples.with_both > 0,
        "no sample saw Python and Rust leases active at once ({samples:?}, Python {counts}, \
         Rust {rust:?})"
    );
    eprintln!(
        "python {counts}; rust {} acquired, {} misses; {} samples, {} with both sides leasing",
        rust.acquired, rust.misses, samples.taken, samples.with_both
    );

    // Afterwards nothing is held, and Rust still reads what it wrote, the
    // checked and never-checked proxies included.
    let stats = storage.pool_stats(&seeded.pool.name).await.unwrap();
    assert_eq!((stats.total_leases, stats.available_proxies), (0, 8));
    for proxy in storage.list_proxies(seeded.pool.id).await.unwrap() {
        let expected = seeded.by_id(proxy.id.0);
        assert_eq!(proxy.checked_at, expected.checked_at, "{proxy:?}");
        assert_eq!(proxy.current_leases, 0);
    }
    schema.drop_schema().await.unwrap();
}

/// Starts `worker.py` connected to the test schema through libpq's
/// environment (the password, if any, never on the command line), and
/// hands it the expected passwords on standard input.
fn spawn_worker(
    python: &Path,
    schema: &TestSchema,
    seeded: &Seeded,
    rust_consumer: ConsumerId,
) -> Child {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/worker.py");
    let config = schema.config();
    let mut command = Command::new(python);
    command
        .arg(&script)
        .args(["--pool", &seeded.pool.name])
        .args(["--workers", &PYTHON_WORKERS.to_string()])
        .args(["--seconds", PYTHON_SECONDS])
        .args(["--rust-consumer", &rust_consumer.0.to_string()])
        .args(["--lease-seconds", &LEASE_SECONDS.to_string()])
        .env("PGHOST", &config.host)
        .env("PGPORT", config.port.to_string())
        .env("PGUSER", &config.user)
        .env("PGDATABASE", &config.database)
        .env("PGSSLMODE", config.ssl_mode.as_str())
        .env("PGOPTIONS", format!("-c search_path={}", schema.name()))
        .env("PGAPPNAME", "pharox-python-interop")
        .env_remove("PGPASSWORD")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = &config.password {
        command.env("PGPASSWORD", password);
    }
    if let Some(root) = &config.ssl_root_cert {
        command.env("PGSSLROOTCERT", root);
    }
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({ENV_PYTHON}): {e}; it must be a Python with pharox 0.11 \
             installed (`cargo xtask test` makes one)",
            python.display()
        )
    });
    let passwords: HashMap<String, String> = seeded
        .proxies
        .iter()
        .filter_map(|p| {
            p.credentials
                .as_ref()
                .map(|c| (p.id.0.to_string(), c.password.clone()))
        })
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            serde_json::json!({ "passwords": passwords })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    drop(stdin);
    child
}

/// The child's standard output as a stream of lines, and its standard error
/// collected as it comes (both read on threads of their own, so neither
/// pipe fills up).
fn read_output(
    child: &mut Child,
) -> (
    mpsc::UnboundedReceiver<String>,
    std::thread::JoinHandle<String>,
) {
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    (rx, stderr)
}

/// The Python worker's JSON events, in order.
struct Events {
    lines: mpsc::UnboundedReceiver<String>,
    stderr: std::thread::JoinHandle<String>,
    child: Child,
}

impl Events {
    /// The next event, which must be `event`.
    async fn next(&mut self, event: &str) -> Value {
        self.next_or_else(event, || {}).await
    }

    /// As `next`; `on_failure` runs before the test panics (to stop the
    /// Rust workers).
    async fn next_or_else(&mut self, event: &str, on_failure: impl FnOnce()) -> Value {
        let line = tokio::time::timeout(PYTHON_DEADLINE, self.lines.recv()).await;
        let failure = match line {
            Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                Ok(value) if value["event"] == event => return value,
                Ok(value) => format!("expected the event {event:?}, got {value}"),
                Err(_) => format!("expected the event {event:?}, got the line {line:?}"),
            },
            Ok(None) => format!("the Python worker ended before the event {event:?}"),
            Err(_) => {
                format!("the Python worker sent no {event:?} within {PYTHON_DEADLINE:?}")
            }
        };
        on_failure();
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("{failure}; it said:\n{}", self.stderr_text());
    }

    /// What the child wrote to standard error (once it has ended).
    fn stderr_text(&mut self) -> String {
        let handle = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        handle.join().unwrap_or_default()
    }
}

/// Python read back exactly what Rust wrote, through its own storage and
/// model validation, in the test schema.
fn check_python_read(read: &Value, schema: &TestSchema, seeded: &Seeded) {
    assert_eq!(read["schema"], schema.name(), "Python uses the test schema");
    assert_eq!(
        read["errors"],
        Value::Array(vec![]),
        "Python could not read Rust-written rows: {read:#}"
    );
    let pool = &read["pool"];
    assert_eq!(pool["id"], seeded.pool.id.0.to_string());
    assert_eq!(pool["description"], "seeded by the Rust adapter");
    assert_eq!(pool["get_pool_agrees"], true);

    let proxies = read["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), seeded.proxies.len(), "{read:#}");
    for got in proxies {
        let id: Uuid = got["id"].as_str().unwrap().parse().unwrap();
        let want = seeded.by_id(id);
        let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let number = |v: Option<f64>| v.map_or(Value::Null, |n| serde_json::json!(n));
        assert_eq!(got["pool_id"], want.pool_id.0.to_string());
        assert_eq!(got["host"], want.host.as_str());
        assert_eq!(got["port"], want.port);
        assert_eq!(got["protocol"], want.protocol.as_str());
        assert_eq!(got["status"], want.status.as_str());
        assert_eq!(got["source"], text(&want.source), "{got}");
        assert_eq!(got["country"], text(&want.country), "{got}");
        assert_eq!(got["city"], text(&want.city), "{got}");
        assert_eq!(got["isp"], text(&want.isp), "{got}");
        assert_eq!(got["asn"], serde_json::json!(want.asn), "{got}");
        assert_eq!(got["latitude"], number(want.latitude), "{got}");
        assert_eq!(got["longitude"], number(want.longitude), "{got}");
        assert_eq!(
            got["max_concurrency"],
            serde_json::json!(want.max_concurrency)
        );
        assert_eq!(got["current_leases"], 0);
        match &want.credentials {
            Some(c) => {
                assert_eq!(got["credentials"]["user"], c.username.as_str(), "{got}");
                assert_eq!(got["credentials"]["password_matches"], true, "{got}");
            }
            None => assert_eq!(got["credentials"], Value::Null, "{got}"),
        }
        let checked_at =
            OffsetDateTime::parse(got["checked_at"].as_str().unwrap(), &Rfc3339).unwrap();
        assert_eq!(
            checked_at,
            want.checked_at.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            "{got}"
        );
    }

    let stats = &read["stats"];
    assert_eq!(stats["total_proxies"], 9, "{stats}");
    assert_eq!(stats["active_proxies"], 8, "{stats}");
    assert_eq!(stats["available_proxies"], 8, "{stats}");
    assert_eq!(stats["total_leases"], 0, "{stats}");

    let checked = &seeded.proxies[seeded.checked];
    assert_eq!(checked.checked_at, Some(seeded.checked_at));
    let records = &read["health"][checked.id.0.to_string()];
    assert_eq!(
        records,
        &serde_json::json!([{ "reachable": true, "latency_ms": 25, "protocol": checked.protocol.as_str(),
            "status_before": "active", "status_after": "active", "error": null }]),
        "{read:#}"
    );
    let banned = &seeded.proxies[8];
    assert_eq!(
        read["health"][banned.id.0.to_string()],
        serde_json::json!([{ "reachable": false, "latency_ms": null, "protocol": banned.protocol.as_str(),
            "status_before": "banned", "status_after": "banned", "error": "connection refused" }]),
        "{read:#}"
    );
    assert_eq!(
        read["last_health"][checked.id.0.to_string()],
        serde_json::json!({ "status": "active", "latency_ms": 25 })
    );

    // Python's selectors see Rust's never-checked proxies as Rust means
    // them: least_used takes them before checked ones (the epoch is the
    // oldest time), first_available (newest checked_at first) the checked one.
    let leasable: Vec<&Proxy> = seeded
        .proxies
        .iter()
        .filter(|p| p.status == ProxyStatus::Active)
        .collect();
    let smallest = |unchecked_only: bool| {
        leasable
            .iter()
            .filter(|p| !unchecked_only || p.checked_at.is_none())
            .map(|p| p.id.0)
            .min()
            .unwrap()
            .to_string()
    };
    let found = &read["found"];
    assert_eq!(
        found["first_available"],
        checked.id.0.to_string(),
        "{found}"
    );
    assert_eq!(found["least_used"], smallest(true), "{found}");
    // Python 0.11's lowest_latency fails on PostgreSQL whatever the rows
    // (see worker.py); should a fixed Python be installed, it must pick the
    // one proxy with a latency.
    match &read["broken_in_python"]["lowest_latency"] {
        Value::Null => {
            assert_eq!(found["lowest_latency"], checked.id.0.to_string(), "{found}");
        }
        error => assert!(
            error
                .as_str()
                .unwrap()
                .contains("FOR UPDATE cannot be applied to the nullable side of an outer join"),
            "lowest_latency failed otherwise: {error}"
        ),
    }
    assert_eq!(found["round_robin"], smallest(false), "{found}");
    assert_eq!(
        found["country=AR"],
        seeded.proxies[0].id.0.to_string(),
        "{found}"
    );
}

// ------------------------------------------------------------- the run

#[derive(Debug, Default)]
struct RustCounts {
    acquired: u64,
    released: u64,
    misses: u64,
    errors: Vec<String>,
}

impl RustCounts {
    fn add(&mut self, other: Self) {
        self.acquired += other.acquired;
        self.released += other.released;
        self.misses += other.misses;
        self.errors.extend(other.errors);
    }
}

/// Acquires (every selector in turn), reads the lease back and releases it,
/// until `stop`.
async fn rust_worker(
    storage: PostgresStorage,
    pool: String,
    consumer: ConsumerId,
    index: usize,
    stop: Arc<AtomicBool>,
) -> RustCounts {
    let mut counts = RustCounts::default();
    let mut n = index;
    while !stop.load(Ordering::Relaxed) {
        let selector = Selector::ALL[n % Selector::ALL.len()];
        n += 1;
        let request =
            AcquireRequest::new(pool.clone(), consumer, Duration::from_secs(LEASE_SECONDS))
                .with_selector(selector);
        let lease = match storage.acquire(&request).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                counts.misses += 1;
                continue;
            }
            Err(e) => {
                counts.errors.push(format!("acquire ({selector:?}): {e}"));
                continue;
            }
        };
        counts.acquired += 1;
        match storage.get_lease(lease.id).await {
            Ok(held) if held.status == LeaseStatus::Active => {}
            other => counts.errors.push(format!("held lease reads as {other:?}")),
        }
        match storage.release(lease.id).await {
            Ok(outcome) if outcome.was_released() => counts.released += 1,
            other => counts.errors.push(format!("release: {other:?}")),
        }
        if counts.errors.len() > 20 {
            break;
        }
    }
    counts
}

#[derive(Debug, Default)]
struct Samples {
    taken: u64,
    /// Samples in which both a Python and a Rust lease were active.
    with_both: u64,
    /// Samples with a proxy over its limit or a counter that differs from
    /// its active leases, with the offending rows.
    violations: Vec<String>,
}

/// Reads, in one statement (one snapshot), every proxy of the pool with its
/// counter, its limit and its active leases (Rust's among them), as fast as
/// the database answers, until `stop`.
async fn sample(storage: PostgresStorage, pool: PoolId, stop: Arc<AtomicBool>) -> Samples {
    let mut samples = Samples::default();
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(Uuid, i32, Option<i32>, i64, i64)> = sqlx::query_as(
            "SELECT p.id, p.current_leases, p.max_concurrency, \
               count(l.id) AS active, \
               count(l.id) FILTER (WHERE l.consumer_id = c.id) AS rust \
             FROM proxy p \
             LEFT JOIN lease l ON l.proxy_id = p.id AND l.status = 'active' \
             LEFT JOIN consumer c ON c.name = 'rust-worker' \
             WHERE p.pool_id = $1 \
             GROUP BY p.id, p.current_leases, p.max_concurrency",
        )
        .bind(pool.0)
        .fetch_all(storage.pg_pool())
        .await
        .unwrap();
        samples.taken += 1;
        let bad: Vec<_> = rows
            .iter()
            .filter(|(_, current, max, active, _)| {
                max.is_some_and(|m| *current > m) || i64::from(*current) != *active
            })
            .collect();
        if !bad.is_empty() {
            samples.violations.push(format!(
                "(id, current_leases, max_concurrency, active, rust) {bad:?}"
            ));
        }
        let active: i64 = rows.iter().map(|r| r.3).sum();
        let rust: i64 = rows.iter().map(|r| r.4).sum();
        if rust > 0 && active > rust {
            samples.with_both += 1;
        }
    }
    samples
}
