//! One call that wires tracing, OpenTelemetry and OTLP export.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter, SpanProcessor,
};
use paytrace_semconv::drop_reason;
use prometheus::IntCounter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::export::{Transport, key_value_list};
use crate::metrics::Metrics;
use crate::propagation::propagator;
use crate::sampling::FlowSampler;
use crate::span_service::{self, Split};

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP over gRPC, default port 4317.
    Grpc,
    /// OTLP over HTTP with protobuf bodies, default port 4318.
    HttpProtobuf,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum SamplerConfig {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of spans, decided by OpenTelemetry's
    /// consistent probability sampling ([`crate::FlowSampler::ratio`]).
    Ratio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: follow the caller's decision; sample this
    /// share of the traces that start here, every trace of one flow alike
    /// ([`crate::FlowSampler::parent_based`]).
    ParentBasedRatio(f64),
}

impl SamplerConfig {
    fn build(self) -> Box<dyn ShouldSample> {
        match self {
            Self::AlwaysOn => Box::new(Sampler::AlwaysOn),
            Self::AlwaysOff => Box::new(Sampler::AlwaysOff),
            Self::Ratio(r) => Box::new(FlowSampler::ratio(r)),
            Self::ParentBasedAlwaysOn => {
                Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            }
            Self::ParentBasedAlwaysOff => {
                Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            }
            Self::ParentBasedRatio(r) => Box::new(FlowSampler::parent_based(r)),
        }
    }
}

/// A setting that could not be used; the message names the variable and
/// the values it accepts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// An `OTEL_*` variable holds a value paytrace does not understand.
    #[error("{var}={value:?} is not valid: {expected}")]
    InvalidVar {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it accepts.
        expected: &'static str,
    },
    /// The OTLP exporter could not be built (for example a malformed endpoint).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A TLS setting could not be used: a certificate or key file that
    /// cannot be read or parsed.
    #[error("{var}: {message}")]
    Tls {
        /// The variable naming the file.
        var: &'static str,
        /// What went wrong, with the file's path.
        message: String,
    },
    /// A global tracing subscriber was already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// What [`init`] sets up, read from the standard `OTEL_*` variables by
