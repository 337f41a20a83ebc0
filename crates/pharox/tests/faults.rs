//! Faults on a real PostgreSQL server: backends terminated during an
//! acquire/release loop, the server restarted (fast and immediate, on a
//! throwaway cluster of the test's own), a connection that stalls, and an
//! outcome report or release whose COMMIT (or only its reply) is lost.
//! Every test ends with the invariants checked in SQL: no active lease that
//! no worker holds, `current_leases` equal to the active leases, no proxy
//! over its `max_concurrency`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pharox::postgres::testing::cluster::{Cluster, StopMode};
use pharox::postgres::testing::{TestSchema, TimeShift};
use pharox::postgres::{PostgresConfig, PostgresStorage, SslMode};
use pharox::{
    AcquireRequest, LeaseId, LeaseRequest, ManagerConfig, Outcome, Proxy, ProxyFailureKind,
    ProxyManager, ProxyPool, ProxyProtocol, ProxyStorage, RetryPolicy, StorageError, UsagePolicy,
};
use sea_orm::sqlx::{self, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(600);

/// How long the workers may go without completing the cycles a test waits
/// for: a hang guard, far above what a cycle takes.
const PROGRESS: Duration = Duration::from_secs(60);

/// What the invariants look like in SQL for one pool.
#[derive(Debug, PartialEq, Eq)]
struct Invariants {
    active_leases: i64,
    drifted_proxies: i64,
    over_leased_proxies: i64,
}

async fn invariants(pool: &PgPool, pool_name: &str) -> Invariants {
    let (active_leases, drifted_proxies, over_leased_proxies): (i64, i64, i64) = sqlx::query_as(
        "WITH p AS (SELECT x.* FROM proxy x JOIN proxy_pool pp ON pp.id = x.pool_id \
                    WHERE pp.name = $1) \
         SELECT \
           (SELECT count(*) FROM lease l JOIN p ON p.id = l.proxy_id WHERE l.status = 'active'), \
           (SELECT count(*) FROM p WHERE p.current_leases <> \
              (SELECT count(*) FROM lease l WHERE l.proxy_id = p.id AND l.status = 'active')), \
           (SELECT count(*) FROM p \
              WHERE p.max_concurrency IS NOT NULL AND p.current_leases > p.max_concurrency)",
    )
    .bind(pool_name)
    .fetch_one(pool)
    .await
    .unwrap();
    Invariants {
        active_leases,
        drifted_proxies,
        over_leased_proxies,
    }
}

/// Ids of the pool's active leases.
async fn active_lease_ids(pool: &PgPool, pool_name: &str) -> HashSet<LeaseId> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT l.id FROM lease l JOIN proxy_pool pp ON pp.id = l.pool_id \
         WHERE pp.name = $1 AND l.status = 'active'",
    )
    .bind(pool_name)
    .fetch_all(pool)
    .await
    .unwrap();
    ids.into_iter().map(LeaseId).collect()
}

async fn seed(storage: &PostgresStorage, name: &str, proxies: usize) {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..proxies)
        .map(|i| {
            Proxy::builder(
                pool.id,
                format!("10.9.{}.{}", i / 250, i % 250 + 1),
                8080,
                ProxyProtocol::Http,
            )
            .max_concurrency(1)
            .build()
            .unwrap()
        })
        .collect();
    storage.add_proxies(&proxies).await.unwrap();
}

/// Workers leasing and releasing in a loop, and what they saw.
struct Loop {
    manager: ProxyManager,
    pool: String,
    /// Whether acquires wait and retry (through a restart) or fail at once.
    patient: bool,
    stop: AtomicBool,
    /// Completed acquire+release cycles.
    cycles: watch::Sender<u64>,
    misses: AtomicU64,
    acquire_errors: AtomicU64,
    /// Leases whose release the manager gave up on.
    unreleased: Mutex<Vec<LeaseId>>,
    /// Leases whose release was acknowledged.
    released: Mutex<HashSet<LeaseId>>,
}

impl Loop {
    fn new(storage: PostgresStorage, pool: &str, patient: bool) -> Arc<Self> {
        let manager = ProxyManager::new(storage)
            .with_config(ManagerConfig::default().with_default_ttl(TTL))
            .unwrap();
        Arc::new(Self {
            manager,
            pool: pool.to_owned(),
            patient,
            stop: AtomicBool::new(false),
            cycles: watch::channel(0).0,
            misses: AtomicU64::new(0),
            acquire_errors: AtomicU64::new(0),
            unreleased: Mutex::new(Vec::new()),
            released: Mutex::new(HashSet::new()),
        })
    }

