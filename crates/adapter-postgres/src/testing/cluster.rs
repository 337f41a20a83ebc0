//! A throwaway PostgreSQL cluster for tests that restart or crash the
//! server, which they must never do to a shared one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How [`Cluster::restart`] stops the server before starting it again
/// (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, finishes cleanly (a checkpoint).
    Fast,
    /// Kills every server process at once, like a crash: the next start
    /// replays the WAL, and what had not reached it is lost.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A cluster made with the machine's `initdb` in a temporary folder,
/// listening on 127.0.0.1 on a free port, trust authentication, user
/// `postgres`. Stopped and deleted on drop. As root, the server runs as
/// the `postgres` user (PostgreSQL refuses root).
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
    run_as_postgres: bool,
}

impl Cluster {
    /// Makes and starts a cluster. Fails with a message saying how to get
    /// the server binaries when `initdb` or `pg_ctl` is missing.
    pub fn start() -> Result<Self, String> {
        let missing = |name: &str| {
            format!(
                "{name} not found: install the PostgreSQL server binaries (Debian: \
                 `apt-get install postgresql`; they go to /usr/lib/postgresql/*/bin) \
                 or put {name} on PATH"
            )
        };
        let initdb = find_binary("initdb").ok_or_else(|| missing("initdb"))?;
        let pg_ctl = find_binary("pg_ctl").ok_or_else(|| missing("pg_ctl"))?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("pharox-test-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let run_as_postgres = is_root();
        if run_as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                false,
            )?;
        }
        let cluster = Self {
            dir,
            port,
            pg_ctl,
            run_as_postgres,
        };
        run(
            Command::new(&initdb)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(cluster.data()),
            run_as_postgres,
        )?;
        cluster.pg_ctl("start", None)?;
        Ok(cluster)
    }

    /// The DSN of the cluster's `postgres` database.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The folder holding its data, socket and log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server as `mode` says and starts it again; returns once it
    /// accepts connections.
    pub fn restart(&self, mode: StopMode) -> Result<(), String> {
        self.pg_ctl("restart", Some(mode))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, action: &str, mode: Option<StopMode>) -> Result<(), String> {
        // fsync off: the tests crash the server processes, not the machine,
        // so what was written to the OS survives either way.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let mut command = Command::new(&self.pg_ctl);
        command.args(["-w", "-t", "60"]);
        if let Some(mode) = mode {
            command.args(["-m", mode.as_str()]);
        }
        command
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, action]);
        run(&mut command, self.run_as_postgres)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(
            Command::new(&self.pg_ctl)
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.data())
                .arg("stop"),
            self.run_as_postgres,
        );
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

/// `name` on PATH, else the newest /usr/lib/postgresql/*/bin/`name`.
#[must_use]
pub fn find_binary(name: &str) -> Option<PathBuf> {
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
