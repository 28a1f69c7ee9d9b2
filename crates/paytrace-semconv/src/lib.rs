//! The shared vocabulary of paytrace.
//!
//! Every part of paytrace — the middleware, the aggregator, the demo shop, the
//! alert rules and the dashboards — speaks these names. This crate holds them as
//! constants and nothing else (it has no dependencies), so that a typo is a
//! compile error instead of a silent, empty dashboard panel.
//!
//! `docs/conventions.md` says the same in prose; a test in this crate fails
//! when the two drift apart.
//!
//! Where to start:
//! - [`attr`]: span attribute keys (`paytrace.stage`, `payment.method`, …).
//! - [`metric`]: Prometheus metric names; [`label`]: their label names.
//! - [`flow`], [`stage`], [`outcome`], [`tcc`]: the values those labels take;
//!   the `reason` and `outcome` values of the health counters in their own
//!   modules ([`drop_reason`], [`aggregator_drop_reason`],
//!   [`aggregator_truncation`], [`incomplete_reason`], [`eviction_reason`],
//!   [`tcc_phase_outcome`], [`queue_outcome`]), and of the messaging
//!   labels ([`messaging_system`], [`messaging_error`]).
//! - [`DEFAULT_LATENCY_BUCKETS`] and [`HTTP_LATENCY_BUCKETS`]: the histogram
//!   buckets of the flow and stage, and of the HTTP and RPC latency metrics.
//!
//! ```
//! use paytrace_semconv::{attr, metric, stage};
//!
//! assert_eq!(attr::STAGE, "paytrace.stage");
//! assert_eq!(metric::STAGE_DURATION_SECONDS, "paytrace_stage_duration_seconds");
//! assert!(stage::is_valid_name(stage::INVENTORY_TRY));
//! ```

#![forbid(unsafe_code)]

/// Default latency buckets, in seconds, of the flow, stage and resource-wait
/// histograms. They reach 300 s: a flow waits up to the aggregator's
/// `--flow-timeout` (2 minutes) for a slow callback or a 3-D Secure step,
/// and such a flow must land in a bucket, not in `+Inf`.
///
/// SLO thresholds must be one of these boundaries (or of
/// [`HTTP_LATENCY_BUCKETS`] for HTTP and RPC SLOs). Prefer thresholds that
/// Prometheus 3 does not rewrite in `le` labels (`0.5`, `2.5`; not `1`).
///
/// ```
/// assert_eq!(paytrace_semconv::DEFAULT_LATENCY_BUCKETS.last(), Some(&300.0));
/// ```
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets, in seconds, of the HTTP and RPC duration histograms: the
/// boundaries the OpenTelemetry semantic conventions advise for
/// `http.server.request.duration` and `rpc.server.call.duration`.
///
/// ```
/// assert!(paytrace_semconv::HTTP_LATENCY_BUCKETS.contains(&0.075));
/// ```
pub const HTTP_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The label value a guarded label takes once its value limit is reached.
///
/// ```
/// assert_eq!(paytrace_semconv::OVERFLOW_LABEL_VALUE, "other");
/// ```
pub const OVERFLOW_LABEL_VALUE: &str = "other";

/// The `http_route` label value of a request that matched no route.
///
/// ```
/// assert_eq!(paytrace_semconv::UNMATCHED_ROUTE, "unmatched");
/// ```
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Span attribute keys (OpenTelemetry).
///
/// The `paytrace.*` keys mark business flows and stages; `payment.*` the payment
/// method and channel; `tcc.*` the TCC transaction a span belongs to. HTTP spans
/// use the OpenTelemetry HTTP semantic conventions, listed here too.
///
/// ```
/// assert_eq!(paytrace_semconv::attr::FLOW_ID, "paytrace.flow_id");
/// ```
pub mod attr {
    /// The business flow (`checkout`, `pay`, `refund`). Also carried in W3C baggage.
    pub const FLOW: &str = "paytrace.flow";
    /// The business correlation key of one flow instance (the order id).
    /// Carried in baggage; a span attribute only, never a metric label.
    pub const FLOW_ID: &str = "paytrace.flow_id";
    /// Marks a span as a stage; the value is the stage name (`inventory.try`).
    pub const STAGE: &str = "paytrace.stage";
    /// How the stage ended: one of [`crate::outcome`].
    pub const OUTCOME: &str = "paytrace.outcome";
    /// The payment method (`alipay`, `wechat_pay`, `card`). Carried in baggage.
    pub const PAYMENT_METHOD: &str = "payment.method";
    /// The payment channel (`alipay`, `wxpay`, `stripe`, `unionpay`). Carried in baggage.
    pub const PAYMENT_CHANNEL: &str = "payment.channel";
    /// The TCC global transaction id. A span attribute only.
    pub const TCC_XID: &str = "tcc.xid";
    /// The TCC branch id. A span attribute only.
    pub const TCC_BRANCH_ID: &str = "tcc.branch_id";
    /// The TCC resource (`inventory`, `coupon`, `points`, `payment`).
    pub const TCC_RESOURCE: &str = "tcc.resource";
    /// The TCC phase: one of [`crate::tcc`] phases.
    pub const TCC_PHASE: &str = "tcc.phase";
    /// The coordinator's global decision, `confirm` or `cancel`, on the span
    /// in which it starts phase two. The aggregator checks every branch
    /// against it.
    pub const TCC_DECISION: &str = "tcc.decision";

    /// OpenTelemetry HTTP semconv: the request method.
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// OpenTelemetry HTTP semconv: the matched route template.
    pub const HTTP_ROUTE: &str = "http.route";
    /// OpenTelemetry HTTP semconv: the response status code.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// OpenTelemetry semconv: the server's host name or address.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// OpenTelemetry semconv: the server's port.
    pub const SERVER_PORT: &str = "server.port";
    /// OpenTelemetry semconv: `http` or `https`.
    pub const URL_SCHEME: &str = "url.scheme";
    /// OpenTelemetry semconv: the request path (redacted).
    pub const URL_PATH: &str = "url.path";
    /// OpenTelemetry semconv: the full request URL of a client span (redacted, no query).
    pub const URL_FULL: &str = "url.full";
    /// OpenTelemetry semconv: the class of error the operation ended with.
    pub const ERROR_TYPE: &str = "error.type";
    /// OpenTelemetry HTTP semconv before 1.23: the request method. SDKs
    /// still send it by default (`OTEL_SEMCONV_STABILITY_OPT_IN` unset);
    /// the aggregator reads it where `http.request.method` is missing.
    pub const HTTP_METHOD_LEGACY: &str = "http.method";
    /// OpenTelemetry HTTP semconv before 1.23: the response status code.
    pub const HTTP_STATUS_CODE_LEGACY: &str = "http.status_code";
    /// OpenTelemetry RPC semconv: the method called (`Check`, or in newer
    /// conventions the fully qualified `grpc.health.v1.Health/Check`).
    pub const RPC_METHOD: &str = "rpc.method";
    /// OpenTelemetry RPC semconv: the full service name (`grpc.health.v1.Health`).
    pub const RPC_SERVICE: &str = "rpc.service";
    /// OpenTelemetry RPC semconv: the RPC system (`grpc`).
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    /// OpenTelemetry RPC semconv: the status code's name (`OK`,
    /// `DEADLINE_EXCEEDED`; see [`crate::grpc_status`]).
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    /// OpenTelemetry RPC semconv: the method asked for, when `rpc.method`
    /// is `_OTHER` because the server did not know it.
    pub const RPC_METHOD_ORIGINAL: &str = "rpc.method_original";
    /// The name of the span event the TCC fence adds for each phase it judges.
    pub const TCC_FENCE_EVENT: &str = "tcc.fence";
    /// On the `tcc.fence` event: what the fence decided (`run`, `skip`, `reject`).
    pub const TCC_FENCE_DECISION: &str = "tcc.fence.decision";
    /// On the `tcc.fence` event: the anomaly kind it found, if any.
    pub const TCC_FENCE_ANOMALY: &str = "tcc.fence.anomaly";
    /// On every span the aggregator forwards (`serve --forward-otlp`): why
    /// its flow was kept, one of [`crate::keep_reason`].
    pub const KEPT: &str = "paytrace.kept";
    /// OpenTelemetry messaging semconv: the broker, one of
    /// [`crate::messaging_system`].
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// The queue, exchange or stream a message is sent to or taken from.
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    /// `send` on PRODUCER spans, `process` on CONSUMER spans.
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    /// The system's own name of the operation (`publish`, `xadd`, `process`).
    pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    /// The application's id of the message, the key of deduplication.
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    /// The consumer group (a Redis Streams group; a RabbitMQ queue's consumers).
    pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
    /// How many times the broker delivered the message, this delivery
    /// included (1 for a first delivery); set by paytrace's broker adapters.
    pub const MESSAGING_DELIVERY_COUNT: &str = "paytrace.messaging.delivery_count";