    fn spawn(self: &Arc<Self>, workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|w| {
                let run = Arc::clone(self);
                tokio::spawn(async move { run.work(w).await })
            })
            .collect()
    }

    async fn work(&self, worker: usize) {
        // Waits between failed attempts come from the manager's policy.
        let patience = if self.patient {
            RetryPolicy::new(
                50,
                Duration::from_millis(5),
                2.0,
                Some(Duration::from_millis(200)),
            )
            .unwrap()
        } else {
            RetryPolicy::new(1, Duration::ZERO, 1.0, None).unwrap()
        };
        let request = LeaseRequest::new(self.pool.clone()).consumer(format!("worker-{worker}"));
        while !self.stop.load(Ordering::Relaxed) {
            match self
                .manager
                .acquire_with_retry(request.clone(), &patience)
                .await
            {
                Ok(Some(lease)) => {
                    match self.manager.release(&lease).await {
                        Ok(_) => {
                            self.released.lock().insert(lease.id);
                        }
                        Err(e) => {
                            eprintln!("release of {} failed: {e}", lease.id);
                            self.unreleased.lock().push(lease.id);
                        }
                    }
                    self.cycles.send_modify(|n| *n += 1);
                }
                Ok(None) => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!("acquire failed: {e}");
                    self.acquire_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Returns once the workers have completed `more` cycles after now.
    /// Returns once the workers have completed `more` cycles after now;
    /// panics if they stop making progress (capacity leaked: every
    /// acquire misses).
    async fn after_cycles(&self, more: u64) {
        let mut cycles = self.cycles.subscribe();
        let target = *cycles.borrow() + more;
        let progress = tokio::time::timeout(PROGRESS, cycles.wait_for(|n| *n >= target)).await;
        assert!(
            progress.is_ok(),
            "no progress for {PROGRESS:?}: {} misses, {} acquire errors, {} unreleased",
            self.misses.load(Ordering::Relaxed),
            self.acquire_errors.load(Ordering::Relaxed),
            self.unreleased.lock().len()
        );
    }

    async fn finish(&self, workers: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} cycles, {} misses, {} acquire errors, {} unreleased",
            *self.cycles.borrow(),
            self.misses.load(Ordering::Relaxed),
            self.acquire_errors.load(Ordering::Relaxed),
            self.unreleased.lock().len()
        );
    }
}

fn config_named(base: &PostgresConfig, application: &str) -> PostgresConfig {
    let mut config = base.clone().with_max_connections(10);
    config.application_name = Some(application.to_owned());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_during_a_loop_leave_no_lease_behind() {
    let schema = TestSchema::create().await.unwrap();
    let pool_name = "terminated";
    seed(schema.storage(), pool_name, 32).await;
    // Only this test's connections are terminated: tests share the server.
    let application = format!("pharox-faults-{}", uuid::Uuid::new_v4().simple());
    let storage = PostgresStorage::connect(&config_named(schema.config(), &application))
        .await
        .unwrap();
    let run = Loop::new(storage, pool_name, false);
    let workers = run.spawn(8);
    let mut terminated = 0i64;
    for _ in 0..20 {
        run.after_cycles(25).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&application)
        .fetch_one(schema.storage().pg_pool())
        .await
        .unwrap();
        terminated += n;
    }
    run.after_cycles(25).await;
    run.finish(workers).await;
    run.report("terminated backends");

    assert!(
        terminated >= 20,
        "the test terminated backends ({terminated})"
    );
    assert!(run.unreleased.lock().is_empty(), "every release succeeded");
    assert_eq!(
        invariants(schema.storage().pg_pool(), pool_name).await,
        Invariants {
            active_leases: 0,
            drifted_proxies: 0,
            over_leased_proxies: 0
        }
    );
    // A dead connection costs a retry inside the storage, not an error per
    // worker (see the adapter's own test of that for the exact count).
    assert!(
        run.acquire_errors.load(Ordering::Relaxed) <= 5,
        "acquire errors: {}",
        run.acquire_errors.load(Ordering::Relaxed)
    );
    schema.drop_schema().await.unwrap();
}

