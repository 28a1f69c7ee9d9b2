//! The Prometheus side of paytrace: every metric family the middleware
//! registers, in one registry, behind one cheap handle.

use std::sync::{Arc, Mutex, OnceLock};

use paytrace_semconv::{DEFAULT_LATENCY_BUCKETS, HTTP_LATENCY_BUCKETS, label, metric};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::cardinality::{Guards, LabelGuard, LabelLimits};

/// The metric families of paytrace, registered in one [`Registry`].
///
/// Cheap to clone. Most programs use [`Metrics::global`]; a program that
/// already has a `prometheus::Registry` passes it to [`Metrics::register`] so
/// that one `/metrics` endpoint shows both.
///
/// ```
/// let metrics = paytrace::Metrics::new();
/// let order = paytrace::ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
/// let text = metrics.render();
/// assert!(text.contains(r#"paytrace_build_info{service_name="order",version="1.0.0"} 1"#));
/// # drop(order);
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
pub(crate) struct Families {
    registry: Registry,
    pub(crate) guards: Guards,
    pub(crate) http_server_duration: HistogramVec,
    pub(crate) http_server_active: IntGaugeVec,
    pub(crate) http_client_duration: HistogramVec,
    pub(crate) rpc_server_duration: HistogramVec,
    pub(crate) rpc_server_active: IntGaugeVec,
    pub(crate) rpc_client_duration: HistogramVec,
    pub(crate) stage_duration: HistogramVec,
    pub(crate) stage_active: IntGaugeVec,
    pub(crate) resource_wait: HistogramVec,
    pub(crate) resource_errors: IntCounterVec,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) queue_messages: IntCounterVec,
    pub(crate) messaging: MessagingFamilies,
    pub(crate) build_info: IntGaugeVec,
    pub(crate) series_overflow: IntCounterVec,
    pub(crate) spans_dropped: IntCounterVec,
    pub(crate) spans_exported: IntCounter,
    pub(crate) tcc_phases: IntCounterVec,
    pub(crate) tcc_anomalies: IntCounterVec,
    pub(crate) tcc_retries: IntCounterVec,
    pub(crate) sampled: Arc<SampledGauges>,
}

/// The bucket boundaries (seconds) of the middleware's latency histograms.
///
/// ```
/// use paytrace::{Buckets, LabelLimits, Metrics};
///
/// // A payment team whose 3-D Secure stages take minutes.
/// let buckets = Buckets { stage: vec![0.1, 1.0, 10.0, 60.0, 600.0], ..Buckets::default() };
/// let metrics = Metrics::register_with_buckets(prometheus::Registry::new(), &LabelLimits::default(), &buckets)?;
/// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &metrics);
/// drop(svc.stage("channel.request").start());
/// assert!(metrics.render().contains(r#"le="600""#));
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    /// `http_server_request_duration_seconds`,
    /// `http_client_request_duration_seconds`, the two RPC call
    /// durations and the two messaging durations (the OpenTelemetry
    /// messaging conventions advise the same boundaries); default
    /// [`HTTP_LATENCY_BUCKETS`], the OpenTelemetry-advised boundaries.
    pub http: Vec<f64>,
    /// `paytrace_stage_duration_seconds` and `paytrace_resource_wait_seconds`;
    /// default [`DEFAULT_LATENCY_BUCKETS`] (to 300 s).
    pub stage: Vec<f64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            http: HTTP_LATENCY_BUCKETS.to_vec(),
            stage: DEFAULT_LATENCY_BUCKETS.to_vec(),
        }
    }
}

