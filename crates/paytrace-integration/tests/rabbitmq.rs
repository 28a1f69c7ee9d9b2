//! The RabbitMQ adapter against a real broker (started here, with its own
//! port mapper; `apt-get install rabbitmq-server`): trace context and flow
//! travel in AMQP headers, a send returns once the broker confirmed and
//! fails loudly when no queue takes the message, a dropped or failed
//! processing returns the message with its delivery count until the
//! delivery limit dead-letters it, and the management API's view of the
//! queue is what the gauges show.

mod messaging;

use std::time::{Duration, Instant};

use opentelemetry::trace::SpanKind;
use paytrace::Flow;
use paytrace::lapin::{self, Connection, ConnectionProperties};
use paytrace::messaging::amqp::{
    AmqpConsumer, AmqpConsumerConfig, AmqpError, AmqpMessage, AmqpProducer, AmqpQueue,
    ManagementApi,
};
use paytrace::messaging::{Carrier, QueueState};
use paytrace_testkit::RabbitMqServer;

use messaging::{broker_labels, processed, services, spans, spans_of, value};

fn checkout(order: &str) -> Flow {
    messaging::checkout(order, "wechat_pay", "wxpay")
}

fn queue_labels(queue: &str) -> [(&'static str, &str); 4] {
    broker_labels("rabbitmq", queue, "")
}

async fn connect(broker: &RabbitMqServer) -> Connection {
    Connection::connect(broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connects to the broker")
}

fn api(broker: &RabbitMqServer) -> ManagementApi {
    ManagementApi::new(broker.management_url(), "guest", "guest")
}

/// The management API refreshes its numbers every 500 ms here: reads until
/// `done` holds, at most 20 s.
async fn state_until(
    consumer: &AmqpConsumer,
    api: &ManagementApi,
    done: impl Fn(&QueueState) -> bool,
) -> QueueState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = consumer
            .observe(api)
            .await
            .expect("the management API answers");
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never got there: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn next(consumer: &mut AmqpConsumer) -> AmqpMessage {
    tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20 s")
        .expect("the consumer is open")
        .expect("a delivery, not an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_carries_trace_and_flow_confirms_sends_and_refuses_unroutable_ones() {
    spans();
    let broker = RabbitMqServer::start().await;
    let connection = connect(&broker).await;
    let (metrics, payment, order) = services();
    let queue = "notifications.ok";
    AmqpQueue::new(queue)
        .declare(&connection)
        .await
        .expect("declared");
    let producer = AmqpProducer::to_queue(&payment, &connection, queue)
        .await
        .expect("a channel");
    let mut consumer =
        AmqpConsumer::connect(&order, &connection, queue, AmqpConsumerConfig::default())
            .await
            .expect("consuming")
            .stage("order.paid");

    for i in 0..3 {
        checkout(&format!("ord_{i}"))
            .scope(producer.send(&format!("ntf_{i}"), format!("paid {i}").as_bytes()))
            .await
            .expect("confirmed by the broker");
    }
    let sends = spans_of(SpanKind::Producer, queue);
    assert_eq!(sends.len(), 3);
    for (i, send) in sends.iter().enumerate() {
        let message = next(&mut consumer).await;
        assert_eq!(message.message_id(), Some(format!("ntf_{i}").as_str()));
        assert_eq!(message.payload(), format!("paid {i}").as_bytes());
        assert_eq!(message.delivery_count(), 1);
        let traceparent = message
            .headers()
            .get("traceparent")
            .expect("a traceparent header");
        assert!(traceparent.contains(&send.span_context.span_id().to_string()));
        let flow = consumer
            .handle(message, async { Ok::<_, std::io::Error>(Flow::current()) })
            .await
            .expect("acknowledged")
            .expect("processed");
        assert_eq!(flow, checkout(&format!("ord_{i}")));
    }
    let api = api(&broker);
    let settled = state_until(&consumer, &api, |s| s.ready == 0 && s.unacked == 0).await;
    assert_eq!(settled, QueueState::new(0, 0, None));
    let processes = spans_of(SpanKind::Consumer, queue);
    assert_eq!(processes.len(), 3);
    for process in &processes {
        assert_eq!(process.links.len(), 1);
        assert!(
            sends
                .iter()
                .any(|s| s.span_context.span_id() == process.links[0].span_context.span_id())
        );
    }

    // No queue by that name: the broker returns the message, the send fails.
    let nowhere = AmqpProducer::to_queue(&payment, &connection, "no.such.queue")
        .await
        .expect("a channel");
    let refused = nowhere.send("ntf_lost", b"x").await;
    assert!(
        matches!(refused, Err(AmqpError::Unroutable { ref routing_key, .. }) if routing_key == "no.such.queue"),
        "{refused:?}"
    );
    let sent = |destination, error_type| {
        value(
            &metrics,
            "messaging_client_sent_messages_total",
            &[
                ("error_type", error_type),
                ("messaging_destination_name", destination),
                ("messaging_system", "rabbitmq"),
                ("service_name", "payment"),
            ],
        )
    };
    assert_eq!(sent(queue, ""), 3.0);
    assert_eq!(sent("no.such.queue", "failed"), 1.0);
    let too_long = producer.send(&"x".repeat(300), b"x").await;
    assert!(
        matches!(too_long, Err(AmqpError::TooLong { len: 300, .. })),
        "{too_long:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_failed_processings_return_the_message_until_it_is_dead_lettered() {
    spans();
    let broker = RabbitMqServer::start().await;
    let connection = connect(&broker).await;
    let (metrics, payment, order) = services();
    let queue = "notifications.poison";
    let topology = AmqpQueue::new(queue).max_deliveries(3);
    topology.declare(&connection).await.expect("declared");
    let producer = AmqpProducer::to_queue(&payment, &connection, queue)
        .await
        .expect("a channel");
    let mut config = AmqpConsumerConfig::default();
    config.max_deliveries = 3;
    let mut consumer = AmqpConsumer::connect(&order, &connection, queue, config)
        .await
        .expect("consuming");
    checkout("ord_poison")
        .scope(producer.send("ntf_poison", b"cannot be applied"))
        .await
        .expect("confirmed");

    // Delivery 1: the processing hangs and the caller's timeout drops it.
    let first = next(&mut consumer).await;
    assert_eq!(first.delivery_count(), 1);
    let hung = consumer.handle(first, std::future::pending::<Result<(), ()>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), hung)
            .await
            .is_err()
    );

    // Deliveries 2 and 3: the processing fails; the third is the last.
    for expected in 2..=3 {
        let message = next(&mut consumer).await;
        assert_eq!(message.delivery_count(), expected);
        assert_eq!(message.message_id(), Some("ntf_poison"));
        let failed = consumer
            .handle(message, async { Err::<(), _>("no such order") })
            .await
            .expect("settled");
        assert!(failed.is_err());
    }

    // The dead-letter queue has it, context and all; the queue does not.
    let channel = connection.create_channel().await.expect("a channel");
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let got = channel
            .basic_get(
                topology.dead_letter_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        if let Some(dead) = got {
            break dead;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.delivery.data, b"cannot be applied");
    let headers = paytrace::messaging::amqp::AmqpHeaders(
        dead.delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default(),
    );
    assert!(
        headers
            .get("baggage")
            .is_some_and(|b| b.contains("ord_poison"))
    );
    let api = api(&broker);
    let state = state_until(&consumer, &api, |s| s.ready == 0 && s.unacked == 0).await;
    assert_eq!(state, QueueState::new(0, 0, None));

    let labels = queue_labels(queue);
    assert_eq!(
        value(&metrics, "paytrace_broker_dead_lettered_total", &labels),
        1.0
    );
    assert_eq!(
        value(&metrics, "paytrace_broker_redeliveries_total", &labels),
        2.0
    );
    let processed = |error_type| processed(&metrics, "rabbitmq", queue, "", error_type);
    assert_eq!(processed("cancelled"), 1.0);
    assert_eq!(processed("failed"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_and_unacknowledged_messages_are_read_from_the_management_api() {
    let broker = RabbitMqServer::start().await;
    let connection = connect(&broker).await;
    let (metrics, payment, order) = services();
    let queue = "notifications.backlog";
    AmqpQueue::new(queue)
        .declare(&connection)
        .await
        .expect("declared");
    let producer = AmqpProducer::to_queue(&payment, &connection, queue)
        .await
        .expect("a channel");
    for i in 0..4 {
        producer
            .send(&format!("b_{i}"), b"waiting")
            .await
            .expect("confirmed");
    }
    // A consumer that takes one and holds it (prefetch 1).
    let mut config = AmqpConsumerConfig::default();
    config.prefetch = 1;
    let mut consumer = AmqpConsumer::connect(&order, &connection, queue, config)
        .await
        .expect("consuming");
    let held = next(&mut consumer).await;
    let api = api(&broker);
    let state = state_until(&consumer, &api, |s| s.ready == 3 && s.unacked == 1).await;
    // RabbitMQ 3.10's quorum queues report no head timestamp (the age is
    // then unknown, `None`); a broker that reports one reports the send's.
    if let Some(age) = state.oldest_age {
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
    let labels = queue_labels(queue);
    assert_eq!(
        value(&metrics, "paytrace_broker_messages_ready", &labels),
        3.0
    );
    assert_eq!(
        value(&metrics, "paytrace_broker_messages_unacked", &labels),
        1.0
    );
    drop(held);
}

/// A consumer nobody here wrote: the OpenTelemetry JS SDK's amqplib
/// instrumentation (`conformance/js/amqp_consumer.js`) takes a message this
/// middleware published, and continues its trace (the consumer span's
/// parent is the send's PRODUCER span) and its flow (the baggage it sees).
/// Needs Node.js and the pinned JS SDK (`npm ci --prefix conformance/js`;
/// scripts/test.sh does both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_amqplib_consumer_continues_the_trace_and_flow_of_a_message_sent_here() {
    paytrace_testkit::require("node", "apt-get install nodejs npm");
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/js");
    assert!(
        js.join("node_modules/@opentelemetry/instrumentation-amqplib")
            .is_dir(),
        "the JS SDK is not installed: run `npm ci --prefix conformance/js` (scripts/test.sh does)"
    );
    spans();
    let broker = RabbitMqServer::start().await;
    let connection = connect(&broker).await;
    let (_metrics, payment, _order) = services();
    let queue = "notifications.js";
    AmqpQueue::new(queue)
        .declare(&connection)
        .await
        .expect("declared");
    let producer = AmqpProducer::to_queue(&payment, &connection, queue)
        .await
        .expect("a channel");
    checkout("ord_js_amqp")
        .scope(producer.send("ntf_js", b"{\"order_id\":\"ord_js_amqp\"}"))
        .await
        .expect("confirmed");
    let sends = spans_of(SpanKind::Producer, queue);
    assert_eq!(sends.len(), 1);
    let send = &sends[0];

    let out = paytrace_testkit::Process::spawn(
        std::process::Command::new("node")
            .arg(js.join("amqp_consumer.js"))
            .args([broker.amqp_url(), queue])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        "apt-get install nodejs npm",
    )
    .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the JS consumer took the message within 60 s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        seen["traceId"],
        send.span_context.trace_id().to_string(),
        "{seen}"
    );
    assert_eq!(
        seen["parentSpanId"],
        send.span_context.span_id().to_string(),
        "{seen}"
    );
    // SpanKind.CONSUMER in the JS API.
    assert_eq!(seen["kind"], 4, "{seen}");
    assert_eq!(seen["flow"], "checkout", "{seen}");
    assert_eq!(seen["flowId"], "ord_js_amqp", "{seen}");
    assert_eq!(seen["paymentChannel"], "wxpay", "{seen}");
    assert_eq!(seen["messageId"], "ntf_js", "{seen}");
    assert_eq!(seen["body"], "{\"order_id\":\"ord_js_amqp\"}", "{seen}");
}
