//! The binary on PostgreSQL (feature `postgres`): `pharox migrate` and
//! `pharox bench` on a freshly created schema per test, dropped afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pharox::postgres::testing::{TEST_SCHEMA_PREFIX, test_database_url};
use pharox::postgres::{PostgresConfig, PostgresStorage};
use pharox_migration::sea_orm_migration::sea_orm::sqlx::{self, AssertSqlSafe};

use super::*;

/// An empty schema of its own on the test server, dropped on drop.
struct FreshSchema {
    name: String,
    url: String,
    admin: PostgresStorage,
    runtime: tokio::runtime::Runtime,
}

impl FreshSchema {
    fn create() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let base = test_database_url();
        let mut config = PostgresConfig::from_dsn(&base)
            .expect("the test database URL is not valid")
            .with_max_connections(1);
        config.connect_timeout = Duration::from_secs(5);
        let admin = runtime
            .block_on(PostgresStorage::connect(&config))
            .unwrap_or_else(|e| {
                panic!(
                    "the pharox-cli PostgreSQL tests need a server and could not reach \
                     {config}: {e}. Start one (e.g. `docker run -d -p 5432:5432 \
                     -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`) or point \
                     PHAROX_TEST_DATABASE_URL at one"
                )
            });
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The adapter's test schemas' naming: its tests drop any left
        // behind for more than an hour.
        let name = format!(
            "{TEST_SCHEMA_PREFIX}{secs}_{}",
            uuid::Uuid::new_v4().simple()
        );
        runtime
            .block_on(
                sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                    .execute(admin.pg_pool()),
            )
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}schema={name}");
        Self {
            name,
            url,
            admin,
            runtime,
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// Tables, indexes, sequences, types and domains in the schema.
    fn objects(&self) -> i64 {
        self.scalar(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n \
                       ON n.oid = c.relnamespace WHERE n.nspname = $1) \
                  + (SELECT count(*) FROM pg_type t JOIN pg_namespace n \
                       ON n.oid = t.typnamespace WHERE n.nspname = $1)",
        )
    }

    /// The schema's tables, sorted.
    fn tables(&self) -> Vec<String> {
        self.runtime
            .block_on(
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = $1 ORDER BY 1",
                )
                .bind(&self.name)
                .fetch_all(self.admin.pg_pool()),
            )
            .unwrap()
    }

    /// `SELECT count(*) FROM <table>` in this schema, with `condition`.
    fn count(&self, table: &str, condition: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM \"{}\".{table} WHERE {condition}",
            self.name
        );
        self.runtime
            .block_on(sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(self.admin.pg_pool()))
            .unwrap()
    }

    /// Runs `sql` (several statements, fully qualified) on the server.
    fn execute(&self, sql: String) {
        self.runtime
            .block_on(sqlx::raw_sql(AssertSqlSafe(sql)).execute(self.admin.pg_pool()))
            .unwrap();
    }

    /// Applies the schema with `pharox migrate`.
    fn migrate(&self) {
        let run = pharox(&["migrate", "--database-url", self.url()]);
        assert_eq!(run.code, Some(0), "{run:?}");
    }

    /// Makes every third `event` (`INSERT`: an acquire, `UPDATE`: a
    /// release) on `lease` in this schema fail for good: a trigger
    /// raises 'boom' (not a lost race, so nothing retries it); a
    /// sequence counts the writes, whatever rolls back.
    fn fail_every_third_lease(&self, event: &str) {
        let s = &self.name;
        self.execute(format!(
            "DROP TRIGGER IF EXISTS boom ON \"{s}\".lease; \
             DROP SEQUENCE IF EXISTS \"{s}\".lease_writes; \
             CREATE SEQUENCE \"{s}\".lease_writes; \
             CREATE OR REPLACE FUNCTION \"{s}\".boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF nextval('\"{s}\".lease_writes') % 3 = 0 THEN \
                 RAISE EXCEPTION 'boom'; \
               END IF; \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER boom BEFORE {event} ON \"{s}\".lease \
               FOR EACH ROW EXECUTE FUNCTION \"{s}\".boom();"
        ));
    }

    /// Bench pools (by name).
    fn bench_pools(&self) -> i64 {
        self.count("proxy_pool", "name LIKE 'bench-%'")
    }

    /// Nothing of a bench is left: no pool, no proxy, no active lease
    /// (nor any lease: they go with their proxies).
    fn assert_tidy(&self, what: &str) {
        assert_eq!(self.bench_pools(), 0, "{what}: a bench pool is left");
        assert_eq!(self.count("proxy", "true"), 0, "{what}: proxies are left");
        assert_eq!(
            self.count("lease", "status = 'active'"),
            0,
            "{what}: an active lease is left"
        );
        assert_eq!(self.count("lease", "true"), 0, "{what}: leases are left");
    }

    fn scalar(&self, sql: &'static str) -> i64 {
        self.runtime
            .block_on(
                sqlx::query_scalar(sql)
                    .bind(&self.name)
                    .fetch_one(self.admin.pg_pool()),
            )
            .unwrap()
    }
}