fn histogram(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

use label::{
    HTTP_REQUEST_METHOD as METHOD, HTTP_RESPONSE_STATUS_CODE as STATUS, HTTP_ROUTE as ROUTE,
    SERVICE_NAME,
};

impl Families {
    fn new(
        registry: Registry,
        limits: &LabelLimits,
        buckets: &Buckets,
    ) -> prometheus::Result<Self> {
        let families = Self {
            guards: Guards::new(limits),
            http_server_duration: histogram(
                metric::HTTP_SERVER_REQUEST_DURATION_SECONDS,
                "Duration of HTTP server requests, until the response head is ready.",
                &[SERVICE_NAME, METHOD, ROUTE, STATUS],
                &buckets.http,
            )?,
            http_server_active: int_gauge(
                metric::HTTP_SERVER_ACTIVE_REQUESTS,
                "HTTP server requests in flight.",
                &[SERVICE_NAME, METHOD, ROUTE],
            )?,
            http_client_duration: histogram(
                metric::HTTP_CLIENT_REQUEST_DURATION_SECONDS,
                "Duration of outgoing HTTP requests, until the response head arrived.",
                &[SERVICE_NAME, METHOD, label::SERVER_ADDRESS, STATUS],
                &buckets.http,
            )?,
            rpc_server_duration: histogram(
                metric::RPC_SERVER_CALL_DURATION_SECONDS,
                "Duration of RPC server calls, from the request's headers to the end of the response (streams included).",
                &[
                    SERVICE_NAME,
                    label::RPC_SYSTEM_NAME,
                    label::RPC_METHOD,
                    label::RPC_RESPONSE_STATUS_CODE,
                ],
                &buckets.http,
            )?,
            rpc_server_active: int_gauge(
                metric::RPC_SERVER_ACTIVE_CALLS,
                "RPC server calls in progress.",
                &[SERVICE_NAME, label::RPC_SYSTEM_NAME, label::RPC_METHOD],
            )?,
            rpc_client_duration: histogram(
                metric::RPC_CLIENT_CALL_DURATION_SECONDS,
                "Duration of outgoing RPC calls, until the response ended (streams included).",
                &[
                    SERVICE_NAME,
                    label::RPC_SYSTEM_NAME,
                    label::RPC_METHOD,
                    label::SERVER_ADDRESS,
                    label::RPC_RESPONSE_STATUS_CODE,
                ],
                &buckets.http,
            )?,
            stage_duration: histogram(
                metric::STAGE_DURATION_SECONDS,
                "Duration of business stages.",
                &[
                    SERVICE_NAME,
                    label::FLOW,
                    label::STAGE,
                    label::PAYMENT_METHOD,
                    label::PAYMENT_CHANNEL,
                    label::OUTCOME,
                ],
                &buckets.stage,
            )?,
            stage_active: int_gauge(
                metric::STAGE_ACTIVE,
                "Business stages in progress.",
                &[SERVICE_NAME, label::FLOW, label::STAGE],
            )?,
            resource_wait: histogram(
                metric::RESOURCE_WAIT_SECONDS,
                "Time spent waiting to acquire a unit of a pooled resource (saturation).",
                &[SERVICE_NAME, label::RESOURCE],
                &buckets.stage,
            )?,
            resource_errors: counter(
                metric::RESOURCE_ERRORS_TOTAL,
                "Errors of a pooled resource, by kind (timeout, closed, …).",
                &[SERVICE_NAME, label::RESOURCE, label::KIND],
            )?,
            queue_depth: int_gauge(
                metric::QUEUE_DEPTH,
                "Messages waiting in a queue.",
                &[SERVICE_NAME, label::QUEUE],
            )?,
            queue_messages: counter(
                metric::QUEUE_MESSAGES_TOTAL,
                "Messages taken off a queue, by outcome.",
                &[SERVICE_NAME, label::QUEUE, label::OUTCOME],
            )?,
            messaging: MessagingFamilies::new(buckets)?,
            build_info: int_gauge(
                metric::BUILD_INFO,
                "Always 1; the labels say which service and version run.",
                &[SERVICE_NAME, label::VERSION],
            )?,
            series_overflow: counter(
                metric::SERIES_OVERFLOW_TOTAL,
                "Label values folded into `other` because the label reached its value limit.",
                &[SERVICE_NAME, label::LABEL],
            )?,
            spans_dropped: counter(
                metric::SPANS_DROPPED_TOTAL,
                "Finished spans that never reached the collector, by reason.",
                &[label::REASON],
            )?,
            spans_exported: IntCounter::new(
                metric::SPANS_EXPORTED_TOTAL,
                "Finished spans the collector accepted.",
            )?,
            tcc_phases: counter(
                metric::TCC_PHASE_TOTAL,
                "TCC phase calls by fence outcome: ok, error (the handler failed), skipped (a repeat or an empty rollback), rejected.",
                &[SERVICE_NAME, label::RESOURCE, label::PHASE, label::OUTCOME],
            )?,
            tcc_anomalies: counter(
                metric::TCC_ANOMALIES_TOTAL,
                "TCC anomalies the participant's fence detected, by kind.",
                &[SERVICE_NAME, label::RESOURCE, label::KIND],
            )?,
            tcc_retries: counter(
                metric::TCC_PHASE_RETRIES_TOTAL,
                "TCC phase calls retried by the coordinator.",
                &[SERVICE_NAME, label::RESOURCE, label::PHASE],
            )?,
            sampled: Arc::new(SampledGauges::new()?),
            registry,
        };
        families.register_all()?;
        Ok(families)
    }

    fn register_all(&self) -> prometheus::Result<()> {
        let r = &self.registry;
        r.register(Box::new(self.http_server_duration.clone()))?;
        r.register(Box::new(self.http_server_active.clone()))?;
        r.register(Box::new(self.http_client_duration.clone()))?;
        r.register(Box::new(self.rpc_server_duration.clone()))?;
        r.register(Box::new(self.rpc_server_active.clone()))?;
        r.register(Box::new(self.rpc_client_duration.clone()))?;
        r.register(Box::new(self.stage_duration.clone()))?;
        r.register(Box::new(self.stage_active.clone()))?;
        r.register(Box::new(self.resource_wait.clone()))?;
        r.register(Box::new(self.resource_errors.clone()))?;
        r.register(Box::new(self.queue_depth.clone()))?;
        r.register(Box::new(self.queue_messages.clone()))?;
        self.messaging.register(r)?;
        r.register(Box::new(self.build_info.clone()))?;
        r.register(Box::new(self.series_overflow.clone()))?;
        r.register(Box::new(self.spans_dropped.clone()))?;
        r.register(Box::new(self.spans_exported.clone()))?;
        r.register(Box::new(self.tcc_phases.clone()))?;
        r.register(Box::new(self.tcc_anomalies.clone()))?;
        r.register(Box::new(self.tcc_retries.clone()))?;
        r.register(Box::new(SampledCollector(self.sampled.clone())))?;
        // Drop reasons and the exported counter exist from the start, so that
        // `rate()` and alerts see a zero before the first drop.
        for reason in paytrace_semconv::drop_reason::ALL {
            self.spans_dropped.with_label_values(&[*reason]);
        }
        #[cfg(target_os = "linux")]
        match r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Admits `value` through the guard `pick` chooses: `None` once the
    /// label is full, counted against `service` in
    /// `paytrace_series_overflow_total`. The only way a label value reaches
    /// a series; callers write `cardinality::OTHER` for `None`.
    pub(crate) fn admit<'a>(
        &self,
        service: &str,
        pick: impl FnOnce(&Guards) -> &LabelGuard,
        value: &'a str,
    ) -> Option<&'a str> {
        let guard = pick(&self.guards);
        let admitted = guard.admit(value);
        if admitted.is_none() {
            self.series_overflow
                .with_label_values(&[service, guard.name()])
                .inc();
        }
        admitted
    }
}

