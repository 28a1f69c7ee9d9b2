//! One side of the outbox's crash test, for the test to kill and restart:
//!
//! - `outbox_node relay DATABASE_URL BROKER_URL DESTINATION`: publishes the
//!   PostgreSQL outbox `shop_outbox` to the broker (a Redis stream for
//!   `redis://…`, a RabbitMQ queue for `amqp://…`), printing `published N`
//!   after each batch that published something;
//! - `outbox_node consume DATABASE_URL BROKER_URL DESTINATION NAME`:
//!   consumes it (as consumer NAME of the Redis group `order`) and applies
//!   each message once through the inbox `shop_inbox` (the effect: one
//!   `shop_effects` row per application), printing `applied N` after each
//!   batch (after each message on RabbitMQ).
//!
//! Both run until killed.

use std::time::Duration;

use paytrace::lapin;
use paytrace::messaging::amqp::{AmqpConsumer, AmqpConsumerConfig, AmqpProducer};
use paytrace::messaging::outbox::{Inbox, Outbox};
use paytrace::messaging::redis_streams::{StreamConsumer, StreamConsumerConfig, StreamProducer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, db, broker, destination] if mode == "relay" => relay(db, broker, destination).await,
        [mode, db, broker, destination, name] if mode == "consume" => {
            consume(db, broker, destination, name).await
        }
        _ => Err(
            "usage: outbox_node relay DATABASE_URL BROKER_URL DESTINATION | \
                  outbox_node consume DATABASE_URL BROKER_URL DESTINATION NAME"
                .into(),
        ),
    }
}

/// A producer on either broker.
#[derive(Clone)]
enum Sender {
    Redis(StreamProducer),
    Amqp(AmqpProducer),
}

impl Sender {
    async fn send(&self, id: &str, payload: &[u8]) -> Result<(), String> {
        match self {
            Self::Redis(p) => p
                .send(id, payload)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Self::Amqp(p) => p.send(id, payload).await.map_err(|e| e.to_string()),
        }
    }
}

async fn amqp(url: &str) -> Result<lapin::Connection, String> {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())
}

async fn relay(db: &str, broker: &str, destination: &str) -> Result<(), String> {
    let svc = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    let pool = sqlx::PgPool::connect(db).await.map_err(|e| e.to_string())?;
    // Kept for the life of the process: the producer's channel is on it.
    let mut _connection = None;
    let sender = if broker.starts_with("amqp") {
        let connection = amqp(broker).await?;
        let producer = AmqpProducer::to_queue(&svc, &connection, destination)
            .await
            .map_err(|e| e.to_string())?;
        _connection = Some(connection);
        Sender::Amqp(producer)
    } else {
        let client = paytrace::redis::Client::open(broker).map_err(|e| e.to_string())?;
        Sender::Redis(
            StreamProducer::connect(&svc, &client, destination)
                .await
                .map_err(|e| e.to_string())?,
        )
    };
    let relay = Outbox::new(&svc, "shop_outbox")
        .map_err(|e| e.to_string())?
        .relay(pool)
        .batch(20);
    loop {
        let published = relay
            .publish_batch(|message| {
                let sender = sender.clone();
                async move { sender.send(&message.message_id, &message.payload).await }
            })
            .await;
        match published {
            Ok(0) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(n) => println!("published {n}"),
            Err(e) => {
                eprintln!("relay: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The effect of one message, applied once: a `shop_effects` row.
async fn apply(pool: &sqlx::PgPool, inbox: &Inbox, id: &str) -> Result<(), String> {
    inbox
        .run(pool, id, async |tx| {
            sqlx::query("INSERT INTO shop_effects (message_id) VALUES ($1)")
                .bind(id)
                .execute(&mut **tx)
                .await
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn consume(db: &str, broker: &str, destination: &str, name: &str) -> Result<(), String> {
    let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    let pool = sqlx::PgPool::connect(db).await.map_err(|e| e.to_string())?;
    let inbox = Inbox::new(&svc, "shop_inbox", "order").map_err(|e| e.to_string())?;
    if broker.starts_with("amqp") {
        let connection = amqp(broker).await?;
        let mut config = AmqpConsumerConfig::default();
        config.max_deliveries = 1_000;
        let mut consumer = AmqpConsumer::connect(&svc, &connection, destination, config)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(delivery) = consumer.next().await {
            let message = delivery.map_err(|e| e.to_string())?;
            let Some(id) = message.message_id().map(str::to_owned) else {
                continue;
            };
            match consumer.handle(message, apply(&pool, &inbox, &id)).await {
                Ok(Ok(())) => println!("applied 1"),
                Ok(Err(e)) => eprintln!("consume {id}: {e}"),
                Err(e) => eprintln!("ack {id}: {e}"),
            }
        }
        return Err("the consumer's channel closed".into());
    }
    let client = paytrace::redis::Client::open(broker).map_err(|e| e.to_string())?;
    let mut config = StreamConsumerConfig::default();
    config.block = Duration::from_millis(50);
    // A killed consumer's messages come back to the next one this soon.
    config.claim_after = Duration::from_millis(300);
    config.max_deliveries = 1_000;
    let consumer = StreamConsumer::connect(&svc, &client, destination, "order", name, config)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let batch = match consumer.next_batch().await {
            Ok(batch) => batch,
            Err(e) => {
                eprintln!("consume: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut applied = 0;
        for message in &batch {
            let Some(id) = message.message_id.clone() else {
                continue;
            };
            match consumer.handle(message, apply(&pool, &inbox, &id)).await {
                Ok(Ok(())) => applied += 1,
                Ok(Err(e)) => eprintln!("consume {id}: {e}"),
                Err(e) => eprintln!("ack {id}: {e}"),
            }
        }
        if applied > 0 {
            println!("applied {applied}");
        }
    }
}