/// [`TelemetryConfig::from_env`] and adjustable in code.
///
/// | variable | default |
/// |---|---|
/// | `OTEL_SERVICE_NAME` | the name given in code |
/// | `OTEL_SDK_DISABLED` | `false`; `true` exports nothing (logs and metrics stay) |
/// | `OTEL_TRACES_EXPORTER` | `otlp`; `none` makes and samples spans but sends none |
/// | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc`; or `http/protobuf` |
/// | `OTEL_EXPORTER_OTLP_ENDPOINT` | `http://localhost:4317` (gRPC), `http://localhost:4318` (HTTP) |
/// | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full URL, overrides the above |
/// | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, then `OTEL_EXPORTER_OTLP_TIMEOUT` | `10000` ms per export |
/// | `OTEL_TRACES_SAMPLER` | `parentbased_always_on`; the ratio samplers are [`crate::FlowSampler`] |
/// | `OTEL_TRACES_SAMPLER_ARG` | `1.0` for the ratio samplers |
/// | `OTEL_BSP_MAX_QUEUE_SIZE` | `2048` spans waiting for export; more are dropped and counted |
/// | `OTEL_BSP_SCHEDULE_DELAY` | `1000` ms between exports |
/// | `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | `512` spans per export (at most the queue size) |
/// | `OTEL_BSP_EXPORT_TIMEOUT` | `30000` ms; the lower of it and the OTLP timeout bounds an export |
/// | `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, then `OTEL_EXPORTER_OTLP_HEADERS` | sent with every export (`key=value,…`, percent-encoded) |
/// | `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`, then `OTEL_EXPORTER_OTLP_COMPRESSION` | `none` (default) or `gzip` |
/// | `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, then `OTEL_EXPORTER_OTLP_CERTIFICATE` | the CA (PEM) an `https://` collector must chain to; default the system's roots |
/// | `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY` (traces-specific first) | this service's certificate and key (PEM), for mTLS |
/// | `OTEL_EXPORTER_OTLP_TRACES_INSECURE`, then `OTEL_EXPORTER_OTLP_INSECURE` | `true`: a gRPC endpoint given without a scheme is `http://` (else `https://`) |
/// | `OTEL_PROPAGATORS` | `tracecontext,baggage` (default); anything else is refused |
/// | `OTEL_RESOURCE_ATTRIBUTES` | added to the resource (`key=value,…`, percent-encoded), beside `service.instance.id` and [`TelemetryConfig::with_service_version`] |
/// | `RUST_LOG` | `info` for the log lines printed to stderr |
///
/// ```
/// use paytrace::{Protocol, TelemetryConfig};
///
/// let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_TRACES_SAMPLER", "always_off")];
/// let config = TelemetryConfig::from_vars("order", |k| {
///     vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
/// })?;
/// assert_eq!(config.protocol(), Protocol::HttpProtobuf);
/// assert_eq!(config.endpoint(), "http://localhost:4318/v1/traces");
/// # Ok::<(), paytrace::InitError>(())
/// ```
#[derive(Clone)]
pub struct TelemetryConfig {
    service_name: String,
    disabled: bool,
    protocol: Protocol,
    endpoint: String,
    export_timeout: Duration,
    sampler: SamplerConfig,
    max_queue_size: usize,
    max_export_batch_size: usize,
    schedule_delay: Duration,
    log_filter: String,
    metrics: Metrics,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, in their order.
    resource_attributes: Vec<(String, String)>,
    service_version: Option<String>,
    service_instance_id: String,
    transport: Transport,
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field("service_name", &self.service_name)
            .field("disabled", &self.disabled)
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .field("export_timeout", &self.export_timeout)
            .field("sampler", &self.sampler)
            .field("max_queue_size", &self.max_queue_size)
            .field("max_export_batch_size", &self.max_export_batch_size)
            .field("resource_attributes", &self.resource_attributes)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl TelemetryConfig {
    /// Reads the process environment. `service_name` is used unless
    /// `OTEL_SERVICE_NAME` is set.
    pub fn from_env(service_name: &str) -> Result<Self, InitError> {
        Self::from_vars(service_name, |k| std::env::var(k).ok())
    }

    /// Reads settings through `var` instead of the process environment.
    pub fn from_vars(
        service_name: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, InitError> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let disabled = match get("OTEL_SDK_DISABLED").as_deref().map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => return Err(invalid("OTEL_SDK_DISABLED", v, "`true` or `false`")),
        };
        // The traces-specific variable first, then the general one, as the
        // SDK environment specification orders them.
        let signal_first = |specific: &'static str, general: &'static str| {
            get(specific)
                .map(|v| (specific, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        let protocol = match signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Protocol::Grpc,
            Some((_, v)) if v.trim() == "grpc" => Protocol::Grpc,
            Some((_, v)) if v.trim() == "http/protobuf" => Protocol::HttpProtobuf,
            Some((name, v)) => {
                return Err(invalid(name, &v, "`grpc` or `http/protobuf`"));
            }
        };
        let exporter = match get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => true,
            Some("none") => false,
            Some(v) => return Err(invalid("OTEL_TRACES_EXPORTER", v, "`otlp` or `none`")),
        };
        let insecure = match signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ) {
            None => false,
            Some((_, v)) if v.trim().eq_ignore_ascii_case("true") => true,
            Some((_, v)) if v.trim().eq_ignore_ascii_case("false") => false,
            Some((name, v)) => return Err(invalid(name, &v, "`true` or `false`")),
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            protocol,
        ) {
            (Some(full), _, _) => full,
            // A gRPC endpoint without a scheme is secure unless `…_INSECURE`
            // says otherwise, as the OTLP exporter specification has it.
            (None, Some(base), Protocol::Grpc) if !base.contains("://") => {
                let scheme = if insecure { "http" } else { "https" };
                format!("{scheme}://{}", base.trim())
            }
            (None, Some(base), Protocol::Grpc) => base,
            (None, Some(base), Protocol::HttpProtobuf) => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None, Protocol::Grpc) => "http://localhost:4317".to_owned(),
            (None, None, Protocol::HttpProtobuf) => "http://localhost:4318/v1/traces".to_owned(),
        };
        let parse_millis = |name: &'static str, v: &str| -> Result<Duration, InitError> {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| invalid(name, v, "a whole number of milliseconds"))
        };
        let millis = |name: &'static str, default: u64| -> Result<Duration, InitError> {
            get(name).map_or(Ok(Duration::from_millis(default)), |v| {
                parse_millis(name, &v)
            })
        };
        let export_timeout = match signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            None => Duration::from_millis(10_000),
            Some((name, v)) => parse_millis(name, &v)?,
        }
        // The batch processor's bound on one export: the lower one applies.
        .min(millis("OTEL_BSP_EXPORT_TIMEOUT", 30_000)?);
        let max_export_batch_size = match get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            None => 512,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(invalid(
                        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                        &v,
                        "a positive number",
                    ));
                }
            },
        };
        let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(v) => key_value_list(&v).ok_or_else(|| {
                invalid(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    &v,
                    "comma-separated key=value pairs, values percent-encoded",
                )
            })?,
        };
        let ratio = match get("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(invalid(
                        "OTEL_TRACES_SAMPLER_ARG",
                        &v,
                        "a number from 0 to 1",
                    ));
                }
            },
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => SamplerConfig::ParentBasedAlwaysOn,
            Some("always_on") => SamplerConfig::AlwaysOn,
            Some("always_off") => SamplerConfig::AlwaysOff,
            Some("traceidratio") => SamplerConfig::Ratio(ratio),
            Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerConfig::ParentBasedRatio(ratio),
            Some(v) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    v,
                    "always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        };
        let max_queue_size = match get("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => 2048,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(invalid("OTEL_BSP_MAX_QUEUE_SIZE", &v, "a positive number")),
            },
        };
        check_propagators(get("OTEL_PROPAGATORS"))?;
        let transport = Transport::from_vars(&get)?;
        Ok(Self {
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned()),
            // `OTEL_TRACES_EXPORTER=none`: spans are made (and sampled) but
            // not exported, as with the SDK switched off.
            disabled: disabled || !exporter,
            protocol,
            endpoint,
            export_timeout,
            sampler,
            max_queue_size,
            max_export_batch_size,
            schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY", 1_000)?,
            log_filter: get("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            metrics: Metrics::global().clone(),
            resource_attributes,
            service_version: None,
            service_instance_id: new_instance_id(),
            transport,
        })
    }

    /// The `service.name` resource attribute.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The transport.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The URL spans are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The sampler.
    pub fn sampler(&self) -> SamplerConfig {
        self.sampler
    }

    /// Whether export is switched off (`OTEL_SDK_DISABLED=true`).
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Sends spans to `endpoint` with `protocol` (a full URL for HTTP, with `/v1/traces`).
    pub fn with_endpoint(mut self, protocol: Protocol, endpoint: impl Into<String>) -> Self {
        self.protocol = protocol;
        self.endpoint = endpoint.into();
        self
    }

    /// Gives up on one export after `timeout`; its spans are counted as dropped.
    pub fn with_export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// At most `spans` finished spans wait for export; more are dropped and counted.
    pub fn with_max_queue_size(mut self, spans: usize) -> Self {
        self.max_queue_size = spans.max(1);
        self
    }

    /// Exports at least this often.
    pub fn with_schedule_delay(mut self, delay: Duration) -> Self {
        self.schedule_delay = delay;
        self
    }

    /// Sets the `service.version` resource attribute (your crate's
    /// `env!("CARGO_PKG_VERSION")`); `OTEL_RESOURCE_ATTRIBUTES` wins if it
    /// names one.
    pub fn with_service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// The resource every span is exported with: `service.name`,
    /// `service.instance.id` (a random UUID per process), `service.version`
    /// when given, what `OTEL_RESOURCE_ATTRIBUTES` adds (its `service.name`
    /// loses to `OTEL_SERVICE_NAME` and the name given in code), and the
    /// SDK's `telemetry.sdk.*`.
    ///
    /// ```
    /// let vars = [("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,team=pay%20ments")];
    /// let config = paytrace::TelemetryConfig::from_vars("order", |k| {
    ///     vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
    /// })?
    /// .with_service_version("1.4.2");
    /// let resource = config.resource();
    /// let get = |k: &'static str| resource.get(&opentelemetry::Key::from_static_str(k)).map(|v| v.to_string());
    /// assert_eq!(get("service.name").as_deref(), Some("order"));
    /// assert_eq!(get("service.version").as_deref(), Some("1.4.2"));
    /// assert_eq!(get("team").as_deref(), Some("pay ments"));
    /// assert_eq!(get("service.instance.id").map(|id| id.len()), Some(36));
    /// # Ok::<(), paytrace::InitError>(())
    /// ```
    pub fn resource(&self) -> Resource {
        use opentelemetry::KeyValue;
        let mut attributes: Vec<KeyValue> = vec![KeyValue::new(
            "service.instance.id",
            self.service_instance_id.clone(),
        )];
        if let Some(v) = &self.service_version {
            attributes.push(KeyValue::new("service.version", v.clone()));
        }
        attributes.extend(
            self.resource_attributes
                .iter()
                .filter(|(k, _)| k != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attributes(attributes)
            .with_service_name(self.service_name.clone())
            .build()
    }

    /// Uses `sampler` instead of the configured one.
    pub fn with_sampler(mut self, sampler: SamplerConfig) -> Self {
        self.sampler = sampler;
        self
    }

    /// Counts exported and dropped spans in `metrics` instead of [`Metrics::global`].
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// A tracer provider exporting over OTLP as configured, with dropped spans
    /// counted. Must be called inside a tokio runtime when the protocol is gRPC.
    ///
    /// Use it with your own `tracing` subscriber; [`TelemetryConfig::install`]
    /// does everything for you. Filter the OpenTelemetry layer to `INFO` or
    /// above: the gRPC transport (h2, tonic) emits `DEBUG`/`TRACE` spans of its
    /// own while exporting, and exporting those would feed the exporter its own
    /// output.
    pub fn build_provider(&self) -> Result<SdkTracerProvider, InitError> {
        if self.disabled {
            return Ok(self.provider_builder().build());
        }
        let exporter = self
            .transport
            .build(self.protocol, &self.endpoint, self.export_timeout)?;
        Ok(self.build_provider_with_exporter(exporter))
    }

    /// A tracer provider exporting to `exporter` through the same bounded,
    /// counted batch pipeline as [`TelemetryConfig::build_provider`] (useful
    /// for tests and for exporters other than OTLP).
    pub fn build_provider_with_exporter<E>(&self, exporter: E) -> SdkTracerProvider
    where
        E: SpanExporter + 'static,
    {
        let families = self.metrics.families();
        let pending = Arc::new(AtomicUsize::new(0));
        crate::span_service::set_process_service(&self.service_name);
        let exporter = CountingExporter {
            inner: tokio::sync::Mutex::new(Splitting {
                exporter,
                split: Split::default(),
                current: None,
            }),
            pending: pending.clone(),
            exported: families.spans_exported.clone(),
            failed: families
                .spans_dropped
                .with_label_values(&[drop_reason::EXPORT_FAILED]),
            timed_out: families
                .spans_dropped
                .with_label_values(&[drop_reason::EXPORT_TIMEOUT]),
            failing: AtomicBool::new(false),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(self.max_queue_size)
                    .with_max_export_batch_size(self.max_export_batch_size.min(self.max_queue_size))
                    .with_scheduled_delay(self.schedule_delay)
                    .build(),
            )
            .build();
        let processor = BoundedProcessor {
            inner: batch,
            pending,
            capacity: self.max_queue_size,
            queue_full: families
                .spans_dropped
                .with_label_values(&[drop_reason::QUEUE_FULL]),
        };
        self.provider_builder()
            .with_span_processor(processor)
            .build()
    }

    fn provider_builder(&self) -> opentelemetry_sdk::trace::TracerProviderBuilder {
        SdkTracerProvider::builder()
            .with_sampler(self.sampler.build())
            .with_resource(self.resource())
    }

    /// For applications that build their own `tracing` subscriber: installs
    /// the W3C propagators and the tracer provider globally, and returns the
    /// layer that turns spans into OpenTelemetry spans (INFO and above) for
    /// you to add, with the guard that flushes them at the end.
    ///
    /// ```no_run
    /// use tracing_subscriber::layer::SubscriberExt;
    /// use tracing_subscriber::util::SubscriberInitExt;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (otel, _telemetry) = paytrace::TelemetryConfig::from_env("order")?.layer()?;
    /// tracing_subscriber::registry()
    ///     .with(otel)
    ///     .with(tracing_subscriber::fmt::layer().with_target(false))
    ///     .init();
    /// # Ok(()) }
    /// ```
    pub fn layer<S>(&self) -> Result<(OtelLayer<S>, TelemetryGuard), InitError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let provider = self.build_provider()?;
        let shut_down = Arc::new(AtomicBool::new(false));
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("paytrace"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        // Spans that end once the provider is shut down go nowhere: count
        // them, and say so once (nothing is lost when export is disabled).
        let after = SpansAfterShutdown {
            shut_down: shut_down.clone(),
            dropped: self
                .metrics
                .families()
                .spans_dropped
                .with_label_values(&[drop_reason::AFTER_SHUTDOWN]),
            warned: AtomicBool::new(false),
        }
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let layer: OtelLayer<S> = if self.disabled {
            Box::new(otel)
        } else {
            Box::new(otel.and_then(after))
        };
        opentelemetry::global::set_text_map_propagator(propagator());
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok((
            layer,
            TelemetryGuard {
                provider: Some(provider),
                shut_down,
            },
        ))
    }

    /// Installs everything globally: the W3C propagators, the tracer
    /// provider, and a `tracing` subscriber that logs to stderr (filtered by
    /// `RUST_LOG`) and turns spans into OpenTelemetry spans.
    pub fn install(self) -> Result<TelemetryGuard, InitError> {
        let filter = EnvFilter::try_new(&self.log_filter).map_err(|_| {
            invalid(
                "RUST_LOG",
                &self.log_filter,
                "a tracing-subscriber filter, such as `info`",
            )
        })?;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        let (otel, guard) = self.layer()?;
        tracing_subscriber::registry()
            .with(otel)
            .with(fmt)
            .try_init()?;
        if !self.disabled {
            tracing::info!(
                target: "paytrace::export",
                endpoint = %self.endpoint,
                protocol = ?self.protocol,
                gzip = self.transport.is_gzip(),
                headers = %self.transport.header_names().collect::<Vec<_>>().join(","),
                "exporting spans over OTLP"
            );
        }
        Ok(guard)
    }
}

/// The OpenTelemetry layer [`TelemetryConfig::layer`] returns, for a
/// subscriber `S`.
pub type OtelLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

pub(crate) fn invalid(var: &'static str, value: &str, expected: &'static str) -> InitError {
    InitError::InvalidVar {
        var,
        value: value.to_owned(),
        expected,
    }
}

/// Sets up tracing, OpenTelemetry and OTLP export for a service from the
/// standard `OTEL_*` variables (see [`TelemetryConfig`]).
///
/// Call it once, inside the tokio runtime, and keep the guard until the
/// program ends: dropping it flushes the spans still queued. A collector
/// that is down, slow or refusing never blocks or fails a request: at most
/// `OTEL_BSP_MAX_QUEUE_SIZE` spans wait, the rest are dropped and counted in
/// `paytrace_spans_dropped_total{reason}`.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _telemetry = paytrace::init("order")?;
///     // … build the router with `paytrace::ServiceTelemetry::new("order", "1.0.0").http_layer()`
///     Ok(())
/// }
/// ```
pub fn init(service_name: &str) -> Result<TelemetryGuard, InitError> {
    TelemetryConfig::from_env(service_name)?.install()
}

/// [`init`] for applications with a `tracing` subscriber of their own: the
/// OpenTelemetry layer (configured from the standard `OTEL_*` variables) to
/// add to it, and the guard to keep. See [`TelemetryConfig::layer`].
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (otel, _telemetry) = paytrace::layer("order")?;
/// tracing_subscriber::registry().with(otel).init();
/// # Ok(()) }
/// ```
pub fn layer<S>(service_name: &str) -> Result<(OtelLayer<S>, TelemetryGuard), InitError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    TelemetryConfig::from_env(service_name)?.layer()
}