impl Metrics {
    /// Metrics in a fresh registry of their own, with default label limits.
    ///
    /// ```
    /// let metrics = paytrace::Metrics::new();
    /// assert!(metrics.render().contains("paytrace_spans_dropped_total"));
    /// ```
    pub fn new() -> Self {
        Self::register(Registry::new(), &LabelLimits::default())
            .expect("a fresh registry accepts every paytrace family")
    }

    /// The process-wide metrics that [`crate::ServiceTelemetry::new`] uses.
    ///
    /// ```
    /// let a = paytrace::Metrics::global();
    /// let b = paytrace::Metrics::global();
    /// assert!(std::ptr::eq(a, b));
    /// ```
    pub fn global() -> &'static Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Metrics::new)
    }

    /// Registers the paytrace families in a registry you own, with the given
    /// label limits.
    ///
    /// Fails when the registry already holds a family of the same name (for
    /// example when called twice on one registry): register once, clone the
    /// handle. The process collector is shared if the registry already has one.
    ///
    /// ```
    /// use paytrace::{LabelLimits, Metrics};
    ///
    /// let registry = prometheus::Registry::new();
    /// let metrics = Metrics::register(registry.clone(), &LabelLimits::default())?;
    /// assert!(Metrics::register(registry, &LabelLimits::default()).is_err());
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn register(registry: Registry, limits: &LabelLimits) -> prometheus::Result<Self> {
        Self::register_with_buckets(registry, limits, &Buckets::default())
    }

    /// [`Metrics::register`] with bucket boundaries of your own (see
    /// [`Buckets`]).
    pub fn register_with_buckets(
        registry: Registry,
        limits: &LabelLimits,
        buckets: &Buckets,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            inner: Arc::new(Families::new(registry, limits, buckets)?),
        })
    }

    /// The registry the families live in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry's contents in the Prometheus text exposition format.
    ///
    /// ```
    /// let text = paytrace::Metrics::new().render();
    /// assert!(text.contains("# TYPE paytrace_spans_exported_total counter"));
    /// ```
    pub fn render(&self) -> String {
        // The text encoder fails only on invalid families, which paytrace
        // never registers; the route reports such an error instead.
        encode_text(&self.inner.registry).unwrap_or_default()
    }

    pub(crate) fn families(&self) -> &Families {
        &self.inner
    }
}

