//! Producer and consumer instrumentation over an in-memory carrier: the
//! consumer starts a new trace linked to the producer's span and continues
//! its flow; a dropped send or processing is `cancelled`, never `ok`.
//! (The same against real brokers: `paytrace-integration/tests/redis_streams.rs`.)

mod common;

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceContextExt};
use paytrace::messaging::Delivery;
use paytrace::{Flow, ServiceTelemetry};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use common::{attribute, capture, value};

fn checkout() -> Flow {
    Flow {
        flow: Some("checkout".into()),
        flow_id: Some("ord_msg_1".into()),
        payment_method: Some("card".into()),
        payment_channel: Some("stripe".into()),
    }
}

#[tokio::test]
async fn the_consumer_continues_the_producers_flow_in_a_linked_trace() {
    let c = capture();
    let payment = ServiceTelemetry::with_metrics("payment", "1.0.0", &c.metrics);
    let order = ServiceTelemetry::with_metrics("order", "1.0.0", &c.metrics);

    // The producer sends from inside a stage of a checkout.
    let (headers, stage_cx) = checkout()
        .scope(async {
            let stage = payment.stage("payment.confirm").start();
            let cx = stage.span_context();
            let headers = payment
                .producer("redis", "payment.notifications")
                .operation("xadd")
                .send(Some("ntf_1"), HashMap::new(), |h| async move {
                    Ok::<_, std::io::Error>(h)
                })
                .instrument_in(stage.span())
                .await
                .expect("sent");
            (headers, cx)
        })
        .await;
    assert!(headers.contains_key("traceparent"), "{headers:?}");
    assert!(
        headers["baggage"].contains("paytrace.flow_id=ord_msg_1"),
        "{headers:?}"
    );

    // The consumer, with nothing of the producer's but the headers.
    let (trace_in_consumer, flow_in_consumer) = order
        .consumer("redis", "payment.notifications")
        .group("order")
        .stage("order.paid")
        .process(
            &headers,
            Delivery::new().message_id("ntf_1").delivery_count(1),
            async {
                let cx = tracing::Span::current().context();
                Ok::<_, std::io::Error>((cx.span().span_context().trace_id(), Flow::current()))
            },
        )
        .await
        .expect("processed");
    assert_ne!(
        trace_in_consumer,
        stage_cx.trace_id(),
        "the consumer starts a trace of its own"
    );
    assert_eq!(flow_in_consumer.flow_id.as_deref(), Some("ord_msg_1"));
    assert_eq!(flow_in_consumer.payment_channel.as_deref(), Some("stripe"));

    let producer_spans = c.spans_of_trace(stage_cx.trace_id(), |s| {
        s.iter().any(|s| s.span_kind == SpanKind::Producer)
    });
    let send = producer_spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Producer)
        .expect("a PRODUCER span");
    assert_eq!(send.name, "xadd payment.notifications");
    assert_eq!(
        send.parent_span_id,
        stage_cx.span_id(),
        "sent from the stage"
    );
    assert_eq!(
        attribute(send, "messaging.destination.name").as_deref(),
        Some("payment.notifications")
    );
    assert_eq!(
        attribute(send, "messaging.message.id").as_deref(),
        Some("ntf_1")
    );
    assert_eq!(
        attribute(send, "paytrace.flow_id").as_deref(),
        Some("ord_msg_1")
    );

    let consumer_spans = c.spans_of_trace(trace_in_consumer, |s| !s.is_empty());
    let process = &consumer_spans[0];
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.name, "process payment.notifications");
    let links: Vec<_> = process
        .links
        .iter()
        .map(|l| l.span_context.clone())
        .collect();
    assert_eq!(links.len(), 1, "one link, to the send");
    assert_eq!(links[0].span_id(), send.span_context.span_id());
    for (key, expected) in [
        ("paytrace.stage", "order.paid"),
        ("paytrace.flow", "checkout"),
        ("paytrace.flow_id", "ord_msg_1"),
        ("payment.channel", "stripe"),
        ("messaging.consumer.group.name", "order"),
        ("messaging.operation.type", "process"),
        ("paytrace.messaging.delivery_count", "1"),
    ] {
        assert_eq!(attribute(process, key).as_deref(), Some(expected), "{key}");
    }
    // The stage on the CONSUMER span carries the flow's labels.
    assert_eq!(
        value(
            &c.metrics,
            "paytrace_stage_duration_seconds",
            &[
                ("service_name", "order"),
                ("flow", "checkout"),
                ("stage", "order.paid"),
                ("payment_method", "card"),
                ("payment_channel", "stripe"),
                ("outcome", "ok"),
            ],
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &c.metrics,
            "messaging_client_consumed_messages_total",
            &[
                ("service_name", "order"),
                ("messaging_system", "redis"),
                ("messaging_destination_name", "payment.notifications"),
                ("messaging_consumer_group_name", "order"),
            ],
        ),
        Some(1.0)
    );
}

