//! What the operator tests share: running the built `pharox` binary, and a
//! fresh migrated schema per test on the real PostgreSQL server.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pharox::postgres::testing::{TEST_SCHEMA_PREFIX, test_database_url};
use pharox::postgres::{PostgresConfig, PostgresStorage};
use pharox_migration::sea_orm_migration::sea_orm::sqlx::{self, AssertSqlSafe};
use serde_json::Value;

/// How a run of the binary ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `pharox args...` with stdin empty, stdout to `stdout`.
pub fn run_with(args: &[&str], stdout: Stdio) -> Run {
    run_full(args, None, stdout)
}

/// Runs `pharox args...` with `input` on stdin (empty when `None`).
pub fn run_full(args: &[&str], input: Option<&[u8]>, stdout: Stdio) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pharox"))
        .args(args)
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        // The command may refuse before it reads: a broken pipe is its
        // answer, not the test's failure.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A fresh schema, migrated, dropped on drop.
pub struct Schema {
    pub name: String,
    pub url: String,
    pub admin: PostgresStorage,
    pub runtime: tokio::runtime::Runtime,
}

impl Schema {
    /// Creates and migrates it (with `pharox migrate`).
    pub fn create() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = test_database_url();
        let config = PostgresConfig::from_dsn(&base)
            .unwrap()
            .with_max_connections(2);
        let admin = runtime
            .block_on(PostgresStorage::connect(&config))
            .unwrap_or_else(|e| {
                panic!("these tests need PostgreSQL (set PHAROX_TEST_DATABASE_URL): {e}")
            });
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
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
        let schema = Self {
            name,
            url,
            admin,
            runtime,
        };
        let run = schema.pharox(&["migrate"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        schema
    }

    /// `pharox args... --database-url URL`.
    pub fn pharox(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--database-url", &self.url]);
        run_with(&all, Stdio::piped())
    }

    /// `pharox args... --database-url URL` with `input` on stdin.
    pub fn pharox_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut all = args.to_vec();
        all.extend(["--database-url", &self.url]);
        run_full(&all, Some(input.as_bytes()), Stdio::piped())
    }

    /// A storage on this schema.
    pub fn storage(&self) -> PostgresStorage {
        let config = PostgresConfig::from_dsn(&self.url)
            .unwrap()
            .with_max_connections(2);
        self.runtime
            .block_on(PostgresStorage::connect(&config))
            .unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let _ = self
            .runtime
            .block_on(sqlx::query(AssertSqlSafe(sql)).execute(self.admin.pg_pool()));
    }
}

/// The one JSON document a successful run printed.
pub fn json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{run:?}");
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {run:?}"))
}

/// Fails when `password` shows in any run's stdout or stderr.
pub fn assert_no_password<'a>(password: &str, runs: impl IntoIterator<Item = &'a Run>) {
    for run in runs {
        assert!(
            !run.stdout.contains(password) && !run.stderr.contains(password),
            "a password in the output: {run:?}"
        );
    }
}

/// A `pharox serve` process; killed if the test fails before stopping it.
/// Its stderr is collected in `log`.
pub struct ServeProcess {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Sends SIGTERM and waits: the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        self.child.wait().unwrap().code()
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// `pharox serve ARGS --listen 127.0.0.1:0`, with none of the variables of
/// the machine that would change it; the caller adds keys and more.
pub fn serve_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pharox"));
    command
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("PHAROX_API_KEYS")
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("PHAROX_LISTEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Spawns `command` (from [`serve_command`]) and returns it once it says
/// it listens on `scheme://ADDR`, with ADDR.
pub fn spawn_serve(command: Command, scheme: &str) -> (ServeProcess, String) {
    let prefix = format!("pharox serve: listening on {scheme}://");
    let (process, mut found) = spawn_announcing(command, &[&prefix]);
    (process, found.remove(0))
}

/// Spawns `command` and returns it once its stderr has shown a line
/// starting with each of `prefixes` (in any order), with what followed
/// each prefix on its line (an address), in the order of `prefixes`.
pub fn spawn_announcing(mut command: Command, prefixes: &[&str]) -> (ServeProcess, Vec<String>) {
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(String::new()));
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    while found.iter().any(Option::is_none) {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            panic!(
                "the process exited before it said {prefixes:?}; it said:\n{}",
                log.lock().unwrap()
            );
        };
        let line = line.unwrap();
        {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
        for (prefix, slot) in prefixes.iter().zip(found.iter_mut()) {
            if let Some(rest) = line.strip_prefix(prefix) {
                *slot = Some(rest.to_owned());
            }
        }
    }
    // Keep draining stderr so the process never blocks on a full pipe.
    let collected = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut log = collected.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (
        ServeProcess { child, log },
        found.into_iter().map(Option::unwrap).collect(),
    )
}

/// `pharox gateway ARGS --listen 127.0.0.1:0` (unless ARGS has a
/// `--listen`), with none of the variables of the machine that would
/// change it; the caller adds keys and more.
pub fn gateway_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pharox"));
    command.arg("gateway").args(args);
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .env_remove("PHAROX_API_KEYS")
        .env_remove("PHAROX_DATABASE_URL")
        .env_remove("PHAROX_GATEWAY_LISTEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts `pharox serve ARGS --listen 127.0.0.1:0` with `PHAROX_API_KEYS`
/// set to `keys`; returns it once it listens, and its address.
pub fn serve(args: &[&str], keys: &str) -> (ServeProcess, String) {
    let mut command = serve_command(args);
    command.env("PHAROX_API_KEYS", keys);
    spawn_serve(command, "http")
}
