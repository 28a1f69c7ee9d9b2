//! How spans reach the collector: the OTLP exporter's transport settings
//! (headers, compression, TLS) read from the standard variables, and the
//! exporter built from them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{Compression, WithExportConfig, WithHttpConfig, WithTonicConfig};

use crate::telemetry::{InitError, Protocol, invalid};

/// The transport settings of the OTLP exporter beside its endpoint and
/// timeout, each read signal-specific variable first
/// (`OTEL_EXPORTER_OTLP_TRACES_…`), then the general one.
#[derive(Clone, Default)]
pub(crate) struct Transport {
    /// `…_HEADERS`: sent with every export (gRPC metadata or HTTP headers).
    headers: Vec<(String, String)>,
    /// `…_COMPRESSION`: `gzip` or `none`.
    gzip: bool,
    /// `…_CERTIFICATE`: the CA certificates (PEM) the collector's
    /// certificate must chain to, instead of the system's.
    ca: Option<(&'static str, PathBuf)>,
    /// `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY`: this service's certificate
    /// chain and key (PEM), for collectors that require mTLS.
    identity: Option<[(&'static str, PathBuf); 2]>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are often credentials: only their names are shown.
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Transport")
            .field("header_names", &names)
            .field("gzip", &self.gzip)
            .field("ca", &self.ca.as_ref().map(|(_, p)| p))
            .field("identity", &self.identity.as_ref().map(|[c, _]| &c.1))
            .finish()
    }
}

impl Transport {
    /// Reads the transport variables through `get` (which returns `None` for
    /// unset or blank variables).
    pub(crate) fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Result<Self, InitError> {
        let signal_first = |specific: &'static str, general: &'static str| {
            get(specific)
                .map(|v| (specific, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        let headers = match signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            None => Vec::new(),
            Some((name, v)) => checked_headers(name, &v)?,
        };
        let gzip = match signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            None => false,
            Some((_, v)) if v.trim().eq_ignore_ascii_case("gzip") => true,
            Some((_, v)) if v.trim().eq_ignore_ascii_case("none") => false,
            Some((name, v)) => return Err(invalid(name, &v, "`gzip` or `none`")),
        };
        let file = |specific, general| {
            signal_first(specific, general).map(|(name, v)| (name, PathBuf::from(v.trim())))
        };
        let ca = file(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        );
        let cert = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        );
        let key = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        );
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some([cert, key]),
            (None, None) => None,
            (Some((name, path)), None) | (None, Some((name, path))) => {
                return Err(invalid(
                    name,
                    &path.display().to_string(),
                    "set together with its pair: OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE \
                     and OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY",
                ));
            }
        };
        Ok(Self {
            headers,
            gzip,
            ca,
            identity,
        })
    }

    /// Whether exports are gzip-compressed.
    pub(crate) fn is_gzip(&self) -> bool {
        self.gzip
    }

    /// The names of the headers sent with every export (not their values).
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(k, _)| k.as_str())
    }

    /// The OTLP exporter for `endpoint`. The certificate files are read
    /// here, so that an unreadable or malformed one stops the service at
    /// start with its variable and path named.
    pub(crate) fn build(
        &self,
        protocol: Protocol,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<opentelemetry_otlp::SpanExporter, InitError> {
        let https = endpoint
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let ca = self.ca.as_ref().map(read_pem).transpose()?;
        let identity = match &self.identity {
            Some([cert, key]) => Some((read_pem(cert)?, read_pem(key)?)),
            None => None,
        };
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match protocol {
            Protocol::Grpc => {
                let mut metadata = http::HeaderMap::new();
                for (k, v) in &self.headers {
                    // Checked in `from_vars`.
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(v),
                    ) {
                        metadata.append(k, v);
                    }
                }
                let mut builder = builder
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .with_metadata(MetadataMap::from_headers(metadata));
                if self.gzip {
                    builder = builder.with_compression(Compression::Gzip);
                }
                if https {
                    let mut tls = match ca {
                        Some(ca) => {
                            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
                        }
                        None => ClientTlsConfig::new().with_native_roots(),
                    };
                    if let Some((cert, key)) = identity {
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
            Protocol::HttpProtobuf => {
                let client = http_client(timeout, ca, identity)?;
                let mut builder = builder
                    .with_http()
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .with_http_client(client)
                    .with_headers(self.headers.iter().cloned().collect::<HashMap<_, _>>());
                if self.gzip {
                    builder = builder.with_compression(Compression::Gzip);
                }
                builder.build()?
            }
        };
        Ok(exporter)
    }
}

/// The `key=value,…` list of the headers variable `name`, each name and
/// value checked as HTTP allows them. The error never shows a value: header
/// values are often credentials.
fn checked_headers(name: &'static str, value: &str) -> Result<Vec<(String, String)>, InitError> {
    let headers = key_value_list(value).ok_or_else(|| {
        invalid(
            name,
            "(not shown: header values may be secrets)",
            "comma-separated key=value pairs, values percent-encoded",
        )
    })?;
    for (key, value) in &headers {
        if http::HeaderName::from_bytes(key.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(invalid(
                name,
                key,
                "header names of letters, digits and `-`, values of visible ASCII",
            ));
        }
    }
    Ok(headers)
}

/// The blocking HTTP client the batch processor's thread exports with:
/// rustls, trusting `ca` instead of the system's roots when given, and
/// presenting `identity` (certificate chain, key) when given.
///
/// Built on a thread of its own: a blocking client starts (and on drop,
/// stops) a runtime of its own, which tokio forbids inside an async context.
fn http_client(
    timeout: Duration,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<reqwest::blocking::Client, InitError> {
    let tls_error = |var: &'static str, e: reqwest::Error| InitError::Tls {
        var,
        message: e.to_string(),
    };
    let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
    if let Some(ca) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&ca)
            .map_err(|e| tls_error("OTEL_EXPORTER_OTLP_CERTIFICATE", e))?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some((cert, key)) = identity {
        let mut pem = cert;
        pem.push(b'\n');
        pem.extend_from_slice(&key);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| tls_error("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", e))?;
        builder = builder.identity(identity);
    }
    std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| InitError::Tls {
            var: "OTEL_EXPORTER_OTLP_ENDPOINT",
            message: "building the HTTP client panicked".to_owned(),
        })?
        .map_err(|e| tls_error("OTEL_EXPORTER_OTLP_CERTIFICATE", e))
}

