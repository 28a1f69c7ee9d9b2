//! Throwaway database servers, one per test: PostgreSQL and MariaDB, each
//! with a data directory of its own under the temp dir and a free loopback
//! port, stopped (its process group killed) and its directory removed when
//! dropped.
//!
//! Both run without durability to disk (PostgreSQL `fsync=off`, MariaDB's
//! log flushed once a second): the tests kill participants, never the
//! database server, and the operating system keeps what the server wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Process, free_port, require};

const POSTGRES_INSTALL: &str = "apt-get install postgresql";
const MARIADB_INSTALL: &str = "apt-get install mariadb-server";

/// A PostgreSQL server of its own (Debian's `postgresql` binaries, run as
/// the `postgres` user when the test runs as root), with a database
/// `paytrace` that anyone on loopback may use (`trust`).
///
/// ```no_run
/// # async fn doc() {
/// let server = paytrace_testkit::PostgresServer::start().await;
/// assert!(server.url().starts_with("postgres://postgres@127.0.0.1:"));
/// # }
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    _process: Process,
    dir: TempDir,
    url: String,
}

impl PostgresServer {
    /// Creates a cluster (`initdb`), starts it and waits until it accepts
    /// connections (`pg_isready`), then creates the database `paytrace`.
    ///
    /// # Panics
    ///
    /// When PostgreSQL is not installed (the message says how to install
    /// it), or the server does not start within 30 seconds (with its log).
    pub async fn start() -> Self {
        let bin = postgres_bin();
        let dir = TempDir::new("pg");
        let as_postgres = running_as_root();
        if as_postgres {
            chown_to_postgres(dir.path());
        }
        let run = |program: &str| -> Command {
            let program = bin.join(program);
            if as_postgres {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                    .arg(program);
                cmd
            } else {
                Command::new(program)
            }
        };
        let data = dir.path().join("data");
        let init = run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb ({e}): `{POSTGRES_INSTALL}`"));
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let log = dir.path().join("server.log");
        let process = Process::spawn(
            run("postgres")
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "max_connections=200"])
                .stdout(Stdio::null())
                .stderr(log_file(&log)),
            POSTGRES_INSTALL,
        );
        let server = Self {
            _process: process,
            dir,
            url: format!("postgres://postgres@127.0.0.1:{port}/paytrace"),
        };
        let ready = || {
            Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        };
        wait_for("PostgreSQL", &log, ready).await;
        let created = Command::new(bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-q", "-c", "CREATE DATABASE paytrace"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql ({e}): `{POSTGRES_INSTALL}`"));
        assert!(
            created.status.success(),
            "cannot create the database: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        server
    }

    /// Its URL, `postgres://postgres@127.0.0.1:PORT/paytrace`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its data directory (the server's log is `server.log` beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A MariaDB server of its own (Debian's `mariadb-server`), without grant
/// checks, with a database `paytrace`.
///
/// ```no_run
/// # async fn doc() {
/// let server = paytrace_testkit::MariaDbServer::start().await;
/// assert!(server.url().starts_with("mysql://root@127.0.0.1:"));
/// # }
/// ```
#[derive(Debug)]
pub struct MariaDbServer {
    _process: Process,
    _dir: TempDir,
    url: String,
}

impl MariaDbServer {
    /// Creates a data directory (`mariadb-install-db`), starts `mariadbd`
    /// and waits until it answers (`mariadb-admin ping`), then creates the
    /// database `paytrace`.
    ///
    /// # Panics
    ///
    /// When MariaDB is not installed (the message says how to install it),
    /// or the server does not start within 30 seconds (with its log).
    pub async fn start() -> Self {
        require("mariadbd", MARIADB_INSTALL);
        let dir = TempDir::new("mariadb");
        let data = dir.path().join("data");
        // Its own temp dir: servers bootstrapping at once in one /tmp
        // collide on their temporary tables' names.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
        let user = if running_as_root() { "root" } else { "" };
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if !user.is_empty() {
            install.arg(format!("--user={user}"));
        }
        let installed = install
            .output()
            .unwrap_or_else(|e| panic!("cannot run mariadb-install-db ({e}): `{MARIADB_INSTALL}`"));
        assert!(
            installed.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let port = free_port();
        let log = dir.path().join("server.log");
        let socket = dir.path().join("mysqld.sock");
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args(["--skip-grant-tables", "--innodb-flush-log-at-trx-commit=2"])
            .args(["--innodb-buffer-pool-size=32M", "--max-connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !user.is_empty() {
            cmd.arg(format!("--user={user}"));
        }
        let server = Self {
            _process: Process::spawn(&mut cmd, MARIADB_INSTALL),
            _dir: dir,
            url: format!("mysql://root@127.0.0.1:{port}/paytrace"),
        };
        let mariadb = |sql: &str| {
            Command::new("mariadb")
                .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
                .arg(format!("-P{port}"))
                .args(["-e", sql])
                .output()
        };
        wait_for("MariaDB", &log, || {
            mariadb("SELECT 1").is_ok_and(|o| o.status.success())
        })
        .await;
        let created = mariadb("CREATE DATABASE paytrace")
            .unwrap_or_else(|e| panic!("cannot run mariadb ({e}): `{MARIADB_INSTALL}`"));
        assert!(
            created.status.success(),
            "cannot create the database: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        server
    }

    /// Its URL, `mysql://root@127.0.0.1:PORT/paytrace`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A directory under the temp dir, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "paytrace-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The newest `/usr/lib/postgresql/N/bin` holding a `postgres`.
fn postgres_bin() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists())
        .max_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
    newest.unwrap_or_else(|| {
        panic!(
            "this test needs PostgreSQL's server binaries (/usr/lib/postgresql/N/bin/postgres): \
             install them with `{POSTGRES_INSTALL}` (scripts/test.sh installs everything the tests need)"
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn chown_to_postgres(dir: &Path) {
    let done = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        done,
        "cannot give {} to the postgres user (created by `{POSTGRES_INSTALL}`)",
        dir.display()
    );
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Polls `ready` until it answers; panics after 30 s with the server's log.
async fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not start within 30 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