/// `registry` in the Prometheus text exposition format: what [`Metrics::render`]
/// returns and [`crate::metrics_route`] serves.
pub(crate) fn encode_text(registry: &Registry) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&registry.gather())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The families of message producers and consumers (OpenTelemetry's
/// messaging metrics) and of the broker's queues (`paytrace_broker_*`).
#[derive(Debug)]
pub(crate) struct MessagingFamilies {
    pub(crate) sent: IntCounterVec,
    pub(crate) operation_duration: HistogramVec,
    pub(crate) consumed: IntCounterVec,
    pub(crate) process_duration: HistogramVec,
    pub(crate) ready: IntGaugeVec,
    pub(crate) unacked: IntGaugeVec,
    pub(crate) oldest_age: GaugeVec,
    pub(crate) redeliveries: IntCounterVec,
    pub(crate) dead_lettered: IntCounterVec,
    pub(crate) outbox_pending: IntGaugeVec,
    pub(crate) outbox_oldest: GaugeVec,
    pub(crate) inbox_duplicates: IntCounterVec,
}

impl MessagingFamilies {
    fn new(buckets: &Buckets) -> prometheus::Result<Self> {
        use label::{
            ERROR_TYPE, MESSAGING_CONSUMER_GROUP_NAME as GROUP,
            MESSAGING_DESTINATION_NAME as DESTINATION, MESSAGING_OPERATION_NAME as OPERATION,
            MESSAGING_SYSTEM as SYSTEM, QUEUE,
        };
        let broker = [SERVICE_NAME, SYSTEM, QUEUE, GROUP];
        Ok(Self {
            sent: counter(
                metric::MESSAGING_CLIENT_SENT_MESSAGES_TOTAL,
                "Messages a producer tried to send; error_type is set when the send failed.",
                &[SERVICE_NAME, SYSTEM, DESTINATION, ERROR_TYPE],
            )?,
            operation_duration: histogram(
                metric::MESSAGING_CLIENT_OPERATION_DURATION_SECONDS,
                "Duration of a messaging operation of a producer, the broker's confirmation included.",
                &[SERVICE_NAME, SYSTEM, DESTINATION, OPERATION, ERROR_TYPE],
                &buckets.http,
            )?,
            consumed: counter(
                metric::MESSAGING_CLIENT_CONSUMED_MESSAGES_TOTAL,
                "Messages delivered to the application (redeliveries included).",
                &[SERVICE_NAME, SYSTEM, DESTINATION, GROUP],
            )?,
            process_duration: histogram(
                metric::MESSAGING_PROCESS_DURATION_SECONDS,
                "Duration of the application's processing of a message.",
                &[SERVICE_NAME, SYSTEM, DESTINATION, GROUP, ERROR_TYPE],
                &buckets.http,
            )?,
            ready: int_gauge(
                metric::BROKER_MESSAGES_READY,
                "Messages waiting in the broker to be delivered (backlog; a stream group's lag), as last read from the broker.",
                &broker,
            )?,
            unacked: int_gauge(
                metric::BROKER_MESSAGES_UNACKED,
                "Messages delivered and not yet acknowledged, as last read from the broker.",
                &broker,
            )?,
            oldest_age: GaugeVec::new(
                Opts::new(
                    metric::BROKER_OLDEST_MESSAGE_AGE_SECONDS,
                    "Age of the oldest message not yet acknowledged (ready or delivered), as last read from the broker; 0 when none.",
                ),
                &broker,
            )?,
            redeliveries: counter(
                metric::BROKER_REDELIVERIES_TOTAL,
                "Deliveries of messages the broker had delivered before.",
                &broker,
            )?,
            dead_lettered: counter(
                metric::BROKER_DEAD_LETTERED_TOTAL,
                "Messages moved to the dead-letter destination after too many deliveries.",
                &broker,
            )?,
            outbox_pending: int_gauge(
                metric::OUTBOX_PENDING_MESSAGES,
                "Messages committed to an outbox table and not yet published, as its relay last counted.",
                &[SERVICE_NAME, label::OUTBOX],
            )?,
            outbox_oldest: GaugeVec::new(
                Opts::new(
                    metric::OUTBOX_OLDEST_PENDING_SECONDS,
                    "Age of the oldest unpublished outbox message, as its relay last counted; 0 when none.",
                ),
                &[SERVICE_NAME, label::OUTBOX],
            )?,
            inbox_duplicates: counter(
                metric::INBOX_DUPLICATES_TOTAL,
                "Messages an inbox had applied before, skipped without running their handler.",
                &[SERVICE_NAME, label::INBOX],
            )?,
        })
    }

    fn register(&self, r: &Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.sent.clone()))?;
        r.register(Box::new(self.operation_duration.clone()))?;
        r.register(Box::new(self.consumed.clone()))?;
        r.register(Box::new(self.process_duration.clone()))?;
        r.register(Box::new(self.ready.clone()))?;
        r.register(Box::new(self.unacked.clone()))?;
        r.register(Box::new(self.oldest_age.clone()))?;
        r.register(Box::new(self.redeliveries.clone()))?;
        r.register(Box::new(self.dead_lettered.clone()))?;
        r.register(Box::new(self.outbox_pending.clone()))?;
        r.register(Box::new(self.outbox_oldest.clone()))?;
        r.register(Box::new(self.inbox_duplicates.clone()))?;
        Ok(())
    }
}

