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

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
use pharox_migration::sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
};

const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const HOW_TO_GET_POSTGRES: &str = "no PostgreSQL server for the tests.
  The PostgreSQL adapter's tests need a real server; they are never skipped. Either
  - set PHAROX_DATABASE_URL=postgres://user:pass@host:5432/db (a role that may CREATE DATABASE), or
  - run a server on 127.0.0.1:5432 that accepts user postgres (e.g. apt-get install postgresql), or
  - install the server binaries (initdb, pg_ctl on PATH or in /usr/lib/postgresql/*/bin) so a
    throwaway cluster can be started.";

/// Connects with a short timeout and SQL logging off.
pub async fn connect(url: &str) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(2)
        .sqlx_logging(false);
    Database::connect(options).await.map_err(|e| {
        format!(
            "cannot connect to PostgreSQL: {}",
            redact(&e.to_string(), url)
        )
    })
}

/// The settings `cargo xtask migrate` connects with: the URL read by the
/// PostgreSQL adapter's own parser with a pool of two, exactly as
/// `pharox migrate` reads it (`crates/cli/src/migrate.rs`). So `?schema=`,
/// `sslmode` and the pool parameters mean the same in both tools, and an
/// unknown parameter is an error instead of being dropped.
pub fn migrate_config(url: &str) -> Result<PostgresConfig, String> {
    PostgresConfig::from_dsn(url)
        .map(|config| config.with_max_connections(2))
        .map_err(|e| format!("database URL: {}", redact(&e.to_string(), url)))
}

/// Opens the PostgreSQL adapter's storage for `config` (parsed from `url`),
/// the way `pharox migrate` does.
///
/// The error does not show `config`: a password with an unencoded `/` ends
/// up in its database name.
pub async fn connect_storage(
    config: &PostgresConfig,
    url: &str,
) -> Result<PostgresStorage, String> {
    PostgresStorage::connect(config).await.map_err(|e| {
        format!(
            "cannot connect to PostgreSQL: {}",
            redact_config(&e.to_string(), url, config)
        )
    })
}

/// Removes the password from a message, both as written in `url` and as
/// `config` holds it (percent-decoded).
pub fn redact_config(message: &str, url: &str, config: &PostgresConfig) -> String {
    let message = redact(message, url);
    match config.password.as_deref() {
        Some(password) if !password.is_empty() => message.replace(password, "***"),
        _ => message,
    }
}

/// Removes the URL's password from a message: the password as URL parsers
/// read it, and as it was meant if it holds an unencoded `/`.
fn redact(message: &str, url: &str) -> String {
    let mut message = message.to_owned();
    // The longer reading first: it may contain the other.
    for password in [password_with_slashes(url), password_of(url)]
        .into_iter()
        .flatten()
    {
        if !password.is_empty() {
            message = message.replace(password, "***");
        }
    }
    message
}

/// The password of a URL's userinfo, as written (not percent-decoded).
///
/// The authority runs from `://` to the first `/`, `?` or `#`; the userinfo
/// is the authority up to its *last* `@` (URL parsers read
/// `user:p@ss@host` as password `p@ss` on `host`, so a raw `@` in a password
/// stays in it), and the password is the userinfo after its first `:` (a
/// user name cannot hold one, a password can).
fn password_of(url: &str) -> Option<&str> {
    password_before(url, &['/', '?', '#'])
}

/// The password as meant when it holds an unencoded `/` (which ends the
/// authority for URL parsers, so the rest of the password lands in the
/// path): the userinfo taken up to the last `@` before the query.
fn password_with_slashes(url: &str) -> Option<&str> {
    password_before(url, &['?'])
}

/// The password of the userinfo that ends at the last `@` before the first
/// of `ends` after `://`.
fn password_before<'u>(url: &'u str, ends: &[char]) -> Option<&'u str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(ends).unwrap_or(rest.len());
    let userinfo = rest[..end].rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1)
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
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
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
                cluster.port,
                cluster.dir.display()
            ),
            None => redact(&self.admin_url, &self.admin_url),
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

/// A cluster started by us, stopped and deleted on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
    run_as_postgres: bool,
}

impl Cluster {
    fn start() -> Result<Self, String> {
        let initdb = find_binary("initdb").ok_or("initdb not found")?;
        let pg_ctl = find_binary("pg_ctl").ok_or("pg_ctl not found")?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("pharox-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // PostgreSQL refuses to run as root: hand the folder to `postgres`.
        let run_as_postgres = is_root();
        if run_as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                false,
            )?;
        }
        let data = dir.join("data");
        let cluster = Self {
            dir,
            port,
            pg_ctl,
            run_as_postgres,
        };
        run(
            Command::new(&initdb)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
            run_as_postgres,
        )?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            cluster.dir.display()
        );
        run(
            Command::new(&cluster.pg_ctl)
                .args(["-w", "-t", "30", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(cluster.dir.join("server.log"))
                .args(["-o", &options, "start"]),
            run_as_postgres,
        )?;
        println!("xtask: started a throwaway PostgreSQL cluster on port {port}");
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stopped = run(
            Command::new(&self.pg_ctl)
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop"),
            self.run_as_postgres,
        );
        if let Err(e) = stopped {
            eprintln!("xtask: could not stop the throwaway cluster: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a command (as `postgres` when asked), failing with its output.
fn run(command: &mut Command, as_postgres: bool) -> Result<(), String> {
    let mut command = if as_postgres {
        // runuser lives in /usr/sbin, which a minimal PATH may lack.
        let runuser = find_binary("runuser").unwrap_or_else(|| PathBuf::from("/usr/sbin/runuser"));
        let mut wrapped = Command::new(runuser);
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    } else {
        std::mem::replace(command, Command::new("true"))
    };
    let output = command
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}{}",
            command.get_program(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|p| Path::new(p).is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_and_redacted() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(
            redact(
                "failed for postgres://u:s3cret@h/db",
                "postgres://u:s3cret@h/db"
            ),
            "failed for postgres://u:***@h/db"
        );
    }

    #[test]
    fn password_of_takes_the_userinfo_up_to_the_last_at() {
        // Plain.
        assert_eq!(password_of("postgres://u:s3cret@h:5432/db"), Some("s3cret"));
        // Raw '@' and ':' in the password: the host follows the last '@'.
        assert_eq!(
            password_of("postgres://u:p@ss:w@rd@h:5432/db?sslmode=disable"),
            Some("p@ss:w@rd")
        );
        // An '@' after the authority (path, query) is not the userinfo's.
        assert_eq!(
            password_of("postgres://u:pw@h/db?application_name=a@b"),
            Some("pw")
        );
        assert_eq!(password_of("postgres://h/db?application_name=a:b@c"), None);
        // Percent-encoded: as written.
        assert_eq!(password_of("postgres://u:p%40ss@h/db"), Some("p%40ss"));
        // No password.
        assert_eq!(password_of("postgres://u@h:5432/db"), None);
        assert_eq!(password_of("postgres://u:@h/db"), Some(""));
        // No userinfo.
        assert_eq!(password_of("postgres://h:5432/db"), None);
        assert_eq!(password_of("postgres://[::1]:5432/db"), None);
        assert_eq!(password_of("postgres://h"), None);
        assert_eq!(password_of("not a url"), None);
    }

    #[test]
    fn redact_hides_the_whole_password() {
        let url = "postgres://u:p@ss:w@rd@h:5432/db";
        let shown = redact(&format!("cannot use {url}: p@ss:w@rd refused"), url);
        assert_eq!(shown, "cannot use postgres://u:***@h:5432/db: *** refused");
        assert!(!shown.contains("ss:w"), "{shown}");
        assert_eq!(
            redact(
                "failed for postgres://u:s3cret@h/db",
                "postgres://u:s3cret@h/db"
            ),
            "failed for postgres://u:***@h/db"
        );
        // Nothing to hide: the message is left alone.
        for url in [
            "postgres://u@h/db",
            "postgres://u:@h/db",
            "postgres://h:5432/db",
        ] {
            assert_eq!(redact("failed for u@h: no", url), "failed for u@h: no");
        }
        // An unencoded '/' in the password: parsers take `u` for the host and
        // put the password's tail in the path; both parts are hidden.
        let url = "postgres://u:12/s3cret@h/db";
        assert_eq!(password_of(url), None);
        assert_eq!(password_with_slashes(url), Some("12/s3cret"));
        assert_eq!(
            redact(&format!("bad {url}"), url),
            "bad postgres://u:***@h/db"
        );
        let url = "postgres://u:x@y/z@h/db";
        assert_eq!(
            redact(&format!("bad {url}: x"), url),
            "bad postgres://u:***@h/db: ***"
        );
        // Server::describe shows the admin URL through redact.
        let url = "postgres://postgres:a@b@127.0.0.1:5432/postgres";
        assert_eq!(
            redact(url, url),
            "postgres://postgres:***@127.0.0.1:5432/postgres"
        );
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
        // A raw '@' in the password: read as the redaction reads it.
        let config = migrate_config("postgres://u:p@ss:w@rd@h/db").unwrap();
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

    #[test]
    fn redact_config_hides_the_decoded_password_too() {
        let url = "postgres://u:p%40ss@h/db";
        let config = migrate_config(url).unwrap();
        assert_eq!(redact_config("p%40ss or p@ss", url, &config), "*** or ***");
    }
}