/// A loop of 8 workers on `pool_name` through one restart of `cluster`;
/// returns the run and the leases still active afterwards.
async fn restart_during_a_loop(
    cluster: &Arc<Cluster>,
    config: &PostgresConfig,
    admin: &PgPool,
    pool_name: &str,
    mode: StopMode,
) -> (Arc<Loop>, HashSet<LeaseId>) {
    let storage = PostgresStorage::connect(config).await.unwrap();
    seed(&storage, pool_name, 32).await;
    let run = Loop::new(storage, pool_name, true);
    let workers = run.spawn(8);
    run.after_cycles(200).await;
    let restarting = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || restarting.restart(mode))
        .await
        .unwrap()
        .unwrap();
    run.after_cycles(200).await;
    run.finish(workers).await;
    run.report(&format!("restart -m {mode:?}"));
    assert!(run.unreleased.lock().is_empty(), "every release succeeded");
    let active = active_lease_ids(admin, pool_name).await;
    (run, active)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_leave_no_lease_behind_and_crash_losses_expire() {
    let cluster = Arc::new(Cluster::start().unwrap_or_else(|e| panic!("{e}")));
    let base = PostgresConfig::from_dsn(&cluster.url()).unwrap();
    let admin_storage = PostgresStorage::connect(&base).await.unwrap();
    pharox_migration::run(
        admin_storage.connection(),
        pharox_migration::MigrationCommand::Up,
    )
    .await
    .unwrap();
    admin_storage.close().await;
    let config = config_named(&base, "pharox-restart");

    // A clean restart: every in-flight call is resolved or retried.
    let admin = PgPool::connect(&cluster.url()).await.unwrap();
    let (_, active) =
        restart_during_a_loop(&cluster, &config, &admin, "fast", StopMode::Fast).await;
    assert!(active.is_empty(), "left active after -m fast: {active:?}");
    assert_eq!(invariants(&admin, "fast").await.drifted_proxies, 0);

    // A crash loses the asynchronously committed releases of its last
    // moments: those leases come back, but only ones whose release a worker
    // saw acknowledged (nobody else's), and they still end by expiry.
    admin.close().await;
    let admin = PgPool::connect(&cluster.url()).await.unwrap();
    let (run, came_back) =
        restart_during_a_loop(&cluster, &config, &admin, "immediate", StopMode::Immediate).await;
    let released = run.released.lock().clone();
    assert!(
        came_back.is_subset(&released),
        "an active lease no worker ever held: {:?}",
        came_back.difference(&released).collect::<Vec<_>>()
    );
    eprintln!(
        "restart -m immediate: {} of {} acknowledged releases came back as active leases",
        came_back.len(),
        released.len()
    );
    let state = invariants(&admin, "immediate").await;
    assert_eq!((state.drifted_proxies, state.over_leased_proxies), (0, 0));
    let storage = PostgresStorage::connect(&config).await.unwrap();
    TimeShift::new(admin.clone())
        .advance(TTL + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        storage.cleanup_expired().await.unwrap(),
        u64::try_from(came_back.len()).unwrap()
    );
    assert_eq!(invariants(&admin, "immediate").await.active_leases, 0);

    // With durable releases a crash loses none.
    admin.close().await;
    let admin = PgPool::connect(&cluster.url()).await.unwrap();
    let mut durable = config.clone();
    durable.durable_release = true;
    let (_, active) =
        restart_during_a_loop(&cluster, &durable, &admin, "durable", StopMode::Immediate).await;
    assert!(active.is_empty(), "durable releases lost: {active:?}");
    assert_eq!(invariants(&admin, "durable").await.drifted_proxies, 0);
    storage.close().await;
    admin.close().await;
}

/// A TCP relay to the test server that can stop forwarding: the stand-in
/// for a network that stalls.
struct Relay {
    port: u16,
    gate: watch::Sender<Gate>,
    /// How many connections were accepted (their numbers are below it).
    accepted: Arc<AtomicU64>,
}

/// Which relayed bytes are held.
#[derive(Debug, Clone, Default)]
struct Gate {
    /// Connections numbered below this are stalled.
    stall_below: u64,
    /// Only their replies (server to client) are held, not their requests.
    replies_only: bool,
    /// Every connection, new ones too, is stalled.
    all: bool,
    /// Armed by [`Relay::hold_next_commit`]: the next connection to send a
    /// COMMIT is held from there on (its replies; its requests too, COMMIT
    /// included, when `commit_arrives` is false).
    next_commit: Option<CommitHold>,
    /// The connection held that way, and whether its requests are held.
    held_at_commit: Option<(u64, bool)>,
}

/// How [`Relay::hold_next_commit`] holds the connection that commits.
#[derive(Debug, Clone, Copy)]
struct CommitHold {
    /// The COMMIT reaches the server (only its reply is lost), or not.
    commit_arrives: bool,
}

impl Gate {
    fn holds(&self, connection: u64, reply: bool) -> bool {
        self.all
            || (connection < self.stall_below && (reply || !self.replies_only))
            || self
                .held_at_commit
                .is_some_and(|(held, requests)| held == connection && (reply || requests))
    }
}