/// Keeps the tracer provider alive; flushes and shuts it down when dropped.
///
/// Keep it for as long as the program runs: bind it to a name
/// (`let _telemetry = paytrace::init("order")?;`). `let _ = …` drops it at
/// once, and every span after that is lost: such spans are counted in
/// `paytrace_spans_dropped_total{reason="after_shutdown"}`, and the first
/// is logged at WARN.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the tracer provider down and every later span is lost: \
              keep it for the life of the program (`let _telemetry = paytrace::init(..)?;`)"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Set once the provider is shut down.
    shut_down: Arc<AtomicBool>,
}

/// Counts the spans (INFO and above) that end after the guard shut the
/// provider down: the OpenTelemetry SDK drops them without a word.
struct SpansAfterShutdown {
    shut_down: Arc<AtomicBool>,
    dropped: IntCounter,
    /// Whether the loss was logged.
    warned: AtomicBool,
}

impl<S: tracing::Subscriber> Layer<S> for SpansAfterShutdown {
    fn on_close(&self, _id: tracing::span::Id, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !self.shut_down.load(Ordering::Acquire) {
            return;
        }
        self.dropped.inc();
        if !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target: "paytrace::export",
                "a span ended after the tracer provider was shut down and is lost \
                 (counted in paytrace_spans_dropped_total{{reason=\"after_shutdown\"}}): \
                 the TelemetryGuard was dropped early; keep it for the life of the program \
                 (`let _telemetry = paytrace::init(..)?;`, not `let _ = ...`)"
            );
        }
    }
}