    /// Every key above, for consistency checks.
    pub const ALL: &[&str] = &[
        FLOW,
        FLOW_ID,
        STAGE,
        OUTCOME,
        PAYMENT_METHOD,
        PAYMENT_CHANNEL,
        TCC_XID,
        TCC_BRANCH_ID,
        TCC_RESOURCE,
        TCC_PHASE,
        TCC_DECISION,
        HTTP_REQUEST_METHOD,
        HTTP_ROUTE,
        HTTP_RESPONSE_STATUS_CODE,
        SERVER_ADDRESS,
        SERVER_PORT,
        URL_SCHEME,
        URL_PATH,
        URL_FULL,
        ERROR_TYPE,
        HTTP_METHOD_LEGACY,
        HTTP_STATUS_CODE_LEGACY,
        RPC_METHOD,
        RPC_SERVICE,
        RPC_SYSTEM_NAME,
        RPC_RESPONSE_STATUS_CODE,
        RPC_METHOD_ORIGINAL,
        TCC_FENCE_EVENT,
        TCC_FENCE_DECISION,
        TCC_FENCE_ANOMALY,
        KEPT,
        MESSAGING_SYSTEM,
        MESSAGING_DESTINATION_NAME,
        MESSAGING_OPERATION_TYPE,
        MESSAGING_OPERATION_NAME,
        MESSAGING_MESSAGE_ID,
        MESSAGING_CONSUMER_GROUP_NAME,
        MESSAGING_DELIVERY_COUNT,
    ];

    /// The keys paytrace reads from and writes to W3C baggage.
    pub const BAGGAGE: &[&str] = &[FLOW, FLOW_ID, PAYMENT_METHOD, PAYMENT_CHANNEL];
}

/// Prometheus metric names. Seconds for time, `_total` for counters.
///
/// ```
/// assert!(paytrace_semconv::metric::ALL.contains(&"http_server_request_duration_seconds"));
/// ```
pub mod metric {
    // RED, from the HTTP layer.
    /// Histogram `{service, http_request_method, http_route, http_response_status_code}`.
    pub const HTTP_SERVER_REQUEST_DURATION_SECONDS: &str = "http_server_request_duration_seconds";
    /// Gauge `{service, http_request_method, http_route}`.
    pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";
    /// Histogram `{service, http_request_method, server_address, http_response_status_code}`.
    pub const HTTP_CLIENT_REQUEST_DURATION_SECONDS: &str = "http_client_request_duration_seconds";

    // RED, from the gRPC layers (OpenTelemetry `rpc.server.call.duration`
    // and `rpc.client.call.duration`, in seconds).
    /// Histogram `{service_name, rpc_system_name, rpc_method, rpc_response_status_code}`.
    pub const RPC_SERVER_CALL_DURATION_SECONDS: &str = "rpc_server_call_duration_seconds";
    /// Gauge `{service_name, rpc_system_name, rpc_method}`: calls in progress.
    pub const RPC_SERVER_ACTIVE_CALLS: &str = "rpc_server_active_calls";
    /// Histogram `{service_name, rpc_system_name, rpc_method, server_address, rpc_response_status_code}`.
    pub const RPC_CLIENT_CALL_DURATION_SECONDS: &str = "rpc_client_call_duration_seconds";

    // Stages and flows, from the middleware.
    /// Histogram `{service, flow, stage, payment_method, payment_channel, outcome}`.
    pub const STAGE_DURATION_SECONDS: &str = "paytrace_stage_duration_seconds";
    /// Gauge `{service, flow, stage}`.
    pub const STAGE_ACTIVE: &str = "paytrace_stage_active";

    // TCC, from the middleware's fence.
    /// Counter `{service, resource, phase, outcome}`.
    pub const TCC_PHASE_TOTAL: &str = "paytrace_tcc_phase_total";
    /// Counter `{service, resource, kind}`; kind is one of [`crate::tcc::ANOMALY_KINDS`].
    pub const TCC_ANOMALIES_TOTAL: &str = "paytrace_tcc_anomalies_total";
    /// Gauge `{service, resource}`: tried branches waiting for phase two.
    pub const TCC_BRANCHES_PENDING: &str = "paytrace_tcc_branches_pending";
    /// Gauge `{service, resource}`: age of the oldest pending branch.
    pub const TCC_PENDING_OLDEST_SECONDS: &str = "paytrace_tcc_pending_oldest_seconds";
    /// Counter `{service, resource, phase}`.
    pub const TCC_PHASE_RETRIES_TOTAL: &str = "paytrace_tcc_phase_retries_total";