/// The contents of a PEM file named by a variable, with a message that
/// names both when it cannot be read or holds no PEM block.
fn read_pem((var, path): &(&'static str, PathBuf)) -> Result<Vec<u8>, InitError> {
    let bytes = std::fs::read(path).map_err(|e| InitError::Tls {
        var,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(InitError::Tls {
            var,
            message: format!("{} holds no PEM block (`-----BEGIN …`)", path.display()),
        });
    }
    Ok(bytes)
}

/// A `key=value,key=value` list, values percent-decoded (the format of
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`); `None` when
/// any pair is malformed (the specification discards the whole value then).
pub(crate) fn key_value_list(value: &str) -> Option<Vec<(String, String)>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, raw) = pair.split_once('=')?;
            let key = key.trim();
            let decoded = percent_encoding::percent_decode_str(raw.trim())
                .decode_utf8()
                .ok()?;
            (!key.is_empty()).then(|| (key.to_owned(), decoded.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(vars: &[(&str, &str)]) -> Result<Transport, InitError> {
        Transport::from_vars(&|k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn traces_headers_replace_the_general_ones() {
        let t = transport(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20abc,x-team=pay",
            ),
        ])
        .expect("valid headers");
        assert_eq!(
            t.headers,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-team".to_owned(), "pay".to_owned())
            ]
        );
        let general = transport(&[("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1")]).expect("valid");
        assert_eq!(general.header_names().collect::<Vec<_>>(), ["x-general"]);
    }

    #[test]
    fn malformed_headers_are_refused_without_showing_their_values() {
        let e = transport(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization")])
            .expect_err("no `=`")
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
        let e = transport(&[("OTEL_EXPORTER_OTLP_HEADERS", "bad name=secret-value")])
            .expect_err("a space in a header name")
            .to_string();
        assert!(!e.contains("secret-value"), "{e}");
    }

    #[test]
    fn compression_is_gzip_or_none() {
        assert!(!transport(&[]).expect("default").is_gzip());
        let t = transport(&[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ])
        .expect("valid");
        assert!(t.is_gzip());
        let e = transport(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
            .expect_err("not built in")
            .to_string();
        assert!(e.contains("`gzip` or `none`"), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = transport(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/tls/client.pem")])
            .expect_err("key missing")
            .to_string();
        assert!(e.contains("CLIENT_KEY"), "{e}");
        let t = transport(&[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/general.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                "/tls/client.pem",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/tls/client.key"),
        ])
        .expect("a pair");
        let [cert, key] = t.identity.expect("identity");
        assert_eq!(cert.1, PathBuf::from("/tls/client.pem"));
        assert_eq!(key.1, PathBuf::from("/tls/client.key"));
    }

    #[test]
    fn unreadable_certificates_name_their_variable_and_path() {
        let t = transport(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")])
            .expect("paths are read at build time");
        let e = t
            .build(
                Protocol::Grpc,
                "https://collector:4317",
                Duration::from_secs(1),
            )
            .expect_err("no such file")
            .to_string();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn key_value_lists_decode_values_and_refuse_broken_pairs() {
        assert_eq!(
            key_value_list("a=1, b=x%2Cy ,"),
            Some(vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x,y".to_owned())
            ])
        );
        assert_eq!(key_value_list("a=1,b"), None);
        assert_eq!(key_value_list("=1"), None);
    }
}