/// A gauge whose value is read when Prometheus scrapes, not when it changes:
/// the age of a queue's oldest message grows while nothing happens.
pub(crate) trait Sampler: Send + Sync {
    /// Sets the sampler's gauges to their current values. Returns `false` once
    /// the thing it samples is gone, so the sampler can be dropped.
    fn sample(&self, gauges: &SampledGauges) -> bool;
}

/// Gauges set at scrape time by registered [`Sampler`]s, collected after
/// the samplers ran (a gauge a sampler sets in another collector could be
/// gathered before it, one scrape late). A pool's gauges live here too: an
/// sqlx pool's are set by a sampler.
pub(crate) struct SampledGauges {
    pub(crate) resource_in_use: IntGaugeVec,
    pub(crate) resource_capacity: IntGaugeVec,
    pub(crate) queue_oldest_age: GaugeVec,
    pub(crate) tcc_pending: IntGaugeVec,
    pub(crate) tcc_pending_oldest: GaugeVec,
    pub(crate) runtime_workers: IntGaugeVec,
    pub(crate) runtime_busy_ratio: GaugeVec,
    pub(crate) runtime_global_queue_depth: IntGaugeVec,
    pub(crate) runtime_alive_tasks: IntGaugeVec,
    samplers: Mutex<Vec<Box<dyn Sampler>>>,
}