    // USE, from the middleware.
    /// Gauge `{service, resource}`.
    pub const RESOURCE_IN_USE: &str = "paytrace_resource_in_use";
    /// Gauge `{service, resource}`.
    pub const RESOURCE_CAPACITY: &str = "paytrace_resource_capacity";
    /// Histogram `{service, resource}`: time spent waiting to acquire.
    pub const RESOURCE_WAIT_SECONDS: &str = "paytrace_resource_wait_seconds";
    /// Counter `{service, resource, kind}`.
    pub const RESOURCE_ERRORS_TOTAL: &str = "paytrace_resource_errors_total";
    /// Gauge `{service, queue}`.
    pub const QUEUE_DEPTH: &str = "paytrace_queue_depth";
    /// Gauge `{service, queue}`.
    pub const QUEUE_OLDEST_AGE_SECONDS: &str = "paytrace_queue_oldest_age_seconds";
    /// Counter `{service, queue, outcome}`; outcome is one of [`crate::queue_outcome`].
    pub const QUEUE_MESSAGES_TOTAL: &str = "paytrace_queue_messages_total";
    /// Counter `{service, messaging_system, messaging_destination_name,
    /// error_type}`: messages a producer tried to send (OpenTelemetry
    /// `messaging.client.sent.messages`).
    pub const MESSAGING_CLIENT_SENT_MESSAGES_TOTAL: &str = "messaging_client_sent_messages_total";
    /// Histogram `{service, messaging_system, messaging_destination_name,
    /// messaging_operation_name, error_type}`: how long a send took, the
    /// broker's confirmation included (`messaging.client.operation.duration`).
    pub const MESSAGING_CLIENT_OPERATION_DURATION_SECONDS: &str =
        "messaging_client_operation_duration_seconds";
    /// Counter `{service, messaging_system, messaging_destination_name,
    /// messaging_consumer_group_name}`: messages delivered to the
    /// application (`messaging.client.consumed.messages`).
    pub const MESSAGING_CLIENT_CONSUMED_MESSAGES_TOTAL: &str =
        "messaging_client_consumed_messages_total";
    /// Histogram `{service, messaging_system, messaging_destination_name,
    /// messaging_consumer_group_name, error_type}`: how long the application
    /// processed a message (`messaging.process.duration`).
    pub const MESSAGING_PROCESS_DURATION_SECONDS: &str = "messaging_process_duration_seconds";
    /// Gauge `{service, messaging_system, queue, messaging_consumer_group_name}`,
    /// read from the broker: messages waiting to be delivered (the backlog; a
    /// Redis Streams group's lag).
    pub const BROKER_MESSAGES_READY: &str = "paytrace_broker_messages_ready";
    /// Gauge, same labels, read from the broker: messages delivered and not
    /// yet acknowledged.
    pub const BROKER_MESSAGES_UNACKED: &str = "paytrace_broker_messages_unacked";
    /// Gauge, same labels, read from the broker: age of the oldest message
    /// not yet acknowledged, ready or delivered (the consumers' lag in time);
    /// 0 when none.
    pub const BROKER_OLDEST_MESSAGE_AGE_SECONDS: &str =
        "paytrace_broker_oldest_message_age_seconds";
    /// Counter, same labels: deliveries of a message the broker had delivered
    /// before (a consumer crashed, timed out or refused it).
    pub const BROKER_REDELIVERIES_TOTAL: &str = "paytrace_broker_redeliveries_total";
    /// Counter, same labels: messages moved to the dead-letter destination
    /// after too many deliveries.
    pub const BROKER_DEAD_LETTERED_TOTAL: &str = "paytrace_broker_dead_lettered_total";
    /// Gauge `{service, outbox}`: messages committed to an outbox table and
    /// not yet published.
    pub const OUTBOX_PENDING_MESSAGES: &str = "paytrace_outbox_pending_messages";
    /// Gauge `{service, outbox}`: age of the oldest of them; 0 when none.
    pub const OUTBOX_OLDEST_PENDING_SECONDS: &str = "paytrace_outbox_oldest_pending_seconds";
    /// Counter `{service, inbox}`: messages an inbox had applied before,
    /// skipped (redeliveries, a relay's repeats).
    pub const INBOX_DUPLICATES_TOTAL: &str = "paytrace_inbox_duplicates_total";
    /// Gauge `{service}`: tokio worker threads.
    pub const RUNTIME_WORKERS: &str = "paytrace_runtime_workers";
    /// Gauge `{service}`: share of time the workers were busy since the last scrape.
    pub const RUNTIME_WORKER_BUSY_RATIO: &str = "paytrace_runtime_worker_busy_ratio";
    /// Gauge `{service}`: tasks in the runtime's global queue.
    pub const RUNTIME_GLOBAL_QUEUE_DEPTH: &str = "paytrace_runtime_global_queue_depth";
    /// Gauge `{service}`: tasks alive in the runtime.
    pub const RUNTIME_ALIVE_TASKS: &str = "paytrace_runtime_alive_tasks";
    /// Gauge `{service, version}`, always 1.
    pub const BUILD_INFO: &str = "paytrace_build_info";
    /// Counter `{service, label}`: label values folded into `other` by the cardinality guard.
    pub const SERIES_OVERFLOW_TOTAL: &str = "paytrace_series_overflow_total";
    /// Counter `{reason}`: finished spans the exporter pipeline dropped; reason is
    /// one of [`crate::drop_reason`].
    pub const SPANS_DROPPED_TOTAL: &str = "paytrace_spans_dropped_total";
    /// Counter: finished spans the exporter pipeline handed to the collector successfully.
    pub const SPANS_EXPORTED_TOTAL: &str = "paytrace_spans_exported_total";

    // Process metrics, from the prometheus crate's process collector.
    /// Counter: CPU seconds used by the process.
    pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
    /// Gauge: resident memory.
    pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
    /// Gauge: open file descriptors.
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
    /// Gauge: the file descriptor limit.
    pub const PROCESS_MAX_FDS: &str = "process_max_fds";

    // From the aggregator.
    /// Histogram `{flow, payment_method, payment_channel, outcome}`: end to end, stitched.
    pub const FLOW_DURATION_SECONDS: &str = "paytrace_flow_duration_seconds";
    /// Histogram `{flow, stage, payment_method, payment_channel}`.
    pub const STAGE_CRITICAL_PATH_SECONDS: &str = "paytrace_stage_critical_path_seconds";
    /// Histogram `{flow, stage, payment_method, payment_channel}`.
    pub const STAGE_SELF_SECONDS: &str = "paytrace_stage_self_seconds";
    /// Counter `{flow, reason}`.
    pub const FLOWS_INCOMPLETE_TOTAL: &str = "paytrace_flows_incomplete_total";
    /// Gauge: global TCC transactions not finished past their timeout.
    pub const TCC_TRANSACTIONS_UNFINISHED: &str = "paytrace_tcc_transactions_unfinished";
    /// Gauge: age of the oldest unfinished global TCC transaction.
    pub const TCC_UNFINISHED_OLDEST_SECONDS: &str = "paytrace_tcc_unfinished_oldest_seconds";
    /// Counter `{resource, kind}`: anomalies seen across services.
    pub const TCC_GLOBAL_ANOMALIES_TOTAL: &str = "paytrace_tcc_global_anomalies_total";
    /// Counter `{protocol}`.
    pub const AGGREGATOR_SPANS_RECEIVED_TOTAL: &str = "paytrace_aggregator_spans_received_total";
    /// Counter `{reason}`.
    pub const AGGREGATOR_SPANS_DROPPED_TOTAL: &str = "paytrace_aggregator_spans_dropped_total";
    /// Gauge.
    pub const AGGREGATOR_TRACES_LIVE: &str = "paytrace_aggregator_traces_live";
    /// Counter.
    pub const AGGREGATOR_TRACES_COMPLETED_TOTAL: &str =
        "paytrace_aggregator_traces_completed_total";
    /// Counter `{reason}`.
    pub const AGGREGATOR_TRACES_EVICTED_TOTAL: &str = "paytrace_aggregator_traces_evicted_total";
    /// Counter `{protocol, reason}`: OTLP requests turned away whole
    /// (`overloaded`, `too_large`, `malformed`, `unsupported_media_type`).
    pub const AGGREGATOR_REQUESTS_REFUSED_TOTAL: &str =
        "paytrace_aggregator_requests_refused_total";
    /// Counter `{listener, reason}`: connections closed before they carried
    /// a request, their TLS handshake failed (see [`crate::connection_refusal`]).
    pub const AGGREGATOR_CONNECTIONS_REFUSED_TOTAL: &str =
        "paytrace_aggregator_connections_refused_total";
    /// Counter `{flow}`: flow instances finished with a link to a trace
    /// this aggregator never received: the trace went to another replica
    /// (a routing change, a replica down) or was lost. Analysed without it.
    pub const AGGREGATOR_FLOWS_SPLIT_TOTAL: &str = "paytrace_aggregator_flows_split_total";
    /// Counter `{peer}`: requests to peer replicas (`serve --peer`) that
    /// failed or timed out; the answers that needed them were partial.
    pub const AGGREGATOR_PEER_REQUESTS_FAILED_TOTAL: &str =
        "paytrace_aggregator_peer_requests_failed_total";
    /// Counter `{reason}`: flows forwarded whole to the trace store
    /// (`serve --forward-otlp`), by why they were kept ([`crate::keep_reason`]).
    pub const AGGREGATOR_FLOWS_FORWARDED_TOTAL: &str = "paytrace_aggregator_flows_forwarded_total";
    /// Counter `{reason}`: flows kept but not forwarded
    /// ([`crate::forward_drop_reason`]).
    pub const AGGREGATOR_FLOWS_FORWARD_DROPPED_TOTAL: &str =
        "paytrace_aggregator_flows_forward_dropped_total";
    /// Counter `{outcome}`: snapshots of `--state-dir` written, failed,
    /// restored at start, or set aside as unreadable (see
    /// [`crate::snapshot_outcome`]).
    pub const AGGREGATOR_STATE_SNAPSHOTS_TOTAL: &str = "paytrace_aggregator_state_snapshots_total";
    /// Counter.
    pub const AGGREGATOR_SERIES_OVERFLOW_TOTAL: &str = "paytrace_aggregator_series_overflow_total";
    /// Spans kept with part of them cut to the aggregator's limits, by
    /// `reason` (see [`crate::aggregator_truncation`]).
    pub const AGGREGATOR_SPANS_TRUNCATED_TOTAL: &str = "paytrace_aggregator_spans_truncated_total";
    /// Counter `{flow}`: flow instances whose spans carried different
    /// sampling thresholds (or some none); each is counted with the lowest
    /// probability.
    pub const AGGREGATOR_FLOWS_SAMPLED_INCONSISTENTLY_TOTAL: &str =
        "paytrace_aggregator_flows_sampled_inconsistently_total";
    /// Counter `{service_name}`: spans of a service that lay outside their
    /// caller's span (of another service) by more than the clock tolerance
    /// and were moved, with their subtrees, to fit: that service's clock
    /// disagrees with its callers'.
    pub const AGGREGATOR_CLOCK_SKEW_ADJUSTED_TOTAL: &str =
        "paytrace_aggregator_clock_skew_adjusted_total";
    /// Gauge `{service_name}`: how far the service's clock was last
    /// estimated to be ahead of its caller's (negative: behind), in seconds,
    /// from a span that had to be moved.
    pub const AGGREGATOR_CLOCK_SKEW_SECONDS: &str = "paytrace_aggregator_clock_skew_seconds";