/// A simple-protocol `COMMIT` as sqlx sends it: `Q`, the length (4 + 7),
/// the text and its NUL.
const COMMIT_QUERY: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

impl Relay {
    async fn start(server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (gate, _) = watch::channel(Gate::default());
        let gates = gate.clone();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(
                    client_read,
                    server_write,
                    gates.clone(),
                    connection,
                    false,
                ));
                tokio::spawn(pipe(
                    server_read,
                    client_write,
                    gates.clone(),
                    connection,
                    true,
                ));
            }
        });
        Self {
            port,
            gate,
            accepted,
        }
    }

    /// Stalls the connections open now (new ones flow): all their bytes, or
    /// only the server's replies.
    fn stall_open_connections(&self, replies_only: bool) {
        let open = self.accepted.load(Ordering::SeqCst);
        self.gate.send_modify(|g| {
            g.stall_below = open;
            g.replies_only = replies_only;
        });
    }

    fn stall_everything(&self) {
        self.gate.send_modify(|g| g.all = true);
    }

    fn resume(&self) {
        self.gate.send_replace(Gate::default());
    }

    /// Holds the next connection that sends a COMMIT from that moment: the
    /// server's reply to it is never relayed, and when `commit_arrives` is
    /// false neither is the COMMIT.
    fn hold_next_commit(&self, commit_arrives: bool) {
        self.gate.send_modify(|g| {
            g.next_commit = Some(CommitHold { commit_arrives });
            g.held_at_commit = None;
        });
    }

    /// Whether a connection was held at its COMMIT since the last
    /// [`hold_next_commit`](Self::hold_next_commit).
    fn held_a_commit(&self) -> bool {
        self.gate.borrow().held_at_commit.is_some()
    }
}

