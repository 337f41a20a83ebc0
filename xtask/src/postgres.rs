//! Finding a PostgreSQL server for the tests, in this order:
//!
//! 1. `PHAROX_DATABASE_URL`, when set (a failure to connect is an error);
//! 2. the server at 127.0.0.1:5432 as user `postgres`, when one answers;
//! 3. a throwaway cluster made with the machine's own `initdb`/`pg_ctl` in a
//!    temporary folder on a free port, stopped and removed afterwards;
//! 4. otherwise the run fails and says how to get PostgreSQL.
//!
//! `PHAROX_XTASK_THROWAWAY=1` skips 1 and 2, to test against a pristine
//! server (and to test this module's own fallback).
//!
//! Each run then creates a database with a unique name and drops it at the
//! end, so runs never see each other's data.

use std::time::Duration;

use pharox_adapter_postgres::testing::cluster::Cluster;
use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
use pharox_migration::sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection};

const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const HOW_TO_GET_POSTGRES: &str = "no PostgreSQL server for the tests.
  The PostgreSQL adapter's tests need a real server; they are never skipped. Either
  - set PHAROX_DATABASE_URL=postgres://user:pass@host:5432/db (a role that may CREATE DATABASE), or
  - run a server on 127.0.0.1:5432 that accepts user postgres (e.g. apt-get install postgresql), or
  - install the server binaries (initdb, pg_ctl on PATH or in /usr/lib/postgresql/*/bin) so a
    throwaway cluster can be started.";

/// Connects with a short timeout and SQL logging off, through the
/// PostgreSQL adapter: its parser refuses a malformed URL without echoing
/// it, and its errors say what happened (a refused port at once) without
/// the password. (SeaORM's own `Database::connect` quotes the whole URL
/// when it does not know the scheme.)
pub async fn connect(url: &str) -> Result<DatabaseConnection, String> {
    let mut config = PostgresConfig::from_dsn(url)
        .map_err(|e| format!("database URL: {e}"))?
        .with_max_connections(2);
    config.connect_timeout = Duration::from_secs(5);
    config.acquire_timeout = Duration::from_secs(5);
    let storage = PostgresStorage::connect(&config)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    // The pool lives on in the SeaORM connection.
    Ok(storage.connection().clone())
}

/// The settings `cargo xtask migrate` connects with: the URL read by the
/// PostgreSQL adapter's own parser with a pool of two, exactly as
/// `pharox migrate` reads it (`crates/cli/src/migrate.rs`). So `?schema=`,
/// `sslmode` and the pool parameters mean the same in both tools, and an
/// unknown parameter is an error instead of being dropped. The parser's
/// errors never echo the URL, so they need no redaction.
pub fn migrate_config(url: &str) -> Result<PostgresConfig, String> {
    PostgresConfig::from_dsn(url)
        .map(|config| config.with_max_connections(2))
        .map_err(|e| format!("database URL: {e}"))
}

/// Opens the PostgreSQL adapter's storage for `config`, the way
/// `pharox migrate` does. Its errors never show the password (nor
/// `config`).
pub async fn connect_storage(config: &PostgresConfig) -> Result<PostgresStorage, String> {
    PostgresStorage::connect(config)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))
}

/// A server the tests may use, and the cluster to stop if we started one.
pub struct Server {
    admin_url: String,
    cluster: Option<Cluster>,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    /// Finds or starts a server (see the module docs).
    pub fn find_or_start() -> Result<Self, String> {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let throwaway_only = std::env::var("PHAROX_XTASK_THROWAWAY").is_ok_and(|v| v == "1");
        if throwaway_only {
            return Self::throwaway(runtime);
        }
        if let Ok(url) = std::env::var("PHAROX_DATABASE_URL") {
            runtime
                .block_on(connect(&url))
                .map_err(|e| format!("PHAROX_DATABASE_URL: {e}"))?;
            return Ok(Self {
                admin_url: url,
                cluster: None,
                runtime,
            });
        }
        if runtime.block_on(connect(LOCAL_URL)).is_ok() {
            return Ok(Self {
                admin_url: LOCAL_URL.to_owned(),
                cluster: None,
                runtime,
            });
        }
        Self::throwaway(runtime)
    }

    fn throwaway(runtime: tokio::runtime::Runtime) -> Result<Self, String> {
        let cluster = Cluster::start().map_err(|e| format!("{e}\n{HOW_TO_GET_POSTGRES}"))?;
        let admin_url = cluster.url();
        println!(
            "xtask: started a throwaway PostgreSQL cluster on port {}",
            cluster.port()
        );
        runtime
            .block_on(connect(&admin_url))
            .map_err(|e| format!("the throwaway cluster does not answer: {e}"))?;
        Ok(Self {
            admin_url,
            cluster: Some(cluster),
            runtime,
        })
    }

    /// Where the server is, without secrets.
    pub fn describe(&self) -> String {
        match &self.cluster {
            Some(cluster) => format!(
                "throwaway cluster on port {} in {}",
                cluster.port(),
                cluster.dir().display()
            ),
            None => PostgresConfig::redact_dsn(&self.admin_url),
        }
    }

    /// Creates a uniquely named database, dropped when the guard is.
    pub fn create_test_database(&self) -> Result<TestDatabase<'_>, String> {
        let name = format!("pharox_test_{}", uuid::Uuid::new_v4().simple());
        self.runtime.block_on(async {
            let db = connect(&self.admin_url).await?;
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| format!("cannot create the test database: {e}"))
        })?;
        let url = with_database(&self.admin_url, &name);
        Ok(TestDatabase {
            server: self,
            name,
            url,
        })
    }
}

/// Replaces the database part of a URL, keeping the query.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database created for one run.
pub struct TestDatabase<'a> {
    server: &'a Server,
    name: String,
    url: String,
}

impl TestDatabase<'_> {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase<'_> {
    fn drop(&mut self) {
        let outcome = self.server.runtime.block_on(async {
            let db = connect(&self.server.admin_url).await?;
            db.execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .map_err(|e| e.to_string())
        });
        if let Err(e) = outcome {
            eprintln!("xtask: could not drop test database {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    }

    #[test]
    fn the_admin_url_is_described_through_the_adapters_redactor() {
        let server = |admin_url: &str| Server {
            admin_url: admin_url.to_owned(),
            cluster: None,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        };
        assert_eq!(
            server("postgres://postgres:S3cr3t@127.0.0.1:5432/postgres").describe(),
            "postgres://***@127.0.0.1:5432/postgres?sslmode=prefer"
        );
        // A raw '@' in the password: nothing of the URL is shown.
        let shown = server("postgres://postgres:a@b@127.0.0.1:5432/postgres").describe();
        assert_eq!(shown, PostgresConfig::redact_dsn("postgres://x:a@b@h"));
        assert!(!shown.contains("a@b"), "{shown}");
    }

    #[test]
    fn a_malformed_url_is_refused_without_being_echoed() {
        for (url, secrets) in [
            (
                "postgres://postgres:4321/S3cr3t@127.0.0.1/db",
                &["4321", "S3cr3t"][..],
            ),
            (
                "postgres://u:p@ss#x@127.0.0.1/db",
                &["p@ss", "ss#", "#x", "ss:"][..],
            ),
            ("postgres://u:p@ss:w@rd@h/db", &["p@ss", "ss:w", "w@rd"][..]),
            ("postgres://u:12/s3cret@h/db", &["12/", "s3cret"][..]),
        ] {
            let e = migrate_config(url).unwrap_err();
            assert!(e.contains("percent-encoded"), "{url}: {e}");
            let connected = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(connect(url))
                .map(|_| ())
                .unwrap_err();
            for secret in secrets {
                assert!(!e.contains(secret), "{url}: {secret:?} in {e}");
                assert!(
                    !connected.contains(secret),
                    "{url}: {secret:?} in {connected}"
                );
            }
        }
    }

    #[test]
    fn migrate_reads_the_url_as_pharox_migrate_does() {
        let url = "postgres://u:s3cret@h:6543/db?sslmode=disable&schema=app";
        let config = migrate_config(url).unwrap();
        // sqlx alone ignores `schema`; the adapter's parser keeps it, and
        // PostgresStorage::connect sends it as the session's search_path.
        assert_eq!(config.schema.as_deref(), Some("app"));
        assert_eq!(config.ssl_mode, pharox_adapter_postgres::SslMode::Disable);
        assert_eq!(
            (config.host.as_str(), config.port, config.database.as_str()),
            ("h", 6543, "db")
        );
        assert_eq!(config.max_connections, 2, "the pool pharox migrate uses");
        // The other spellings of the schema.
        for url in [
            "postgres://h/db?search_path=app",
            "postgres://h/db?options=-csearch_path%3Dapp",
        ] {
            assert_eq!(
                migrate_config(url).unwrap().schema.as_deref(),
                Some("app"),
                "{url}"
            );
        }
        assert_eq!(migrate_config("postgres://h/db").unwrap().schema, None);
        // A percent-encoded '@' and ':' in the password.
        let config = migrate_config("postgres://u:p%40ss%3Aw%40rd@h/db").unwrap();
        assert_eq!(config.password.as_deref(), Some("p@ss:w@rd"));
        assert_eq!(config.host, "h");
        // A misspelt parameter fails instead of migrating the default
        // schema, and the error does not show the password.
        let e = migrate_config("postgres://u:s3cret@h/db?shema=app").unwrap_err();
        assert!(e.contains("shema"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = migrate_config("mysql://u:s3cret@h/db").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