    /// Every metric name above, for consistency checks.
    pub const ALL: &[&str] = &[
        HTTP_SERVER_REQUEST_DURATION_SECONDS,
        HTTP_SERVER_ACTIVE_REQUESTS,
        HTTP_CLIENT_REQUEST_DURATION_SECONDS,
        RPC_SERVER_CALL_DURATION_SECONDS,
        RPC_SERVER_ACTIVE_CALLS,
        RPC_CLIENT_CALL_DURATION_SECONDS,
        STAGE_DURATION_SECONDS,
        STAGE_ACTIVE,
        TCC_PHASE_TOTAL,
        TCC_ANOMALIES_TOTAL,
        TCC_BRANCHES_PENDING,
        TCC_PENDING_OLDEST_SECONDS,
        TCC_PHASE_RETRIES_TOTAL,
        RESOURCE_IN_USE,
        RESOURCE_CAPACITY,
        RESOURCE_WAIT_SECONDS,
        RESOURCE_ERRORS_TOTAL,
        QUEUE_DEPTH,
        QUEUE_OLDEST_AGE_SECONDS,
        QUEUE_MESSAGES_TOTAL,
        MESSAGING_CLIENT_SENT_MESSAGES_TOTAL,
        MESSAGING_CLIENT_OPERATION_DURATION_SECONDS,
        MESSAGING_CLIENT_CONSUMED_MESSAGES_TOTAL,
        MESSAGING_PROCESS_DURATION_SECONDS,
        BROKER_MESSAGES_READY,
        BROKER_MESSAGES_UNACKED,
        BROKER_OLDEST_MESSAGE_AGE_SECONDS,
        BROKER_REDELIVERIES_TOTAL,
        BROKER_DEAD_LETTERED_TOTAL,
        OUTBOX_PENDING_MESSAGES,
        OUTBOX_OLDEST_PENDING_SECONDS,
        INBOX_DUPLICATES_TOTAL,
        RUNTIME_WORKERS,
        RUNTIME_WORKER_BUSY_RATIO,
        RUNTIME_GLOBAL_QUEUE_DEPTH,
        RUNTIME_ALIVE_TASKS,
        BUILD_INFO,
        SERIES_OVERFLOW_TOTAL,
        SPANS_DROPPED_TOTAL,
        SPANS_EXPORTED_TOTAL,
        PROCESS_CPU_SECONDS_TOTAL,
        PROCESS_RESIDENT_MEMORY_BYTES,
        PROCESS_OPEN_FDS,
        PROCESS_MAX_FDS,
        FLOW_DURATION_SECONDS,
        STAGE_CRITICAL_PATH_SECONDS,
        STAGE_SELF_SECONDS,
        FLOWS_INCOMPLETE_TOTAL,
        TCC_TRANSACTIONS_UNFINISHED,
        TCC_UNFINISHED_OLDEST_SECONDS,
        TCC_GLOBAL_ANOMALIES_TOTAL,
        AGGREGATOR_SPANS_RECEIVED_TOTAL,
        AGGREGATOR_SPANS_DROPPED_TOTAL,
        AGGREGATOR_TRACES_LIVE,
        AGGREGATOR_TRACES_COMPLETED_TOTAL,
        AGGREGATOR_TRACES_EVICTED_TOTAL,
        AGGREGATOR_REQUESTS_REFUSED_TOTAL,
        AGGREGATOR_CONNECTIONS_REFUSED_TOTAL,
        AGGREGATOR_STATE_SNAPSHOTS_TOTAL,
        AGGREGATOR_PEER_REQUESTS_FAILED_TOTAL,
        AGGREGATOR_FLOWS_FORWARDED_TOTAL,
        AGGREGATOR_FLOWS_FORWARD_DROPPED_TOTAL,
        AGGREGATOR_FLOWS_SPLIT_TOTAL,
        AGGREGATOR_SERIES_OVERFLOW_TOTAL,
        AGGREGATOR_SPANS_TRUNCATED_TOTAL,
        AGGREGATOR_FLOWS_SAMPLED_INCONSISTENTLY_TOTAL,
        AGGREGATOR_CLOCK_SKEW_ADJUSTED_TOTAL,
        AGGREGATOR_CLOCK_SKEW_SECONDS,
    ];

    /// The aggregator's families about the flows themselves. Replicas
    /// behind a Collector routing by flow id each export their share:
    /// every rule and panel reads them through an aggregation that drops
    /// the target labels (`instance`, `pod`), `max` for the
    /// `…_oldest_seconds` gauge and `sum` (or `count`) for the rest, so
    /// that two replicas give the same alerts as one. The aggregator's own
    /// health (`paytrace_aggregator_*`) is per replica on purpose.
    ///
    /// ```
    /// use paytrace_semconv::metric;
    /// assert!(metric::SPLIT_ACROSS_REPLICAS.contains(&metric::FLOW_DURATION_SECONDS));
    /// assert!(!metric::SPLIT_ACROSS_REPLICAS.contains(&metric::AGGREGATOR_TRACES_LIVE));
    /// ```
    pub const SPLIT_ACROSS_REPLICAS: &[&str] = &[
        FLOW_DURATION_SECONDS,
        STAGE_CRITICAL_PATH_SECONDS,
        STAGE_SELF_SECONDS,
        FLOWS_INCOMPLETE_TOTAL,
        TCC_TRANSACTIONS_UNFINISHED,
        TCC_UNFINISHED_OLDEST_SECONDS,
        TCC_GLOBAL_ANOMALIES_TOTAL,
    ];
}