impl Drop for FreshSchema {
    fn drop(&mut self) {
        let drop = sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        )));
        let dropped = self.runtime.block_on(drop.execute(self.admin.pg_pool()));
        self.runtime.block_on(self.admin.close());
        if let Err(e) = dropped
            && !std::thread::panicking()
        {
            panic!("could not drop test schema {}: {e}", self.name);
        }
    }
}

/// The `applied:`, `pending:` and `migrate <command>:` lists of a
/// `pharox migrate` run (`none`, `up to date` and `N pending` are
/// empty), and that first line as printed.
struct Report {
    headline: String,
    changed: Vec<String>,
    applied: Vec<String>,
    pending: Vec<String>,
}

fn report(command: &str, run: &Run) -> Report {
    assert_eq!(run.code, Some(0), "migrate {command}: {run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "migrate {command}: {run:?}");
    let list = |line: &str, prefix: &str, empty: &str| -> Vec<String> {
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}: {run:?}"));
        if rest == empty {
            Vec::new()
        } else {
            rest.split(", ").map(str::to_owned).collect()
        }
    };
    let prefix = format!("migrate {command}: ");
    let headline = lines[0]
        .strip_prefix(&prefix)
        .unwrap_or_default()
        .to_owned();
    let nothing_changed = headline == "up to date" || headline.ends_with(" pending");
    Report {
        changed: if nothing_changed {
            Vec::new()
        } else {
            list(lines[0], &prefix, "")
        },
        headline,
        applied: list(lines[1], "applied: ", "none"),
        pending: list(lines[2], "pending: ", "none"),
    }
}

#[test]
fn migrate_status_up_down_and_fresh_on_a_new_schema() {
    let schema = FreshSchema::create();
    let url = schema.url();

    // Status, with the URL from the environment: everything pending,
    // nothing created.
    let before = report(
        "status",
        &pharox_with_env(&["migrate", "status"], &[("PHAROX_DATABASE_URL", url)]),
    );
    assert!(before.changed.is_empty());
    assert!(before.applied.is_empty());
    assert_eq!(
        before.headline,
        format!("{} pending", before.pending.len()),
        "status says what is pending, not \"nothing to do\""
    );
    let all = before.pending;
    assert_eq!(
        all.first().map(String::as_str),
        Some("m0001_initial_schema")
    );
    assert_eq!(schema.objects(), 0, "status must create nothing");

    // `migrate` alone is `up`: applies everything, oldest first.
    let up = report("up", &pharox(&["migrate", "--database-url", url]));
    assert_eq!(up.changed, all);
    assert_eq!(up.applied, all);
    assert!(up.pending.is_empty());
    let tables = schema.tables();
    for table in ["lease", "proxy", "proxy_pool", "seaql_migrations"] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }

    let status = report(
        "status",
        &pharox(&["migrate", "status", "--database-url", url]),
    );
    assert!(status.changed.is_empty());
    assert_eq!(status.applied, all);
    assert!(status.pending.is_empty());
    assert_eq!(status.headline, "up to date");

    // Up again has nothing to do.
    let again = report("up", &pharox(&["migrate", "up", "--database-url", url]));
    assert!(again.changed.is_empty());
    assert_eq!(again.applied, all);

    // Down reverts the latest migration only.
    let latest = all.last().unwrap().clone();
    let down = report("down", &pharox(&["migrate", "down", "--database-url", url]));
    assert_eq!(down.changed, std::slice::from_ref(&latest));
    assert_eq!(down.applied, all[..all.len() - 1]);
    assert_eq!(down.pending, [latest]);

    // Fresh refuses without a terminal or --yes, and drops nothing.
    let refused = pharox(&["migrate", "fresh", "--database-url", url]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("invalid --yes"), "{refused:?}");
    assert_eq!(
        report(
            "status",
            &pharox(&["migrate", "status", "--database-url", url])
        )
        .applied,
        all[..all.len() - 1]
    );

    // With --yes, fresh drops everything and applies every migration.
    let fresh = report(
        "fresh",
        &pharox(&["migrate", "fresh", "--yes", "--database-url", url]),
    );
    assert_eq!(fresh.changed, all);
    assert_eq!(fresh.applied, all);
    assert!(fresh.pending.is_empty());
    assert_eq!(schema.tables(), tables);
}