/// Copies bytes one way, holding them while the gate says so. A request
/// that carries a COMMIT while [`Relay::hold_next_commit`] is armed holds
/// the connection before it is relayed, so the server cannot have replied
/// yet.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gates: watch::Sender<Gate>,
    connection: u64,
    reply: bool,
) {
    let mut gate = gates.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate
            .wait_for(|g| !g.holds(connection, reply))
            .await
            .is_err()
        {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !reply
            && buf[..n]
                .windows(COMMIT_QUERY.len())
                .any(|w| w == COMMIT_QUERY)
        {
            gates.send_if_modified(|g| match g.next_commit.take() {
                Some(hold) => {
                    g.held_at_commit = Some((connection, !hold.commit_arrives));
                    true
                }
                None => false,
            });
        }
        if gate
            .wait_for(|g| !g.holds(connection, reply))
            .await
            .is_err()
        {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A storage on the test schema whose connections go through `relay`, with
/// a 1 s query timeout, without TLS (so the relay can see a COMMIT).
async fn through(relay: &Relay, schema: &TestSchema, resolve_within: Duration) -> PostgresStorage {
    let mut config = config_named(schema.config(), "pharox-stall").with_max_connections(4);
    config.host = "127.0.0.1".to_owned();
    config.port = relay.port;
    config.ssl_mode = SslMode::Disable;
    config.query_timeout = Duration::from_secs(1);
    config.acquire_timeout = resolve_within;
    config.connect_timeout = Duration::from_secs(5);
    PostgresStorage::connect(&config).await.unwrap()
}

async fn one_cycle(storage: &PostgresStorage, request: &AcquireRequest) {
    let lease = storage
        .acquire(request)
        .await
        .unwrap()
        .expect("a free proxy");
    storage.release(lease.id).await.unwrap();
}

const NONE_LEFT: Invariants = Invariants {
    active_leases: 0,
    drifted_proxies: 0,
    over_leased_proxies: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_network_fails_the_acquire_within_its_timeout_and_leaves_nothing() {
    let schema = TestSchema::create().await.unwrap();
    seed(schema.storage(), "stalled", 4).await;
    let relay = Relay::start(schema.config().port).await;
    let storage = through(&relay, &schema, Duration::from_secs(3)).await;
    let consumer = storage.ensure_consumer("w").await.unwrap();
    let request = AcquireRequest::new("stalled", consumer, TTL);
    one_cycle(&storage, &request).await;

    relay.stall_everything();
    let err = tokio::time::timeout(Duration::from_secs(60), storage.acquire(&request))
        .await
        .expect("the acquire returns instead of hanging")
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert_eq!(
        storage.unresolved_leases(),
        1,
        "its outcome is not known yet"
    );

    // Once the network flows again the held statement may still reach the
    // server; the next call fences its server process and releases whatever
    // it made.
    relay.resume();
    one_cycle(&storage, &request).await;
    assert_eq!(storage.unresolved_leases(), 0);
    assert_eq!(
        invariants(schema.storage().pg_pool(), "stalled").await,
        NONE_LEFT
    );
    storage.close().await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_whose_connection_stalls_is_resolved_on_another() {
    let schema = TestSchema::create().await.unwrap();
    seed(schema.storage(), "resolved", 4).await;
    let relay = Relay::start(schema.config().port).await;
    for replies_only in [true, false] {
        let storage = through(&relay, &schema, Duration::from_secs(20)).await;
        let consumer = storage.ensure_consumer("w").await.unwrap();
        let request = AcquireRequest::new("resolved", consumer, TTL);
        one_cycle(&storage, &request).await;

        // replies_only: the lease is made and its reply lost, so the lookup
        // finds it; otherwise the statement never arrives, and the acquire
        // is made again on a fresh connection. Either way: one lease.
        relay.stall_open_connections(replies_only);
        let lease = tokio::time::timeout(Duration::from_secs(60), storage.acquire(&request))
            .await
            .expect("the acquire returns instead of hanging")
            .unwrap()
            .expect("a lease");
        let admin = schema.storage().pg_pool();
        assert_eq!(
            active_lease_ids(admin, "resolved").await,
            HashSet::from([lease.id]),
            "replies_only {replies_only}"
        );
        assert_eq!(invariants(admin, "resolved").await.drifted_proxies, 0);
        storage.release(lease.id).await.unwrap();
        assert_eq!(invariants(admin, "resolved").await, NONE_LEFT);
        relay.resume();
        storage.close().await;
    }
    schema.drop_schema().await.unwrap();
}

/// How often the lease's outcomes were applied, and its proxy's score.
async fn applied(pool: &PgPool, lease: LeaseId) -> (i32, f64) {
    sqlx::query_as(
        "SELECT l.outcomes_applied, p.error_score FROM lease l JOIN proxy p ON p.id = l.proxy_id \
         WHERE l.id = $1",
    )
    .bind(lease.0)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_whose_commit_or_its_reply_is_lost_is_applied_once() {
    let schema = TestSchema::create().await.unwrap();
    seed(schema.storage(), "outcomes", 4).await;
    let relay = Relay::start(schema.config().port).await;
    let admin = schema.storage().pg_pool();
    // No cooldown in the way: every failure adds to the score.
    let policy = UsagePolicy {
        score_threshold: 100.0,
        ..UsagePolicy::default()
    };
    let failure = Outcome::proxy_failure(ProxyFailureKind::Timeout);
    for commit_arrives in [true, false] {
        let storage = through(&relay, &schema, Duration::from_secs(20)).await;
        let consumer = storage.ensure_consumer("w").await.unwrap();
        let request = AcquireRequest::new("outcomes", consumer, TTL);
        let lease = storage
            .acquire(&request)
            .await
            .unwrap()
            .expect("a free proxy");
        let (_, score_before) = applied(admin, lease.id).await;

        // A report: the COMMIT (or its reply) is lost, the call finds out
        // whether it committed, and the outcome counts once.
        relay.hold_next_commit(commit_arrives);
        let proxy = tokio::time::timeout(
            Duration::from_secs(60),
            storage.report_outcome(lease.id, &failure, &policy),
        )
        .await
        .expect("the report returns instead of hanging")
        .unwrap();
        assert!(relay.held_a_commit(), "the relay saw no COMMIT");
        let (count, score) = applied(admin, lease.id).await;
        assert_eq!(count, 1, "commit_arrives {commit_arrives}");
        assert_eq!(score, score_before + policy.failure_penalty);
        assert_eq!(proxy.usage.error_score, score);
        relay.resume();

        // A release with an outcome: released once, applied once.
        relay.hold_next_commit(commit_arrives);
        let released = tokio::time::timeout(
            Duration::from_secs(60),
            storage.release_with_outcome(lease.id, Some(&failure), &policy),
        )
        .await
        .expect("the release returns instead of hanging")
        .unwrap();
        assert!(relay.held_a_commit(), "the relay saw no COMMIT");
        assert!(released.was_released(), "commit_arrives {commit_arrives}");
        let (count, score) = applied(admin, lease.id).await;
        assert_eq!(count, 2, "commit_arrives {commit_arrives}");
        assert_eq!(score, score_before + 2.0 * policy.failure_penalty);
        assert_eq!(invariants(admin, "outcomes").await, NONE_LEFT);
        relay.resume();
        storage.close().await;
    }
    schema.drop_schema().await.unwrap();
}
