//! The Redis Streams adapter against a real redis-server (started here;
//! `apt-get install redis-server`): trace context and flow travel in the
//! entries' fields, messages are acknowledged only after processing, a
//! dropped or failed processing comes back with its delivery count and goes
//! to the dead-letter stream after `max_deliveries`, and the broker's view
//! of the group (backlog, pending, oldest age) is read from Redis.

mod messaging;

use std::time::{Duration, Instant};

use opentelemetry::trace::SpanKind;
use paytrace::Flow;
use paytrace::messaging::redis_streams::{
    StreamConsumer, StreamConsumerConfig, StreamMessage, StreamProducer,
};
use paytrace::messaging::{Carrier, QueueState};
use paytrace::redis::{self, AsyncCommands};
use paytrace_testkit::RedisServer;

use messaging::{broker_labels, processed, services, spans, spans_of, value};

fn checkout(order: &str) -> Flow {
    messaging::checkout(order, "alipay", "alipay")
}

fn group_labels(stream: &str) -> [(&'static str, &str); 4] {
    broker_labels("redis", stream, "order")
}

fn config(claim_after: Duration) -> StreamConsumerConfig {
    let mut c = StreamConsumerConfig::default();
    c.block = Duration::from_millis(100);
    c.claim_after = claim_after;
    c.max_deliveries = 3;
    c
}

/// Reads batches until one is not empty (a message left idle comes back
/// only once `claim_after` has passed: this waits for that, bounded).
async fn next_nonempty(consumer: &StreamConsumer) -> Vec<StreamMessage> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = consumer.next_batch().await.expect("read the stream");
        if !batch.is_empty() {
            return batch;
        }
        assert!(Instant::now() < deadline, "no message came back in 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_trace_and_flow_through_redis_and_are_acknowledged_after_processing() {
    spans();
    let server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).expect("a valid URL");
    let (metrics, payment, order) = services();
    let stream = "notifications.ok";
    let producer = StreamProducer::connect(&payment, &client, stream)
        .await
        .expect("connects");
    let consumer = StreamConsumer::connect(
        &order,
        &client,
        stream,
        "order",
        "order-1",
        config(Duration::from_secs(60)),
    )
    .await
    .expect("joins the group")
    .stage("order.paid");

    for i in 0..3 {
        checkout(&format!("ord_{i}"))
            .scope(async {
                producer
                    .send(&format!("ntf_{i}"), format!("paid {i}").as_bytes())
                    .await
                    .expect("XADD");
            })
            .await;
    }
    let before = consumer.observe().await.expect("read the group");
    assert_eq!(before, QueueState::new(3, 0, before.oldest_age));
    assert!(before.oldest_age.is_some());

    let batch = consumer.next_batch().await.expect("XREADGROUP");
    assert_eq!(batch.len(), 3);
    let sends = spans_of(SpanKind::Producer, stream);
    assert_eq!(sends.len(), 3);
    let delivered_mid = consumer.observe().await.expect("read the group");
    assert_eq!((delivered_mid.ready, delivered_mid.unacked), (0, 3));

    for (i, message) in batch.iter().enumerate() {
        assert_eq!(
            message.message_id.as_deref(),
            Some(format!("ntf_{i}").as_str())
        );
        assert_eq!(message.payload, format!("paid {i}").into_bytes());
        assert_eq!(message.delivery_count, 1);
        // The traceparent names the send's span.
        let traceparent = message.get("traceparent").expect("a traceparent field");
        let send = &sends[i];
        assert!(
            traceparent.contains(&send.span_context.span_id().to_string()),
            "{traceparent} vs {:?}",
            send.span_context
        );
        let flow = consumer
            .handle(message, async { Ok::<_, std::io::Error>(Flow::current()) })
            .await
            .expect("XACK")
            .expect("processed");
        assert_eq!(flow, checkout(&format!("ord_{i}")));
    }

    let after = consumer.observe().await.expect("read the group");
    assert_eq!(after, QueueState::new(0, 0, None), "all acknowledged");
    let labels = group_labels(stream);
    assert_eq!(
        value(&metrics, "paytrace_broker_messages_unacked", &labels),
        0.0
    );
    let processes = spans_of(SpanKind::Consumer, stream);
    assert_eq!(processes.len(), 3);
    for (process, send) in processes.iter().zip(&sends) {
        assert_eq!(process.links.len(), 1);
        assert_eq!(
            process.links[0].span_context.span_id(),
            send.span_context.span_id()
        );
        assert_ne!(
            process.span_context.trace_id(),
            send.span_context.trace_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_failed_processings_come_back_then_go_to_the_dead_letter_stream() {
    spans();
    let server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).expect("a valid URL");
    let (metrics, payment, order) = services();
    let stream = "notifications.poison";
    let producer = StreamProducer::connect(&payment, &client, stream)
        .await
        .expect("connects");
    let claim_after = Duration::from_millis(50);
    let first = StreamConsumer::connect(
        &order,
        &client,
        stream,
        "order",
        "order-1",
        config(claim_after),
    )
    .await
    .expect("joins");
    let second = StreamConsumer::connect(
        &order,
        &client,
        stream,
        "order",
        "order-2",
        config(claim_after),
    )
    .await
    .expect("joins");
    checkout("ord_poison")
        .scope(producer.send("ntf_poison", b"cannot be applied"))
        .await
        .expect("XADD");

    // Delivery 1: the processing hangs and the caller's timeout drops it.
    let batch = first.next_batch().await.expect("read");
    assert_eq!(batch.len(), 1);
    let hung = first.handle(&batch[0], std::future::pending::<Result<(), ()>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), hung)
            .await
            .is_err()
    );

    // Deliveries 2 and 3, to the other consumer: the processing fails.
    for expected in 2..=3 {
        let batch = next_nonempty(&second).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].delivery_count, expected);
        assert_eq!(batch[0].message_id.as_deref(), Some("ntf_poison"));
        let failed = second
            .handle(&batch[0], async { Err::<(), _>("no such order") })
            .await
            .expect("no Redis error");
        assert!(failed.is_err());
    }

    // Delivered 3 times (max_deliveries): the next read moves it.
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead: redis::streams::StreamRangeReply = loop {
        let batch = first.next_batch().await.expect("read");
        assert!(
            batch.is_empty(),
            "a message delivered 3 times is not delivered again"
        );
        let dead: redis::streams::StreamRangeReply = conn
            .xrange_all(first.dead_letter_stream())
            .await
            .expect("XRANGE");
        if !dead.ids.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
    };
    assert_eq!(dead.ids.len(), 1);
    let entry = &dead.ids[0];
    let field = |k: &str| -> Option<String> { entry.get(k) };
    assert_eq!(field("message_id").as_deref(), Some("ntf_poison"));
    assert_eq!(field("payload").as_deref(), Some("cannot be applied"));
    assert_eq!(field("dead_letter_deliveries").as_deref(), Some("3"));
    assert!(field("traceparent").is_some(), "the context goes with it");
    assert!(
        field("baggage").is_some_and(|b| b.contains("ord_poison")),
        "and the flow"
    );

    let state = first.observe().await.expect("read the group");
    assert_eq!(state, QueueState::new(0, 0, None), "nothing left pending");
    let labels = group_labels(stream);
    assert_eq!(
        value(&metrics, "paytrace_broker_dead_lettered_total", &labels),
        1.0
    );
    assert_eq!(
        value(&metrics, "paytrace_broker_redeliveries_total", &labels),
        2.0
    );
    let processed = |error_type| processed(&metrics, "redis", stream, "order", error_type);
    assert_eq!(processed("cancelled"), 1.0);
    assert_eq!(processed("failed"), 2.0);
    assert_eq!(processed(""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_backlog_pending_and_oldest_age_are_read_from_redis() {
    let server = RedisServer::start().await;
    let client = redis::Client::open(server.url()).expect("a valid URL");
    let (metrics, _payment, order) = services();
    let stream = "notifications.backlog";
    let consumer = StreamConsumer::connect(&order, &client, stream, "order", "order-1", {
        let mut c = config(Duration::from_secs(60));
        c.batch = 1;
        c
    })
    .await
    .expect("joins");
    // Two entries written 90 s ago by the server's clock (explicit ids).
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let (secs, _micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let then_ms = (secs - 90) * 1000;
    for seq in 0..2 {
        let _: String = conn
            .xadd(
                stream,
                format!("{then_ms}-{seq}"),
                &[("message_id", format!("old_{seq}"))],
            )
            .await
            .expect("XADD");
    }
    let _: String = conn
        .xadd(stream, "*", &[("message_id", "new")])
        .await
        .expect("XADD");

    let backlog = consumer.observe().await.expect("read");
    assert_eq!((backlog.ready, backlog.unacked), (3, 0));
    let age = backlog.oldest_age.expect("an oldest entry");
    assert!(
        age >= Duration::from_secs(90) && age < Duration::from_secs(3600),
        "{age:?}"
    );

    // One delivered, not acknowledged: pending 1, ready 2, the oldest is it.
    let batch = consumer.next_batch().await.expect("read");
    assert_eq!(batch.len(), 1);
    let mid = consumer.observe().await.expect("read");
    assert_eq!((mid.ready, mid.unacked), (2, 1));
    assert!(mid.oldest_age.expect("the pending one") >= Duration::from_secs(90));
    let labels = group_labels(stream);
    assert_eq!(
        value(&metrics, "paytrace_broker_messages_ready", &labels),
        2.0
    );
    assert_eq!(
        value(&metrics, "paytrace_broker_messages_unacked", &labels),
        1.0
    );
    assert!(
        value(
            &metrics,
            "paytrace_broker_oldest_message_age_seconds",
            &labels
        ) >= 90.0
    );

    // Acknowledge both old ones: the oldest left is the new entry.
    consumer.ack(&batch[0]).await.expect("XACK");
    let batch = consumer.next_batch().await.expect("read");
    consumer.ack(&batch[0]).await.expect("XACK");
    let last = consumer.observe().await.expect("read");
    assert_eq!((last.ready, last.unacked), (1, 0));
    assert!(last.oldest_age.expect("the new entry") < Duration::from_secs(90));
}