#[test]
fn bench_needs_a_schema_or_migrate_and_removes_its_pool() {
    let schema = FreshSchema::create();
    let args = [
        "bench",
        "--database-url",
        schema.url(),
        "--iterations",
        "200",
        "--workers",
        "4",
        "--proxies",
        "20",
        "--json",
    ];

    // Unmigrated: a clear error, how to fix it, and nothing created.
    let run = pharox(&args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr
            .contains("error: the database has no current pharox schema"),
        "{run:?}"
    );
    assert!(run.stderr.contains("pharox migrate up"), "{run:?}");
    assert!(run.stderr.contains("--migrate"), "{run:?}");
    assert_eq!(schema.objects(), 0, "a refused bench must create nothing");
    // Only bench has --migrate, so only bench's hint offers it.
    let other = pharox(&["pool", "list", "--database-url", schema.url()]);
    assert_eq!(other.code, Some(1), "{other:?}");
    assert!(other.stderr.contains("pharox migrate up"), "{other:?}");
    assert!(!other.stderr.contains("--migrate"), "{other:?}");

    // With --migrate: the schema, then the run.
    let with_migrate: Vec<&str> = args.iter().copied().chain(["--migrate"]).collect();
    let run = pharox(&with_migrate);
    assert_clean_bench(&run, "postgres", 4, 20, 200);

    // The schema is current now: no --migrate needed.
    let run = pharox(&args);
    assert_eq!(bench_json(&run)["hits"], 200);

    // Both runs removed their pool, its proxies and its leases.
    assert_eq!(schema.count("proxy_pool", "name LIKE 'bench-%'"), 0);
    assert_eq!(schema.count("proxy", "true"), 0);
    assert_eq!(schema.count("lease", "true"), 0);
}

#[test]
fn bench_with_a_closed_stdout_exits_quietly_and_removes_its_pool() {
    let schema = FreshSchema::create();
    let args = [
        "bench",
        "--database-url",
        schema.url(),
        "--migrate",
        "--iterations",
        "200",
        "--workers",
        "2",
        "--proxies",
        "10",
    ];
    let json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    for args in [&args[..], &json[..]] {
        assert_quiet(args, &with_closed_stdout(args));
        schema.assert_tidy("closed stdout");
    }
}

#[test]
fn migrate_status_with_a_closed_stdout_ends_quietly() {
    let schema = FreshSchema::create();
    let args = ["migrate", "status", "--database-url", schema.url()];
    assert_quiet(&args, &with_closed_stdout(&args));
    schema.migrate();
    assert_quiet(&args, &with_closed_stdout(&args));
}

