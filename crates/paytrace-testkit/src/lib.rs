//! Helpers for paytrace's own tests, shared by the crates' test suites.
//!
//! The tests run against real servers, so these start them and say how to
//! install what is missing; they panic rather than return errors, because a
//! test cannot go on without them.
//!
//! - [`Process`]: a program a test starts, killed with its children when
//!   the test ends, passed or failed.
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port.
//! - [`PostgresServer`], [`MariaDbServer`]: throwaway database servers, each
//!   with a data directory of its own.
//! - [`RabbitMqServer`]: a throwaway RabbitMQ broker with its management API.
//! - [`post_otlp_json`]: an OTLP/HTTP JSON request, as an SDK sends it.
//! - [`free_port`]: a loopback port nobody listens on.
//! - [`scrape_value`]: one sample of a `/metrics` page.
//! - [`checkout::CheckoutFlow`]: a checkout's traces as a shop exports them.

pub mod checkout;
mod databases;
mod process;
mod rabbitmq;

pub use databases::{MariaDbServer, PostgresServer};
pub use process::Process;
pub use rabbitmq::RabbitMqServer;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `url` until it answers with a success status; panics, naming
/// `what`, when `within` passes first.
///
/// ```no_run
/// # async fn doc() {
/// paytrace_testkit::wait_until_ok("http://127.0.0.1:8686/readyz", std::time::Duration::from_secs(20), "the aggregator").await;
/// # }
/// ```
pub async fn wait_until_ok(url: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "{what} did not answer {url} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `paytrace-aggregator serve` (the binary at `exe`: pass
/// `env!("CARGO_BIN_EXE_paytrace-aggregator")`) on three free loopback
/// ports (API, OTLP/gRPC, OTLP/HTTP), which `setup` hands to it as flags or
/// variables along with anything else; stderr piped. Returned once
/// `/readyz` answers, with the ports; killed when the [`Process`] drops.
///
/// ```no_run
/// # async fn doc() {
/// let (aggregator, [api, _grpc, _http]) = paytrace_testkit::serve_aggregator(
///     "target/debug/paytrace-aggregator",
///     |cmd, [api, grpc, http]| {
///         cmd.args(["--listen", &format!("127.0.0.1:{api}")])
///             .args(["--otlp-grpc-listen", &format!("127.0.0.1:{grpc}")])
///             .args(["--otlp-http-listen", &format!("127.0.0.1:{http}")]);
///     },
/// )
/// .await;
/// let out = aggregator.stop("TERM").await;
/// assert!(out.status.success());
/// # }
/// ```
pub async fn serve_aggregator(
    exe: &str,
    mut setup: impl FnMut(&mut Command, [u16; 3]),
) -> (Process, [u16; 3]) {
    // A port found free may be taken (by another test's outgoing
    // connection) before the aggregator binds it: it then exits at once,
    // and is started again on other ports.
    for attempt in 1..=3 {
        let ports = [free_port(), free_port(), free_port()];
        let mut cmd = Command::new(exe);
        cmd.arg("serve").stderr(Stdio::piped());
        setup(&mut cmd, ports);
        let mut process = Process::spawn(&mut cmd, "cargo build -p paytrace-aggregator");
        let url = format!("http://127.0.0.1:{}/readyz", ports[0]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return (process, ports);
            }
            if let Ok(Some(status)) = process.child().try_wait() {
                let mut err = String::new();
                if let Some(mut pipe) = process.child().stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                assert!(
                    attempt < 3,
                    "{exe} serve exited three times at start: {status}: {err}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{exe} serve did not answer {url} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    unreachable!("the loop returns or panics")
}

/// Panics, saying how to install it, unless `program` runs
/// (`program --version` exits 0). Test binaries that need a program from
/// outside Rust call this first, so that a missing tool fails at once with
/// what to do rather than halfway with an I/O error.
///
/// ```
/// paytrace_testkit::require("rustc", "rustup (https://rustup.rs)");
/// ```
///
/// ```should_panic
/// paytrace_testkit::require("no-such-program-here", "apt-get install nothing");
/// ```
pub fn require(program: &str, install: &str) {
    let runs = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "this test needs `{program}`, which does not run here: install it with `{install}` \
         (scripts/test.sh installs everything the tests need)"
    );
}

/// Polls `read` every 20 ms until it gives a value, and returns it; panics
/// naming `what` when `within` passes first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let start = std::time::Instant::now();
/// let v = paytrace_testkit::eventually("a tick", std::time::Duration::from_secs(5), || {
///     (start.elapsed() > std::time::Duration::from_millis(30)).then_some(7)
/// })
/// .await;
/// assert_eq!(v, 7);
/// # }
/// ```
pub async fn eventually<T>(what: &str, within: Duration, mut read: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = read() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback TCP port that was free a moment ago.
///
/// ```
/// let port = paytrace_testkit::free_port();
/// assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
/// ```
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A `redis-server` of its own on a free loopback port, without
/// persistence, stopped when dropped.
///
/// ```no_run
/// # async fn run() {
/// let server = paytrace_testkit::RedisServer::start().await;
/// let client = redis::Client::open(server.url()).unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    _process: Process,
    url: String,
}

impl RedisServer {
    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (the message says how to
    /// install it) or does not answer within 10 seconds.
    pub async fn start() -> Self {
        require("redis-server", "apt-get install redis-server");
        let port = free_port();
        let process = Process::spawn(
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null()),
            "apt-get install redis-server",
        );
        // Owned from here on, so that a failed wait still stops it.
        let server = Self {
            _process: process,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers().await {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// Its URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return false;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }
}

/// Posts `body`, an OTLP/JSON `ExportTraceServiceRequest`, to the OTLP/HTTP
/// receiver at `otlp_http`.
///
/// # Panics
///
/// When the receiver does not answer, or answers with an error status.
///
/// ```no_run
/// # async fn run(otlp_http: std::net::SocketAddr) {
/// paytrace_testkit::post_otlp_json(otlp_http, &serde_json::json!({ "resourceSpans": [] })).await;
/// # }
/// ```
pub async fn post_otlp_json(otlp_http: SocketAddr, body: &serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{otlp_http}/v1/traces"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the OTLP/HTTP receiver at {otlp_http} does not answer: {e}"));
    assert!(
        response.status().is_success(),
        "the OTLP/HTTP receiver answered {}",
        response.status()
    );
}

/// The value of the first sample of the `/metrics` page at `url` whose line
/// starts with `line_prefix` (the name and the labels, in the exposition's
/// order), 0 when there is none.
///
/// # Panics
///
/// When the page cannot be fetched.
///
/// ```no_run
/// # async fn run() {
/// let dropped = paytrace_testkit::scrape_value(
///     "http://127.0.0.1:8686/metrics",
///     r#"paytrace_aggregator_spans_dropped_total{reason="late"}"#,
/// ).await;
/// # }
/// ```
pub async fn scrape_value(url: &str, line_prefix: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("cannot scrape {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("cannot read {url}: {e}"));
    sample_value(&text, line_prefix)
}

/// The stage names of a breakdown (`GET /api/v1/breakdown`), in its order.
///
/// ```
/// let b = serde_json::json!({"stages": [{"stage": "channel.request"}, {"stage": "order.create"}]});
/// assert_eq!(paytrace_testkit::stage_names(&b), ["channel.request", "order.create"]);
/// ```
pub fn stage_names(breakdown: &serde_json::Value) -> Vec<&str> {
    breakdown["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect()
}

/// The value of the first sample of a `/metrics` text whose line starts
/// with `line_prefix`; 0 when there is none (a series not yet created).
///
/// ```
/// let text = "# TYPE x counter\nx{a=\"1\"} 3\n";
/// assert_eq!(paytrace_testkit::sample_value(text, r#"x{a="1"}"#), 3.0);
/// assert_eq!(paytrace_testkit::sample_value(text, r#"x{a="2"}"#), 0.0);
/// ```
pub fn sample_value(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The options of a clap `--help` text whose description does not name the
/// environment variable `{prefix}{NAME}` (`--trace-idle` → `PAYTRACE_TRACE_IDLE`),
/// `--help` and `--version` aside; and the options seen.
///
/// ```
/// let help = "  --listen <ADDR>\n      Where [env: PAYTRACE_LISTEN=]\n  --rps <N>\n      Rate\n";
/// let (missing, seen) = paytrace_testkit::options_without_env(help, "PAYTRACE_");
/// assert_eq!((missing, seen), (vec!["rps".to_owned()], 2));
/// ```
pub fn options_without_env(help: &str, prefix: &str) -> (Vec<String>, usize) {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("--") {
            let name = rest.split([' ', '<']).next().unwrap_or_default().to_owned();
            blocks.push((name, String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
        }
    }
    blocks.retain(|(name, _)| !matches!(name.as_str(), "help" | "version"));
    let seen = blocks.len();
    let missing = blocks
        .into_iter()
        .filter(|(name, text)| {
            let env = format!("[env: {prefix}{}=", name.to_uppercase().replace('-', "_"));
            !text.contains(&env)
        })
        .map(|(name, _)| name)
        .collect();
    (missing, seen)
}

/// A file named `name` holding `contents`, in a directory of this test
/// process's own (a token file, a configuration), written afresh.
///
/// ```
/// let file = paytrace_testkit::temp_file("doc-tokens", "s3cret\n");
/// assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cret\n");
/// ```
pub fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paytrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join(name);
    std::fs::write(&file, contents).expect("the file is written");
    file
}

/// Certificates made for one test: a CA, a server certificate for
/// `localhost` and `127.0.0.1`, a client certificate it issued, and a client
/// certificate from another CA nobody trusts. Every file is PEM, written
/// into a fresh directory.
///
/// ```
/// let pki = paytrace_testkit::Pki::new("doc-pki");
/// let ca = std::fs::read_to_string(&pki.ca).unwrap();
/// assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(std::fs::read_to_string(&pki.server_key).unwrap().contains("PRIVATE KEY"));
/// ```
#[derive(Clone, Debug)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: std::path::PathBuf,
    /// The CA certificate that issued the server and client certificates.
    pub ca: std::path::PathBuf,
    /// The server's certificate (`localhost`, `127.0.0.1`).
    pub server_cert: std::path::PathBuf,
    /// The server's key.
    pub server_key: std::path::PathBuf,
    /// A client certificate issued by [`Pki::ca`].
    pub client_cert: std::path::PathBuf,
    /// Its key.
    pub client_key: std::path::PathBuf,
    /// A client certificate from a CA the server does not trust.
    pub stranger_cert: std::path::PathBuf,
    /// Its key.
    pub stranger_key: std::path::PathBuf,
    issuer: std::sync::Arc<rcgen::Issuer<'static, rcgen::KeyPair>>,
}

impl Pki {
    /// Makes the certificates in a new directory named after `name`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "paytrace-pki-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let write = |file: &str, pem: String| {
            let path = dir.join(file);
            std::fs::write(&path, pem).expect("the PEM file is written");
            path
        };
        let (ca, ca_pem) = certificate_authority("paytrace test CA");
        let server = leaf(&ca, &["localhost", "127.0.0.1"], "paytrace-aggregator");
        let client = leaf(&ca, &["checkout-client"], "checkout-client");
        let (stranger_ca, _) = certificate_authority("a CA nobody trusts");
        let stranger = leaf(&stranger_ca, &["stranger"], "stranger");
        Self {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server.0),
            server_key: write("server.key", server.1),
            client_cert: write("client.pem", client.0),
            client_key: write("client.key", client.1),
            stranger_cert: write("stranger.pem", stranger.0),
            stranger_key: write("stranger.key", stranger.1),
            issuer: std::sync::Arc::new(ca),
            dir,
        }
    }

    /// A new server certificate from the same CA, written over the old one
    /// (for tests of certificate renewal); returns its PEM.
    pub fn renew_server_certificate(&self) -> String {
        let (cert, key) = leaf(
            &self.issuer,
            &["localhost", "127.0.0.1"],
            "paytrace-aggregator",
        );
        // The key first: a reader between the two writes sees the old
        // certificate with a key that does not match, which it must refuse.
        std::fs::write(&self.server_key, key).expect("write");
        std::fs::write(&self.server_cert, &cert).expect("write");
        cert
    }
}

fn certificate_authority(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a CA certificate");
    (rcgen::Issuer::new(params, key), cert.pem())
}

fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: &[&str],
    common_name: &str,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().expect("a leaf key");
    let cert = params.signed_by(&key, issuer).expect("a leaf certificate");
    (cert.pem(), key.serialize_pem())
}