/// `tracing::Instrument` under a name that reads as what the test does.
trait InstrumentIn: Sized + std::future::Future {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self>;
}

impl<F: std::future::Future> InstrumentIn for F {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}

#[tokio::test]
async fn dropped_sends_and_processings_are_cancelled_and_failures_failed() {
    let c = capture();
    let svc = ServiceTelemetry::with_metrics("dropper", "1.0.0", &c.metrics);
    let producer = svc.producer("rabbitmq", "drops").operation("publish");
    let consumer = svc.consumer("rabbitmq", "drops");

    // The broker never confirms: the caller's timeout drops the send.
    let never = producer.send(None, HashMap::new(), |_| {
        std::future::pending::<Result<(), std::io::Error>>()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(20), never)
            .await
            .is_err()
    );
    let failed = producer
        .send(None, HashMap::new(), |_| async {
            Err::<(), _>(std::io::Error::other("nacked"))
        })
        .await;
    assert!(failed.is_err());

    let headers = HashMap::new();
    let stuck = consumer.process(
        &headers,
        Delivery::new(),
        std::future::pending::<Result<(), ()>>(),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(20), stuck)
            .await
            .is_err()
    );
    let refused = consumer
        .process(&headers, Delivery::new(), async { Err::<(), _>(()) })
        .await;
    assert!(refused.is_err());

    let sent = |error_type| {
        value(
            &c.metrics,
            "messaging_client_sent_messages_total",
            &[
                ("service_name", "dropper"),
                ("messaging_system", "rabbitmq"),
                ("messaging_destination_name", "drops"),
                ("error_type", error_type),
            ],
        )
    };
    assert_eq!(sent("cancelled"), Some(1.0));
    assert_eq!(sent("failed"), Some(1.0));
    assert_eq!(sent(""), None, "nothing was sent successfully");
    let processed = |error_type| {
        value(
            &c.metrics,
            "messaging_process_duration_seconds",
            &[
                ("service_name", "dropper"),
                ("messaging_system", "rabbitmq"),
                ("messaging_destination_name", "drops"),
                ("messaging_consumer_group_name", ""),
                ("error_type", error_type),
            ],
        )
    };
    assert_eq!(processed("cancelled"), Some(1.0));
    assert_eq!(processed("failed"), Some(1.0));
    assert_eq!(processed(""), None);
}

#[tokio::test]
async fn a_message_without_context_starts_an_unlinked_trace_without_a_flow() {
    let c = capture();
    let svc = ServiceTelemetry::with_metrics("bare", "1.0.0", &c.metrics);
    let mut headers = HashMap::new();
    headers.insert("traceparent".to_owned(), "not a traceparent".to_owned());
    headers.insert("baggage".to_owned(), "%%%".to_owned());
    let (trace, flow) = svc
        .consumer("redis", "bare")
        .process(&headers, Delivery::new(), async {
            let cx = tracing::Span::current().context();
            Ok::<_, ()>((cx.span().span_context().trace_id(), Flow::current()))
        })
        .await
        .expect("processed");
    assert_eq!(flow, Flow::default());
    let spans = c.spans_of_trace(trace, |s| !s.is_empty());
    assert!(
        spans[0].links.is_empty(),
        "an invalid traceparent links nothing"
    );
    assert_eq!(
        spans[0].parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
}
