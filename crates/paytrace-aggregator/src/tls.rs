//! TLS on the aggregator's listeners (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`).
//!
//! The certificate, key and client CA are PEM files, read at start (a bad
//! one stops the start with its path named) and read again when one of them
//! changes on disk (checked at most once a second, on the next connection),
//! so a renewed certificate is served without a restart; a renewal that
//! cannot be used keeps the previous certificate, with a warning.
//!
//! Handshakes run beside the accept loop, each bounded in time, so a slow or
//! silent client holds up no one else. A connection whose handshake fails
//! (plaintext to a TLS port, an untrusted or missing client certificate) is
//! closed and counted in `paytrace_aggregator_connections_refused_total`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How often the files' modification times are looked at.
const RECHECK: Duration = Duration::from_secs(1);
/// The longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;

/// The files a TLS listener serves with.
///
/// ```
/// let files = paytrace_aggregator::tls::TlsFiles::new("/tls/tls.crt", "/tls/tls.key")
///     .require_client_certificates("/tls/ca.crt");
/// assert!(files.client_ca.is_some());
/// ```
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these
    /// CA certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// A certificate chain and its key; clients need no certificate.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// Requires client certificates issued by the CAs in `ca` (mTLS).
    pub fn require_client_certificates(mut self, ca: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(ca.into());
        self
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// Why the TLS files cannot be served with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM block.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificates (a key that does not match the
    /// certificate, for example).
    #[error("cannot serve TLS with {cert}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// The server's TLS settings, read again when their files change.
#[derive(Debug)]
pub(crate) struct Certificates {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
    checked: Mutex<Instant>,
}

#[derive(Debug)]
struct Loaded {
    /// For gRPC: HTTP/2 only.
    h2: Arc<ServerConfig>,
    /// For the OTLP/HTTP receiver and the API: HTTP/1.1.
    http1: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
}

/// Which application protocol a listener speaks (its ALPN offer).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Alpn {
    /// gRPC.
    H2,
    /// OTLP/HTTP and the API.
    Http1,
}

impl Certificates {
    /// Reads the files once; an error names the file at fault.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = Loaded::read(&files)?;
        Ok(Self {
            files,
            loaded: RwLock::new(loaded),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// The settings for the next handshake, after reading the files again
    /// if one changed (at most once a second).
    fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        self.reload_if_changed();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        match alpn {
            Alpn::H2 => loaded.h2.clone(),
            Alpn::Http1 => loaded.http1.clone(),
        }
    }

    fn reload_if_changed(&self) {
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.elapsed() < RECHECK {
                return;
            }
            *checked = Instant::now();
        }
        let stamps = stamps(&self.files);
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.stamps == stamps {
                return;
            }
        }
        match Loaded::read(&self.files) {
            Ok(fresh) => {
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates changed on disk: serving the new ones");
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificates changed on disk but cannot be used: serving the previous ones");
                // Not retried until a file changes again.
                self.loaded
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .stamps = stamps;
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files
        .paths()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let stamps = stamps(files);
        let file_error = |path: &Path, message: String| TlsError::File {
            path: path.to_owned(),
            message,
        };
        let certs = read_certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            file_error(
                &files.key,
                format!("no private key (PEM `BEGIN PRIVATE KEY`, `RSA` or `EC`): {e}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config_error = |source| TlsError::Config {
            cert: files.cert.clone(),
            source,
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error(ca, format!("not a CA certificate: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            file_error(ca, format!("cannot verify clients with it: {e}"))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut h2 = builder.with_single_cert(certs, key).map_err(config_error)?;
        let mut http1 = h2.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            h2: Arc::new(h2),
            http1: Arc::new(http1),
            stamps,
        })
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "holds no certificate (PEM `BEGIN CERTIFICATE`)".to_owned(),
        ));
    }
    Ok(certs)
}

/// Why a connection was closed before it carried a request: the `reason`
/// label of `paytrace_aggregator_connections_refused_total`.
fn refusal_reason(error: &std::io::Error) -> &'static str {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidMessage(_)) => paytrace_semconv::connection_refusal::NOT_TLS,
        Some(rustls::Error::NoCertificatesPresented) => {
            paytrace_semconv::connection_refusal::CLIENT_CERTIFICATE_MISSING
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            paytrace_semconv::connection_refusal::CLIENT_CERTIFICATE_INVALID
        }
        _ => paytrace_semconv::connection_refusal::HANDSHAKE_FAILED,
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes
/// beside the loop; finished ones arrive on the returned channel. The loop
/// stops when the channel's receiver is dropped.
pub(crate) fn accept(
    listener: TcpListener,
    certificates: Arc<Certificates>,
    alpn: Alpn,
    refused: IntCounterVec,
    listener_name: &'static str,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as
                        // axum's and tonic's own accept loops do.
                        tracing::warn!(error = %e, listener = listener_name, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(certificates.config(alpn));
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, listener = listener_name, "TLS handshake failed");
                        refusal_reason(&e)
                    }
                    Err(_) => paytrace_semconv::connection_refusal::HANDSHAKE_TIMEOUT,
                };
                refused.with_label_values(&[listener_name, reason]).inc();
            });
        }
    });
    rx
}

/// A listener handing axum connections whose TLS handshake is done.
#[derive(Debug)]
pub(crate) struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(
        accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local_addr: SocketAddr,
    ) -> Self {
        Self {
            accepted,
            local_addr,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = std::env::temp_dir().join(format!("paytrace-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = dir.join("tls.crt");
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let e = Certificates::load(TlsFiles::new(&cert, dir.join("tls.key")))
            .expect_err("no certificate")
            .to_string();
        assert!(e.contains("tls.crt") && e.contains("no certificate"), "{e}");
        let e = Certificates::load(TlsFiles::new(dir.join("absent.crt"), dir.join("tls.key")))
            .expect_err("no file")
            .to_string();
        assert!(e.contains("absent.crt"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Makes the next handshake look at the files again.
    fn age_the_last_check(certs: &Certificates) {
        let past = Instant::now().checked_sub(RECHECK * 2);
        if let Some(past) = past {
            *certs.checked.lock().expect("not poisoned") = past;
        }
    }

    #[test]
    fn a_renewal_that_cannot_be_used_keeps_the_last_good_certificate() {
        let pki = paytrace_testkit::Pki::new("tls-unit-renewal");
        let certs = Certificates::load(TlsFiles::new(&pki.server_cert, &pki.server_key))
            .expect("good files");
        let before = certs.config(Alpn::Http1);
        std::fs::write(
            &pki.server_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        age_the_last_check(&certs);
        assert!(
            Arc::ptr_eq(&before, &certs.config(Alpn::Http1)),
            "a broken key was taken"
        );
        // Not read again until a file changes again.
        age_the_last_check(&certs);
        assert!(Arc::ptr_eq(&before, &certs.config(Alpn::Http1)));

        pki.renew_server_certificate();
        age_the_last_check(&certs);
        let after = certs.config(Alpn::Http1);
        assert!(
            !Arc::ptr_eq(&before, &after),
            "the good renewal was not taken"
        );
        assert_eq!(after.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(certs.config(Alpn::H2).alpn_protocols, [b"h2".to_vec()]);
    }
}
