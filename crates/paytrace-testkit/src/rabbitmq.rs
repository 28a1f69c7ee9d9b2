//! A throwaway RabbitMQ broker: its own Erlang port mapper, node name,
//! ports and directories, so that tests running at once never meet.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::databases::TempDir;
use crate::{Process, free_port};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const INSTALL: &str = "apt-get install rabbitmq-server";

/// A RabbitMQ broker of its own (Debian's `rabbitmq-server`) with the
/// management plugin, on free loopback ports, stopped when dropped. It has
/// the default `guest` user, which RabbitMQ admits from loopback only.
///
/// The broker's Erlang port mapper (`epmd`) runs on a port of its own too,
/// started and stopped with it: no process outlives the test.
///
/// ```no_run
/// # async fn doc() {
/// let broker = paytrace_testkit::RabbitMqServer::start().await;
/// assert!(broker.amqp_url().starts_with("amqp://guest:guest@127.0.0.1:"));
/// # }
/// ```
#[derive(Debug)]
pub struct RabbitMqServer {
    // Dropped in this order: the broker, its port mapper, its directory.
    _broker: Process,
    _epmd: Process,
    dir: TempDir,
    amqp_url: String,
    management_url: String,
}

impl RabbitMqServer {
    /// Starts the port mapper and the broker, and waits until the management
    /// API answers (it starts after the AMQP listener).
    ///
    /// # Panics
    ///
    /// When RabbitMQ is not installed (the message says how to install it),
    /// or the broker does not answer within 60 seconds (with its log).
    pub async fn start() -> Self {
        assert!(
            Path::new(SERVER).exists(),
            "this test needs RabbitMQ ({SERVER} is missing): install it with `{INSTALL}` \
             (scripts/test.sh installs everything the tests need)"
        );
        let dir = TempDir::new("rabbitmq");
        let (amqp, management, dist, epmd) = (free_port(), free_port(), free_port(), free_port());
        let epmd_process = Process::spawn(
            Command::new("epmd")
                .args(["-port", &epmd.to_string()])
                .stdout(Stdio::null())
                // It complains of the readiness probe's empty connection.
                .stderr(Stdio::null()),
            INSTALL,
        );
        wait_for_port(epmd, "epmd").await;

        let path = dir.path();
        write(
            &path.join("rabbitmq.conf"),
            &format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {management}\n\
                 log.console = false\n\
                 collect_statistics_interval = 500\n"
            ),
        );
        write(&path.join("enabled_plugins"), "[rabbitmq_management].\n");
        let log = path.join("log");
        let broker = Process::spawn(
            Command::new(SERVER)
                .current_dir(path)
                .env("HOME", path)
                .env("ERL_EPMD_PORT", epmd.to_string())
                .env("RABBITMQ_NODENAME", format!("paytrace{amqp}@localhost"))
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("RABBITMQ_BASE", path)
                .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    path.join("enabled_plugins"),
                )
                .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", &log)
                .env("RABBITMQ_PID_FILE", path.join("pid"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            INSTALL,
        );
        let server = Self {
            _broker: broker,
            _epmd: epmd_process,
            dir,
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
            management_url: format!("http://127.0.0.1:{management}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answered = client
                .get(format!("{}/api/overview", server.management_url))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not answer within 60 s; its log:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (the default virtual host).
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// The management API's base URL, `http://127.0.0.1:PORT` (user
    /// `guest`, password `guest`).
    pub fn management_url(&self) -> &str {
        &self.management_url
    }

    /// The broker's log files, concatenated (for a failure's message).
    pub fn log(&self) -> String {
        std::fs::read_dir(self.dir.path().join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