impl TelemetryGuard {
    /// Exports every queued span now. Blocks the calling thread: from async
    /// code, call it in `tokio::task::spawn_blocking`.
    pub fn force_flush(&self) -> OTelSdkResult {
        match &self.provider {
            Some(p) => p.force_flush(),
            None => Ok(()),
        }
    }

    /// Flushes and stops exporting.
    pub fn shutdown(mut self) -> OTelSdkResult {
        self.shut_down.store(true, Ordering::Release);
        match self.provider.take() {
            Some(p) => p.shutdown(),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shut_down.store(true, Ordering::Release);
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("paytrace: flushing spans at shutdown failed: {e}");
        }
    }
}

/// Gates the batch processor: at most `capacity` spans are queued or being
/// exported; a span past that is dropped here and counted, so the SDK's own
/// (uncounted) queue never overflows.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    queue_full: IntCounter,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        crate::span_service::tag_span(span, cx);
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.queue_full.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts every span of every export: exported, failed or timed out, and
/// releases them from the [`BoundedProcessor`]'s budget. Exports each
/// service's spans under its own resource ([`crate::span_service`]).
#[derive(Debug)]
struct CountingExporter<E> {
    /// Locked for a whole export: the resource is set, then the spans sent.
    /// The batch processor calls its exporter from one thread, one call at a
    /// time, so the lock is never contended.
    inner: tokio::sync::Mutex<Splitting<E>>,
    pending: Arc<AtomicUsize>,
    exported: IntCounter,
    failed: IntCounter,
    timed_out: IntCounter,
    /// Whether the last export failed, so that only a change is logged.
    failing: AtomicBool,
}