/// Prometheus label names.
///
/// ```
/// assert_eq!(paytrace_semconv::label::PAYMENT_METHOD, "payment_method");
/// ```
pub mod label {
    /// The service that emitted the metric (one process may host several):
    /// `service_name`, never `service`, which the Prometheus Operator's
    /// ServiceMonitor sets as a target label and renames ours to
    /// `exported_service`. No paytrace label is named like a target label.
    pub const SERVICE_NAME: &str = "service_name";
    /// The request method (`GET`, `POST`; `_OTHER` for non-standard methods).
    pub const HTTP_REQUEST_METHOD: &str = "http_request_method";
    /// The matched route template, or [`crate::UNMATCHED_ROUTE`].
    pub const HTTP_ROUTE: &str = "http_route";
    /// The response status code; empty on a client call that got no response.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http_response_status_code";
    /// The downstream host of a client call.
    pub const SERVER_ADDRESS: &str = "server_address";
    /// The RPC system (`grpc`).
    pub const RPC_SYSTEM_NAME: &str = "rpc_system_name";
    /// The fully qualified method (`inventory.v1.Inventory/Try`); `_OTHER`
    /// for a method the server did not know.
    pub const RPC_METHOD: &str = "rpc_method";
    /// The status code's name (`OK`, `UNAVAILABLE`; [`crate::grpc_status`]).
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc_response_status_code";
    /// The business flow.
    pub const FLOW: &str = "flow";
    /// The stage.
    pub const STAGE: &str = "stage";
    /// The payment method; empty when the flow has none.
    pub const PAYMENT_METHOD: &str = "payment_method";
    /// The payment channel; empty when the flow has none.
    pub const PAYMENT_CHANNEL: &str = "payment_channel";
    /// One of [`crate::outcome`] (stages), [`crate::queue_outcome`] (queues),
    /// or a TCC fence decision.
    pub const OUTCOME: &str = "outcome";
    /// A USE resource (`inventory_db`) or a TCC resource (`inventory`).
    pub const RESOURCE: &str = "resource";
    /// A TCC phase.
    pub const PHASE: &str = "phase";
    /// An error or anomaly kind.
    pub const KIND: &str = "kind";
    /// A queue name.
    pub const QUEUE: &str = "queue";
    /// The version in `paytrace_build_info`.
    pub const VERSION: &str = "version";
    /// Why something was dropped, evicted or left incomplete.
    pub const REASON: &str = "reason";
    /// The OTLP protocol a span arrived by (`grpc`, `http_protobuf`, `http_json`).
    pub const PROTOCOL: &str = "protocol";
    /// The guarded label whose value overflowed, in `paytrace_series_overflow_total`.
    pub const LABEL: &str = "label";
    /// Which of the aggregator's listeners a connection reached:
    /// `otlp_grpc`, `otlp_http` or `api`.
    pub const LISTENER: &str = "listener";
    /// A peer replica's API URL, as given to `serve --peer` (bounded by the
    /// configuration).
    pub const PEER: &str = "peer";
    /// The broker, one of [`crate::messaging_system`].
    pub const MESSAGING_SYSTEM: &str = "messaging_system";
    /// Where a message was sent or taken from (an exchange, a queue, a stream).
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging_destination_name";
    /// The messaging operation measured (`send`).
    pub const MESSAGING_OPERATION_NAME: &str = "messaging_operation_name";
    /// The consumer group; empty where the queue is the group (RabbitMQ).
    pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging_consumer_group_name";
    /// Why a messaging operation failed; empty when it succeeded.
    pub const ERROR_TYPE: &str = "error_type";
    /// An outbox table's name.
    pub const OUTBOX: &str = "outbox";
    /// An inbox's consumer name.
    pub const INBOX: &str = "inbox";

    /// Every label name above, for consistency checks.
    pub const ALL: &[&str] = &[
        SERVICE_NAME,
        HTTP_REQUEST_METHOD,
        HTTP_ROUTE,
        HTTP_RESPONSE_STATUS_CODE,
        SERVER_ADDRESS,
        RPC_SYSTEM_NAME,
        RPC_METHOD,
        RPC_RESPONSE_STATUS_CODE,
        FLOW,
        STAGE,
        PAYMENT_METHOD,
        PAYMENT_CHANNEL,
        OUTCOME,
        RESOURCE,
        PHASE,
        KIND,
        QUEUE,
        VERSION,
        REASON,
        PROTOCOL,
        LABEL,
        LISTENER,
        PEER,
        MESSAGING_SYSTEM,
        MESSAGING_DESTINATION_NAME,
        MESSAGING_OPERATION_NAME,
        MESSAGING_CONSUMER_GROUP_NAME,
        ERROR_TYPE,
        OUTBOX,
        INBOX,
    ];
}

/// Why the aggregator kept a flow for the trace store (`paytrace.kept`, and
/// the `reason` of `paytrace_aggregator_flows_forwarded_total`).
///
/// ```
/// assert!(paytrace_semconv::keep_reason::ALL.contains(&"slow"));
/// ```
pub mod keep_reason {
    /// Slower than its flow's threshold (configured, or the current p99).
    pub const SLOW: &str = "slow";
    /// A root of one of its traces ended in error.
    pub const ERROR: &str = "error";
    /// One of its TCC branches has an anomaly.
    pub const TCC: &str = "tcc";
    /// A sample of the normal flows (`--keep-normal`).
    pub const SAMPLE: &str = "sample";
    /// Every reason, strongest first: a flow kept for several gives the first.
    pub const ALL: &[&str] = &[ERROR, TCC, SLOW, SAMPLE];
}

/// Why a kept flow was not forwarded (the `reason` of
/// `paytrace_aggregator_flows_forward_dropped_total`).
///
/// ```
/// assert!(paytrace_semconv::forward_drop_reason::ALL.contains(&"budget"));
/// ```
pub mod forward_drop_reason {
    /// Over `--forward-max-spans-per-second`.
    pub const BUDGET: &str = "budget";
    /// The queue to the forwarder was full (the trace store is slow).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The trace store refused the request or did not answer.
    pub const EXPORT_FAILED: &str = "export_failed";
    /// Some of its spans were restored from a snapshot, which keeps no
    /// spans as sent: the flow could not be forwarded whole.
    pub const NOT_AS_SENT: &str = "not_as_sent";
    /// Every reason.
    pub const ALL: &[&str] = &[BUDGET, QUEUE_FULL, EXPORT_FAILED, NOT_AS_SENT];
}