#[test]
fn sigint_and_sigterm_stop_the_bench_and_remove_its_pool() {
    let schema = FreshSchema::create();
    schema.migrate();
    for (signal, code, hold_ms) in [
        ("-INT", 130, "0"),
        ("-TERM", 143, "0"),
        ("-INT", 130, "600000"),
    ] {
        let args = [
            "bench",
            "--database-url",
            schema.url(),
            "--duration",
            "60",
            "--workers",
            "2",
            "--proxies",
            "10",
            "--hold-ms",
            hold_ms,
            "--json",
        ];
        let mut child = spawn(&args);
        // Leasing: past the setup, the workers are running.
        signal_when_running(&mut child, signal, || {
            schema.bench_pools() == 1 && schema.count("lease", "true") > 0
        });
        let run = finish(child);
        let what = format!("kill {signal}, --hold-ms {hold_ms}");
        assert_eq!(run.code, Some(code), "{what}: {run:?}");
        assert!(run.stdout.is_empty(), "{what}: {run:?}");
        assert!(
            run.stderr.starts_with("pharox: stopped by SIG"),
            "{what}: {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
        schema.assert_tidy(&what);
    }
}

#[test]
fn a_failing_run_exits_1_and_reports_its_errors_unless_they_are_allowed() {
    let schema = FreshSchema::create();
    schema.migrate();
    schema.fail_every_third_lease("INSERT");
    let args = [
        "bench",
        "--database-url",
        schema.url(),
        "--iterations",
        "30",
        "--workers",
        "2",
        "--proxies",
        "5",
    ];
    let json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    // 30 acquires (never a miss: more proxies than workers), of which
    // the 3rd, 6th, ... 30th fail.
    let assert_counts = |run: &Run| {
        let json = bench_json_of(run);
        assert_eq!(json["operations"], 30, "{run:?}");
        assert_eq!(json["hits"], 20, "{run:?}");
        assert_eq!(json["misses"], 0, "{run:?}");
        assert_eq!(json["errors"], 10, "{run:?}");
        assert_eq!(
            json["errors_by_kind"],
            serde_json::json!({"backend": 10}),
            "{run:?}"
        );
        let first = json["first_error"].as_str().expect("first_error is set");
        assert!(first.contains("boom"), "{run:?}");
    };

    let failed = pharox(&json);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert_counts(&failed);
    assert!(
        failed
            .stderr
            .starts_with("error: 10 benchmark operations failed, the first with: "),
        "{failed:?}"
    );
    assert!(failed.stderr.contains("boom"), "{failed:?}");
    assert!(failed.stderr.contains("hint: --allow-errors"), "{failed:?}");
    schema.assert_tidy("a failed run");

    // A closed stdout does not hide the failure, nor add to it.
    let unread = with_closed_stdout(&json);
    assert_eq!(unread.code, Some(1), "{unread:?}");
    assert!(
        unread
            .stderr
            .starts_with("error: 10 benchmark operations failed"),
        "{unread:?}"
    );
    assert!(!unread.stderr.contains("stdout"), "{unread:?}");
    assert!(!unread.stderr.contains("Broken pipe"), "{unread:?}");
    assert!(!unread.stderr.contains("panicked"), "{unread:?}");
    schema.assert_tidy("a failed run with a closed stdout");

    let allowed: Vec<&str> = json.iter().copied().chain(["--allow-errors"]).collect();
    let run = pharox(&allowed);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    assert_counts(&run);
    schema.assert_tidy("a run with --allow-errors");

    // The report for people says the same.
    let allowed: Vec<&str> = args.iter().copied().chain(["--allow-errors"]).collect();
    let run = pharox(&allowed);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("  operations 30: hits 20, misses 0, errors 10\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("  errors by kind: backend 10\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("  first error: "), "{run:?}");
    assert!(run.stdout.contains("boom"), "{run:?}");
    schema.assert_tidy("a human report with --allow-errors");

    // Failed releases: their acquires were hits, and the leases they
    // leave active go with the pool. Enough proxies for those never to
    // run out.
    schema.fail_every_third_lease("UPDATE");
    let many_proxies: Vec<&str> = json
        .iter()
        .map(|&arg| if arg == "5" { "30" } else { arg })
        .collect();
    let failed = pharox(&many_proxies);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let counts = bench_json_of(&failed);
    assert_eq!(counts["operations"], 30, "{failed:?}");
    assert_eq!(counts["hits"], 30, "{failed:?}");
    assert_eq!(counts["errors"], 10, "{failed:?}");
    assert_eq!(
        counts["errors_by_kind"],
        serde_json::json!({"backend": 10}),
        "{failed:?}"
    );
    assert!(
        counts["first_error"].as_str().unwrap().contains("boom"),
        "{failed:?}"
    );
    schema.assert_tidy("failed releases");

    // Without the trigger, the same run is clean again.
    schema.execute(format!("DROP TRIGGER boom ON \"{}\".lease", schema.name));
    assert_clean_bench(&pharox(&json), "postgres", 2, 5, 30);
    schema.assert_tidy("a clean run");
}