impl std::fmt::Debug for SampledGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampledGauges").finish_non_exhaustive()
    }
}

impl SampledGauges {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            resource_in_use: int_gauge(
                metric::RESOURCE_IN_USE,
                "Units of a pooled resource in use (utilisation = in_use / capacity).",
                &[SERVICE_NAME, label::RESOURCE],
            )?,
            resource_capacity: int_gauge(
                metric::RESOURCE_CAPACITY,
                "Units of a pooled resource in total.",
                &[SERVICE_NAME, label::RESOURCE],
            )?,
            tcc_pending: int_gauge(
                metric::TCC_BRANCHES_PENDING,
                "TCC branches tried and waiting for Confirm or Cancel: frozen resources.",
                &[SERVICE_NAME, label::RESOURCE],
            )?,
            tcc_pending_oldest: GaugeVec::new(
                Opts::new(
                    metric::TCC_PENDING_OLDEST_SECONDS,
                    "Age of the oldest TCC branch waiting for Confirm or Cancel; 0 when none.",
                ),
                &[SERVICE_NAME, label::RESOURCE],
            )?,
            queue_oldest_age: GaugeVec::new(
                Opts::new(
                    metric::QUEUE_OLDEST_AGE_SECONDS,
                    "Age of the oldest message waiting in a queue; 0 when empty.",
                ),
                &[SERVICE_NAME, label::QUEUE],
            )?,
            runtime_workers: int_gauge(
                metric::RUNTIME_WORKERS,
                "Worker threads of the tokio runtime.",
                &[SERVICE_NAME],
            )?,
            runtime_busy_ratio: GaugeVec::new(
                Opts::new(
                    metric::RUNTIME_WORKER_BUSY_RATIO,
                    "Share of time the tokio workers were busy since the previous scrape (0 to 1).",
                ),
                &[SERVICE_NAME],
            )?,
            runtime_global_queue_depth: int_gauge(
                metric::RUNTIME_GLOBAL_QUEUE_DEPTH,
                "Tasks waiting in the tokio runtime's global queue.",
                &[SERVICE_NAME],
            )?,
            runtime_alive_tasks: int_gauge(
                metric::RUNTIME_ALIVE_TASKS,
                "Tasks alive in the tokio runtime.",
                &[SERVICE_NAME],
            )?,
            samplers: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn add(&self, sampler: Box<dyn Sampler>) {
        sampler.sample(self);
        crate::sync::lock(&self.samplers).push(sampler);
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.resource_in_use,
            &self.resource_capacity,
            &self.tcc_pending,
            &self.tcc_pending_oldest,
            &self.queue_oldest_age,
            &self.runtime_workers,
            &self.runtime_busy_ratio,
            &self.runtime_global_queue_depth,
            &self.runtime_alive_tasks,
        ]
    }
}

struct SampledCollector(Arc<SampledGauges>);

impl Collector for SampledCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        crate::sync::lock(&self.0.samplers).retain(|s| s.sample(&self.0));
        self.0
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}