/// gRPC status codes by their names, as `rpc.response.status_code` and the
/// `rpc_response_status_code` label carry them.
///
/// ```
/// use paytrace_semconv::grpc_status;
/// assert_eq!(grpc_status::name(4), "DEADLINE_EXCEEDED");
/// assert_eq!(grpc_status::name(99), "UNKNOWN");
/// assert!(grpc_status::SERVER_FAILURES.contains(&"UNAVAILABLE"));
/// ```
pub mod grpc_status {
    /// The names of codes 0 to 16, in order (gRPC's `statuscodes.md`).
    pub const ALL: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    /// Success.
    pub const OK: u8 = 0;
    /// The caller went away.
    pub const CANCELLED: u8 = 1;
    /// An error without a status (a panic, a status that did not parse).
    pub const UNKNOWN: u8 = 2;
    /// The deadline passed first.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// No such method at the server.
    pub const UNIMPLEMENTED: u8 = 12;
    /// The server could not be reached, or the connection broke.
    pub const UNAVAILABLE: u8 = 14;

    /// The codes that make a *server* span an error (OpenTelemetry gRPC
    /// conventions); on a client span every code but `OK` is one.
    pub const SERVER_SPAN_ERRORS: &[&str] = &[
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    ];

    /// The codes that mean the server failed, which the gRPC error-ratio
    /// alerts count. `UNIMPLEMENTED` is left out: a caller asking for a
    /// method that does not exist is the caller's mistake.
    pub const SERVER_FAILURES: &[&str] = &[
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    ];

    /// The name of `code`; `UNKNOWN` for a number outside 0..=16.
    pub fn name(code: u32) -> &'static str {
        ALL.get(code as usize).copied().unwrap_or("UNKNOWN")
    }
}

/// Flow names: user-visible business operations. Low cardinality.
///
/// ```
/// assert!(paytrace_semconv::flow::ALL.contains(&"checkout"));
/// ```
pub mod flow {
    /// Place an order and pay for it.
    pub const CHECKOUT: &str = "checkout";
    /// Pay for an existing order.
    pub const PAY: &str = "pay";
    /// Refund a paid order.
    pub const REFUND: &str = "refund";
    /// The flows paytrace knows by name.
    pub const ALL: &[&str] = &[CHECKOUT, PAY, REFUND];
}

/// Stage names: `<domain>.<action>` in lower snake case.
///
/// TCC phases are stages named `<resource>.<phase>`. An async wait that the
/// aggregator attributes to a stitched flow is the pseudo-stage
/// `async:<stage>` (see [`async_wait`](crate::stage::async_wait)).
///
/// ```
/// use paytrace_semconv::stage;
/// assert!(stage::is_valid_name("channel.callback"));
/// assert!(!stage::is_valid_name("Channel.Callback"));
/// assert_eq!(stage::async_wait(stage::CHANNEL_CALLBACK), "async:channel.callback");
/// ```
pub mod stage {
    /// The order service creates the order.
    pub const ORDER_CREATE: &str = "order.create";
    /// TCC Try on inventory: reserve stock.
    pub const INVENTORY_TRY: &str = "inventory.try";
    /// TCC Confirm on inventory.
    pub const INVENTORY_CONFIRM: &str = "inventory.confirm";
    /// TCC Cancel on inventory.
    pub const INVENTORY_CANCEL: &str = "inventory.cancel";
    /// TCC Try on the coupon.
    pub const COUPON_TRY: &str = "coupon.try";
    /// TCC Try on points.
    pub const POINTS_TRY: &str = "points.try";
    /// The payment service creates a payment.
    pub const PAYMENT_CREATE: &str = "payment.create";
    /// The request to the third-party payment channel.
    pub const CHANNEL_REQUEST: &str = "channel.request";
    /// The channel's asynchronous callback.
    pub const CHANNEL_CALLBACK: &str = "channel.callback";
    /// The payment is confirmed after the callback.
    pub const PAYMENT_CONFIRM: &str = "payment.confirm";
    /// TCC Cancel of a payment: the order was cancelled.
    pub const PAYMENT_CANCEL: &str = "payment.cancel";
    /// The coordinator runs phase two: Confirm on every branch.
    pub const ORDER_CONFIRM: &str = "order.confirm";
    /// The coordinator runs phase two: Cancel on every branch.
    pub const ORDER_CANCEL: &str = "order.cancel";
    /// The user is notified.
    pub const NOTIFY_SEND: &str = "notify.send";
    /// The payment service refunds a payment.
    pub const PAYMENT_REFUND: &str = "payment.refund";
    /// The refund request to the third-party channel.
    pub const CHANNEL_REFUND: &str = "channel.refund";
    /// The order service takes the payment's notification off the message
    /// broker (a CONSUMER span); the wait before it is `async:order.paid`.
    pub const ORDER_PAID: &str = "order.paid";

    /// The stages the design names.
    pub const ALL: &[&str] = &[
        ORDER_CREATE,
        INVENTORY_TRY,
        INVENTORY_CONFIRM,
        INVENTORY_CANCEL,
        COUPON_TRY,
        POINTS_TRY,
        PAYMENT_CREATE,
        CHANNEL_REQUEST,
        CHANNEL_CALLBACK,
        PAYMENT_CONFIRM,
        PAYMENT_CANCEL,
        ORDER_CONFIRM,
        ORDER_CANCEL,
        NOTIFY_SEND,
        PAYMENT_REFUND,
        CHANNEL_REFUND,
        ORDER_PAID,
    ];

    /// The prefix of async-wait pseudo-stages.
    pub const ASYNC_PREFIX: &str = "async:";

    /// The pseudo-stage the aggregator attributes an async wait before `stage` to.
    pub fn async_wait(stage: &str) -> String {
        format!("{ASYNC_PREFIX}{stage}")
    }

    /// Whether `name` is a well-formed stage name: `<domain>.<action>`, each part
    /// lower snake case (`[a-z][a-z0-9_]*`).
    pub fn is_valid_name(name: &str) -> bool {
        fn part(p: &str) -> bool {
            let mut chars = p.chars();
            matches!(chars.next(), Some('a'..='z'))
                && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        }
        match name.split_once('.') {
            Some((domain, action)) => part(domain) && part(action),
            None => false,
        }
    }

    /// The TCC stage name of a resource and phase: `<resource>.<phase>`.
    pub fn tcc(resource: &str, phase: &str) -> String {
        format!("{resource}.{phase}")
    }
}

/// Values of `paytrace.outcome` and of the `outcome` label of stages.
///
/// ```
/// assert_eq!(paytrace_semconv::outcome::ALL.len(), 5);
/// ```
pub mod outcome {
    /// The stage succeeded.
    pub const OK: &str = "ok";
    /// The stage failed.
    pub const ERROR: &str = "error";
    /// The stage's deadline passed.
    pub const TIMEOUT: &str = "timeout";
    /// The stage was refused by business rules (insufficient stock, fence rejection).
    pub const REJECTED: &str = "rejected";
    /// The stage's future was dropped before it finished: the caller hung up,
    /// an outer timeout or `select!` gave up on it.
    pub const CANCELLED: &str = "cancelled";
    /// All outcomes.
    pub const ALL: &[&str] = &[OK, ERROR, TIMEOUT, REJECTED, CANCELLED];
}

/// Values of the `outcome` label of `paytrace_queue_messages_total`.
///
/// ```
/// assert!(paytrace_semconv::queue_outcome::ALL.contains(&"dead_lettered"));
/// ```
pub mod queue_outcome {
    /// The message was handled.
    pub const PROCESSED: &str = "processed";
    /// Handling failed (it may be retried).
    pub const FAILED: &str = "failed";
    /// The message was given up on.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// All queue outcomes.
    pub const ALL: &[&str] = &[PROCESSED, FAILED, DEAD_LETTERED];
}