/// The exporter, and the resources it exports under.
#[derive(Debug)]
struct Splitting<E> {
    exporter: E,
    split: Split,
    /// The service whose resource the exporter has now (`None`: the
    /// process's).
    current: Option<(Arc<str>, Arc<str>)>,
}

impl<E: SpanExporter> CountingExporter<E> {
    /// The inner exporter, for a call that does not export; fails rather
    /// than waits while an export runs (which the batch processor never
    /// lets happen).
    fn idle(&self) -> Result<tokio::sync::MutexGuard<'_, Splitting<E>>, OTelSdkError> {
        self.inner
            .try_lock()
            .map_err(|_| OTelSdkError::InternalFailure("an export is still running".to_owned()))
    }

    /// Counts the `n` spans of one export's `result`.
    fn count(&self, n: usize, result: &OTelSdkResult) {
        let count = u64::try_from(n).unwrap_or(u64::MAX);
        match result {
            Ok(()) => self.exported.inc_by(count),
            Err(e) if is_timeout(e) => self.timed_out.inc_by(count),
            Err(_) => self.failed.inc_by(count),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let mut inner = self.inner.lock().await;
        let mut result = Ok(());
        let parts = span_service::partition(batch, inner.split.process_name());
        for part in parts {
            if part.spans.is_empty() {
                continue;
            }
            let inner = &mut *inner;
            if inner.current != part.service {
                let resource = match &part.service {
                    Some(service) => Some(inner.split.resource(service).clone()),
                    None => inner.split.base().cloned(),
                };
                if let Some(resource) = resource {
                    inner.exporter.set_resource(&resource);
                }
                inner.current = part.service.clone();
            }
            let sent = part.spans.len();
            let part_result = inner.exporter.export(part.spans).await;
            self.count(sent, &part_result);
            if part_result.is_err() {
                result = part_result;
            }
        }
        drop(inner);
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let was_failing = self.failing.swap(result.is_err(), Ordering::AcqRel);
        match (&result, was_failing) {
            (Err(e), false) => tracing::warn!(
                target: "paytrace::export",
                error = %e,
                "span export failed; spans are dropped and counted in paytrace_spans_dropped_total until the collector answers"
            ),
            (Ok(()), true) => tracing::info!(target: "paytrace::export", "span export recovered"),
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.idle()?.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.idle()?.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        let inner = self.inner.get_mut();
        inner.split.set_base(resource);
        inner.exporter.set_resource(resource);
        inner.current = None;
    }
}

/// Whether an export error means the collector did not answer in time. The
/// OTLP exporters report deadlines as gRPC `DeadlineExceeded`/`Cancelled` or
/// a transport "timed out" inside an `InternalFailure` message.
fn is_timeout(e: &OTelSdkError) -> bool {
    match e {
        OTelSdkError::Timeout(_) => true,
        OTelSdkError::InternalFailure(msg) => {
            let msg = msg.to_ascii_lowercase();
            [
                "deadlineexceeded",
                "deadline exceeded",
                "timed out",
                "timeout",
                "cancelled",
            ]
            .iter()
            .any(|needle| msg.contains(needle))
        }
        _ => false,
    }
}

/// `OTEL_PROPAGATORS`: paytrace's flows travel in W3C baggage and its
/// traces in W3C trace context, so both must be named; any other propagator
/// is refused at start rather than ignored (none is built in).
fn check_propagators(value: Option<String>) -> Result<(), InitError> {
    const EXPECTED: &str = "`tracecontext,baggage` (paytrace carries traces in W3C trace context \
                            and flows in W3C baggage; no other propagator is built in)";
    let Some(value) = value else { return Ok(()) };
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    let known = names
        .iter()
        .all(|n| matches!(*n, "tracecontext" | "baggage"));
    if known && names.contains(&"tracecontext") && names.contains(&"baggage") {
        Ok(())
    } else {
        Err(invalid("OTEL_PROPAGATORS", &value, EXPECTED))
    }
}

/// A random UUID (version 4) naming this process: `service.instance.id`.
fn new_instance_id() -> String {
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    let mut b = RandomIdGenerator::default().new_trace_id().to_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, InitError> {
        TelemetryConfig::from_vars("order", |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_follow_the_specification() {
        let c = config(&[]).expect("no variables is valid");
        assert_eq!(c.service_name(), "order");
        assert_eq!(c.protocol(), Protocol::Grpc);
        assert_eq!(c.endpoint(), "http://localhost:4317");
        assert_eq!(c.sampler(), SamplerConfig::ParentBasedAlwaysOn);
        assert!(!c.is_disabled());
    }

    #[test]
    fn standard_variables_are_honoured() {
        let c = config(&[
            ("OTEL_SERVICE_NAME", "order-eu"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])
        .expect("valid");
        assert_eq!(c.service_name(), "order-eu");
        assert_eq!(c.endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(c.sampler(), SamplerConfig::ParentBasedRatio(0.25));
        assert!(c.is_disabled());

        let traces_endpoint = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ])
        .expect("valid");
        assert_eq!(traces_endpoint.endpoint(), "http://traces:4317");
    }

    #[test]
    fn bad_values_name_the_variable_and_what_it_accepts() {
        for (var, value, expected) in [
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/json",
                "`grpc` or `http/protobuf`",
            ),
            (
                "OTEL_TRACES_SAMPLER",
                "sometimes",
                "parentbased_traceidratio",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5", "a number from 0 to 1"),
            ("OTEL_SDK_DISABLED", "yes", "`true` or `false`"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "a positive number"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "http/json",
                "`grpc` or `http/protobuf`",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5s", "milliseconds"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "-1", "milliseconds"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0", "a positive number"),
            ("OTEL_TRACES_EXPORTER", "zipkin", "`otlp` or `none`"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=%ff", "percent-encoded"),
        ] {
            let message = config(&[(var, value)])
                .expect_err("an invalid value is rejected")
                .to_string();
            assert!(
                message.contains(var) && message.contains(value) && message.contains(expected),
                "{message}"
            );
        }
    }

    #[test]
    fn traces_variables_come_before_the_general_ones() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "20000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000"),
        ])
        .expect("valid");
        assert_eq!(c.protocol(), Protocol::HttpProtobuf);
        assert_eq!(c.endpoint(), "http://localhost:4318/v1/traces");
        assert_eq!(c.export_timeout, Duration::from_millis(3000));
        // The general ones apply when the traces ones are absent.
        let general = config(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "20000")]).expect("valid");
        assert_eq!(general.export_timeout, Duration::from_millis(20_000));
        // The batch processor's export timeout bounds it too.
        let bsp = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "20000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "5000"),
        ])
        .expect("valid");
        assert_eq!(bsp.export_timeout, Duration::from_millis(5000));
    }

    #[test]
    fn batch_size_exporter_and_resource_variables_are_honoured() {
        let c = config(&[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored, k8s.pod.name=order-7f,note=a%2Cb",
            ),
        ])
        .expect("valid");
        assert_eq!(c.max_export_batch_size, 64);
        assert!(!c.is_disabled());
        let resource = c.resource();
        let get = |k: &'static str| {
            resource
                .get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("order"));
        assert_eq!(get("k8s.pod.name").as_deref(), Some("order-7f"));
        assert_eq!(get("note").as_deref(), Some("a,b"));
        assert!(get("telemetry.sdk.language").is_some());
        // Two processes, two instance ids.
        let other = config(&[]).expect("valid");
        assert_ne!(c.service_instance_id, other.service_instance_id);

        let none = config(&[("OTEL_TRACES_EXPORTER", "none")]).expect("valid");
        assert!(none.is_disabled(), "no exporter: nothing is sent");
    }

    #[test]
    fn propagators_must_name_the_w3c_pair_and_nothing_else() {
        for ok in ["tracecontext,baggage", "baggage, tracecontext"] {
            assert!(config(&[("OTEL_PROPAGATORS", ok)]).is_ok(), "{ok}");
        }
        for refused in ["b3", "tracecontext", "tracecontext,baggage,b3multi", "none"] {
            let e = config(&[("OTEL_PROPAGATORS", refused)])
                .expect_err(refused)
                .to_string();
            assert!(
                e.contains("OTEL_PROPAGATORS") && e.contains("baggage"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_grpc_endpoint_without_a_scheme_is_secure_unless_insecure_is_set() {
        let secure = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).expect("valid");
        assert_eq!(secure.endpoint(), "https://collector:4317");
        let insecure = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "false"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true"),
        ])
        .expect("valid");
        assert_eq!(insecure.endpoint(), "http://collector:4317");
        let schemed = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ])
        .expect("valid");
        assert_eq!(
            schemed.endpoint(),
            "https://collector:4317",
            "a scheme wins"
        );
        assert!(config(&[("OTEL_EXPORTER_OTLP_INSECURE", "yes")]).is_err());
    }

    #[test]
    fn a_disabled_sdk_builds_a_provider_without_an_exporter() {
        let c = config(&[("OTEL_SDK_DISABLED", "true")]).expect("valid");
        // Outside a tokio runtime: the gRPC exporter would need one, so this
        // proves no exporter is built.
        let provider = c.build_provider().expect("no exporter to fail");
        provider.shutdown().expect("nothing to flush");
    }

    #[test]
    fn timeouts_are_recognised_in_exporter_messages() {
        assert!(is_timeout(&OTelSdkError::Timeout(Duration::from_secs(1))));
        assert!(is_timeout(&OTelSdkError::InternalFailure(
            "TonicTracesClient export failed with gRPC code: DeadlineExceeded".into()
        )));
        assert!(!is_timeout(&OTelSdkError::InternalFailure(
            "export failed with gRPC code: Unavailable: tcp connect error".into()
        )));
    }
}