/// Values of `messaging.system` and the `messaging_system` label: the
/// brokers paytrace has adapters for (the OpenTelemetry values; another
/// broker's instrumentation uses its own).
///
/// ```
/// assert_eq!(paytrace_semconv::messaging_system::RABBITMQ, "rabbitmq");
/// ```
pub mod messaging_system {
    /// RabbitMQ, through AMQP 0-9-1.
    pub const RABBITMQ: &str = "rabbitmq";
    /// Redis Streams with consumer groups.
    pub const REDIS: &str = "redis";
    /// Every broker above.
    pub const ALL: &[&str] = &[RABBITMQ, REDIS];
}

/// Values of `error.type` on messaging spans and of the `error_type` label
/// of the messaging families.
///
/// ```
/// assert!(paytrace_semconv::messaging_error::ALL.contains(&"cancelled"));
/// ```
pub mod messaging_error {
    /// The send, or the processing, returned an error.
    pub const FAILED: &str = "failed";
    /// The future was dropped before the send was confirmed or the
    /// processing ended (a timeout or `select!` gave up on it, the task was
    /// aborted); a message being processed is not acknowledged and comes
    /// back.
    pub const CANCELLED: &str = "cancelled";
    /// Every value above.
    pub const ALL: &[&str] = &[FAILED, CANCELLED];
}

/// Values of the `reason` label of `paytrace_spans_dropped_total`.
///
/// ```
/// assert!(paytrace_semconv::drop_reason::ALL.contains(&"queue_full"));
/// ```
pub mod drop_reason {
    /// The export queue was full (the collector is slower than the service).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The exporter reported an error (collector down or refusing).
    pub const EXPORT_FAILED: &str = "export_failed";
    /// The export did not finish within its timeout (collector black-holed).
    pub const EXPORT_TIMEOUT: &str = "export_timeout";
    /// The span ended after the tracer provider was shut down (its guard
    /// was dropped early).
    pub const AFTER_SHUTDOWN: &str = "after_shutdown";
    /// All reasons.
    pub const ALL: &[&str] = &[QUEUE_FULL, EXPORT_FAILED, EXPORT_TIMEOUT, AFTER_SHUTDOWN];
}

/// Values of the `reason` label of `paytrace_aggregator_spans_dropped_total`.
///
/// ```
/// assert!(paytrace_semconv::aggregator_drop_reason::ALL.contains(&"late"));
/// ```
pub mod aggregator_drop_reason {
    /// Invalid, rejected through OTLP `partial_success`.
    pub const INVALID: &str = "invalid";
    /// Its trace was already complete and analysed.
    pub const LATE: &str = "late";
    /// Its trace already held the most spans one trace may.
    pub const TRACE_SPAN_LIMIT: &str = "trace_span_limit";
    /// Analysed for latency, but not followed as a TCC transaction: the
    /// aggregator follows its maximum of transactions already, or the
    /// transaction holds its maximum of spans.
    pub const TCC_LIMIT: &str = "tcc_limit";
    /// All reasons.
    pub const ALL: &[&str] = &[INVALID, LATE, TRACE_SPAN_LIMIT, TCC_LIMIT];
}

/// Values of the `reason` label of `paytrace_flows_incomplete_total`: why
/// the aggregator gave up on a flow instance. Alerts read them.
///
/// ```
/// assert!(paytrace_semconv::incomplete_reason::ALL.contains(&"terminal_stage_missing"));
/// ```
pub mod incomplete_reason {
    /// The flow's terminal stage (checkout: `payment.confirm`) never came
    /// within `--flow-timeout`: a lost callback, a hung consumer.
    pub const TERMINAL_STAGE_MISSING: &str = "terminal_stage_missing";
    /// The flow buffer was full and this, the oldest flow, was pushed out.
    pub const BUFFER_FULL: &str = "buffer_full";
    /// All reasons.
    pub const ALL: &[&str] = &[TERMINAL_STAGE_MISSING, BUFFER_FULL];
}

/// Values of the `reason` label of `paytrace_aggregator_traces_evicted_total`.
///
/// ```
/// assert_eq!(paytrace_semconv::eviction_reason::ALL, ["max_traces", "max_bytes"]);
/// ```
pub mod eviction_reason {
    /// Too many traces were being assembled.
    pub const MAX_TRACES: &str = "max_traces";
    /// The buffered spans took too many bytes.
    pub const MAX_BYTES: &str = "max_bytes";
    /// All reasons.
    pub const ALL: &[&str] = &[MAX_TRACES, MAX_BYTES];
}

/// Values of the `outcome` label of `paytrace_tcc_phase_total`: what the
/// fence did with a phase.
///
/// ```
/// assert!(paytrace_semconv::tcc_phase_outcome::ALL.contains(&"skipped"));
/// ```
pub mod tcc_phase_outcome {
    /// The handler ran and succeeded.
    pub const OK: &str = "ok";
    /// The handler ran and failed.
    pub const ERROR: &str = "error";
    /// The fence answered without running the handler (a repeat, an empty rollback).
    pub const SKIPPED: &str = "skipped";
    /// The fence refused the phase (a Try after its Cancel, a Cancel after Confirm).
    pub const REJECTED: &str = "rejected";
    /// Another call holds the branch (its handler is running): answered
    /// "retry later", never "done".
    pub const BUSY: &str = "busy";
    /// The call was dropped while its handler ran: the branch went back to
    /// the state it had before.
    pub const CANCELLED: &str = "cancelled";
    /// All outcomes.
    pub const ALL: &[&str] = &[OK, ERROR, SKIPPED, REJECTED, BUSY, CANCELLED];
}

/// Values of the `reason` label of `paytrace_aggregator_spans_truncated_total`:
/// what the aggregator cut from a span it kept. Only a structurally invalid
/// span is rejected; an over-long or over-full one is cut to the limits.
///
/// ```
/// assert!(paytrace_semconv::aggregator_truncation::ALL.contains(&"value_too_long"));
/// ```
pub mod aggregator_truncation {
    /// The span name was longer than the limit; its start is kept.
    pub const NAME_TOO_LONG: &str = "name_too_long";
    /// A paytrace attribute's value was longer than the limit; its start is kept.
    pub const VALUE_TOO_LONG: &str = "value_too_long";
    /// The span had more attributes than the limit; the first are read.
    pub const TOO_MANY_ATTRIBUTES: &str = "too_many_attributes";
    /// The span had more links than the limit; the first are kept.
    pub const TOO_MANY_LINKS: &str = "too_many_links";
    /// All reasons.
    pub const ALL: &[&str] = &[
        NAME_TOO_LONG,
        VALUE_TOO_LONG,
        TOO_MANY_ATTRIBUTES,
        TOO_MANY_LINKS,
    ];
}

/// Values of the `reason` label of
/// `paytrace_aggregator_connections_refused_total`: why a connection to a
/// TLS listener was closed before it carried a request.
///
/// ```
/// assert!(paytrace_semconv::connection_refusal::ALL.contains(&"not_tls"));
/// ```
pub mod connection_refusal {
    /// The client spoke plaintext (or anything but TLS) to a TLS port.
    pub const NOT_TLS: &str = "not_tls";
    /// The listener requires a client certificate and none was presented.
    pub const CLIENT_CERTIFICATE_MISSING: &str = "client_certificate_missing";
    /// The client's certificate is not issued by a trusted CA, expired, or
    /// otherwise invalid.
    pub const CLIENT_CERTIFICATE_INVALID: &str = "client_certificate_invalid";
    /// The handshake did not finish in time.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// Any other handshake failure (no common cipher suite or version, the
    /// client rejecting the server's certificate).
    pub const HANDSHAKE_FAILED: &str = "handshake_failed";
    /// All reasons.
    pub const ALL: &[&str] = &[
        NOT_TLS,
        CLIENT_CERTIFICATE_MISSING,
        CLIENT_CERTIFICATE_INVALID,
        HANDSHAKE_TIMEOUT,
        HANDSHAKE_FAILED,
    ];
}

/// Values of the `outcome` label of `paytrace_aggregator_state_snapshots_total`.
///
/// ```
/// assert!(paytrace_semconv::snapshot_outcome::ALL.contains(&"set_aside"));
/// ```
pub mod snapshot_outcome {
    /// A snapshot was written (periodically or at shutdown).
    pub const WRITTEN: &str = "written";
    /// Writing one failed (the disk is full or read-only): the log says why.
    pub const FAILED: &str = "failed";
    /// The snapshot found at start was read back.
    pub const RESTORED: &str = "restored";
    /// The snapshot found at start could not be read and was moved aside.
    pub const SET_ASIDE: &str = "set_aside";
    /// All outcomes.
    pub const ALL: &[&str] = &[WRITTEN, FAILED, RESTORED, SET_ASIDE];
}

/// The `listener` label's values: the aggregator's three listeners.
///
/// ```
/// assert_eq!(paytrace_semconv::listener::ALL, ["otlp_grpc", "otlp_http", "api"]);
/// ```
pub mod listener {
    /// OTLP/gRPC (port 4317).
    pub const OTLP_GRPC: &str = "otlp_grpc";
    /// OTLP/HTTP (port 4318).
    pub const OTLP_HTTP: &str = "otlp_http";
    /// The API, page, `/metrics` and health (port 8686).
    pub const API: &str = "api";
    /// All listeners.
    pub const ALL: [&str; 3] = [OTLP_GRPC, OTLP_HTTP, API];
}

/// TCC vocabulary: phases, resources and anomaly kinds.
///
/// ```
/// assert!(paytrace_semconv::tcc::ANOMALY_KINDS.contains(&"hanging_try"));
/// ```
pub mod tcc {
    /// Phase one: reserve.
    pub const PHASE_TRY: &str = "try";
    /// Phase two: commit the reservation.
    pub const PHASE_CONFIRM: &str = "confirm";
    /// Phase two: release the reservation.
    pub const PHASE_CANCEL: &str = "cancel";
    /// All phases.
    pub const PHASES: &[&str] = &[PHASE_TRY, PHASE_CONFIRM, PHASE_CANCEL];

    /// Stock.
    pub const RESOURCE_INVENTORY: &str = "inventory";
    /// Coupons.
    pub const RESOURCE_COUPON: &str = "coupon";
    /// Loyalty points.
    pub const RESOURCE_POINTS: &str = "points";
    /// Money.
    pub const RESOURCE_PAYMENT: &str = "payment";
    /// The resources of the demo shop.
    pub const RESOURCES: &[&str] = &[
        RESOURCE_INVENTORY,
        RESOURCE_COUPON,
        RESOURCE_POINTS,
        RESOURCE_PAYMENT,
    ];

    /// A Cancel arrived for a branch whose Try never did.
    pub const EMPTY_ROLLBACK: &str = "empty_rollback";
    /// A Try arrived after its branch was already cancelled.
    pub const HANGING_TRY: &str = "hanging_try";
    /// A Cancel arrived after the branch was confirmed.
    pub const CANCEL_AFTER_CONFIRM: &str = "cancel_after_confirm";
    /// A Confirm arrived after the branch was cancelled.
    pub const CONFIRM_AFTER_CANCEL: &str = "confirm_after_cancel";
    /// A repeated Confirm.
    pub const DUPLICATE_CONFIRM: &str = "duplicate_confirm";
    /// A repeated Cancel.
    pub const DUPLICATE_CANCEL: &str = "duplicate_cancel";
    /// A Confirm arrived for a branch that was never tried.
    pub const CONFIRM_WITHOUT_TRY: &str = "confirm_without_try";
    /// All anomaly kinds.
    pub const ANOMALY_KINDS: &[&str] = &[
        EMPTY_ROLLBACK,
        HANGING_TRY,
        CANCEL_AFTER_CONFIRM,
        CONFIRM_AFTER_CANCEL,
        DUPLICATE_CONFIRM,
        DUPLICATE_CANCEL,
        CONFIRM_WITHOUT_TRY,
    ];

    /// A branch ran the phase two opposite to the coordinator's decision:
    /// the global transaction is inconsistent. Seen only by the aggregator.
    pub const DECISION_VIOLATED: &str = "decision_violated";
    /// A branch stayed tried, with no Confirm or Cancel, past the
    /// aggregator's TCC timeout: its resources are frozen.
    pub const FROZEN: &str = "frozen";
    /// A span carries `tcc.*` attributes the aggregator cannot classify (no
    /// xid, unknown phase, neither branch id nor resource).
    pub const MALFORMED: &str = "malformed";
    /// The kinds of `paytrace_tcc_global_anomalies_total`: the fence's kinds,
    /// replayed from span timestamps across services, and the aggregator's own.
    pub const GLOBAL_ANOMALY_KINDS: &[&str] = &[
        EMPTY_ROLLBACK,
        HANGING_TRY,
        CANCEL_AFTER_CONFIRM,
        CONFIRM_AFTER_CANCEL,
        DUPLICATE_CONFIRM,
        DUPLICATE_CANCEL,
        CONFIRM_WITHOUT_TRY,
        DECISION_VIOLATED,
        FROZEN,
        MALFORMED,
    ];
}

/// Payment methods and channels of the demo shop.
///
/// ```
/// assert!(paytrace_semconv::payment::METHODS.contains(&"wechat_pay"));
/// ```
pub mod payment {
    /// Alipay, as a method and as a channel.
    pub const ALIPAY: &str = "alipay";
    /// WeChat Pay, the method.
    pub const WECHAT_PAY: &str = "wechat_pay";
    /// Card, the method.
    pub const CARD: &str = "card";
    /// WeChat Pay, the channel.
    pub const CHANNEL_WXPAY: &str = "wxpay";
    /// Stripe, a card acquirer channel.
    pub const CHANNEL_STRIPE: &str = "stripe";
    /// UnionPay, a card channel.
    pub const CHANNEL_UNIONPAY: &str = "unionpay";
    /// Payment methods.
    pub const METHODS: &[&str] = &[ALIPAY, WECHAT_PAY, CARD];
    /// Payment channels.
    pub const CHANNELS: &[&str] = &[ALIPAY, CHANNEL_WXPAY, CHANNEL_STRIPE, CHANNEL_UNIONPAY];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_stage_is_well_formed() {
        for s in stage::ALL {
            assert!(stage::is_valid_name(s), "{s} is not <domain>.<action>");
        }
        for bad in [
            "inventory",
            "Inventory.try",
            "inventory.",
            ".try",
            "a.b.c",
            "a-b.c",
        ] {
            assert!(!stage::is_valid_name(bad), "{bad} should be rejected");
        }
    }

    #[test]
    fn buckets_are_strictly_increasing() {
        assert!(DEFAULT_LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(HTTP_LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn metric_names_are_prometheus_style() {
        for m in metric::ALL {
            assert!(
                m.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{m} must be lower snake case"
            );
        }
        let mut sorted: Vec<_> = metric::ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), metric::ALL.len(), "duplicate metric names");
    }
}
