//! One side of the outbox's crash test, for the test to kill and restart:
//!
//! - `outbox_node relay DATABASE_URL REDIS_URL STREAM`: publishes the
//!   PostgreSQL outbox `shop_outbox` to the Redis stream, printing
//!   `published N` after each batch that published something;
//! - `outbox_node consume DATABASE_URL REDIS_URL STREAM NAME`: consumes the
//!   stream in group `order` as consumer NAME and applies each message once
//!   through the inbox `shop_inbox` (the effect: one `shop_effects` row per
//!   application), printing `applied N` after each batch.
//!
//! Both run until killed.

use std::time::Duration;

use paytrace::messaging::outbox::{Inbox, Outbox};
use paytrace::messaging::redis_streams::{StreamConsumer, StreamConsumerConfig, StreamProducer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, db, redis, stream] if mode == "relay" => relay(db, redis, stream).await,
        [mode, db, redis, stream, name] if mode == "consume" => {
            consume(db, redis, stream, name).await
        }
        _ => Err("usage: outbox_node relay DATABASE_URL REDIS_URL STREAM | \
                  outbox_node consume DATABASE_URL REDIS_URL STREAM NAME"
            .into()),
    }
}

async fn relay(db: &str, redis_url: &str, stream: &str) -> Result<(), String> {
    let svc = paytrace::ServiceTelemetry::new("payment", "1.0.0");
    let pool = sqlx::PgPool::connect(db).await.map_err(|e| e.to_string())?;
    let client = paytrace::redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let producer = StreamProducer::connect(&svc, &client, stream)
        .await
        .map_err(|e| e.to_string())?;
    let relay = Outbox::new(&svc, "shop_outbox")
        .map_err(|e| e.to_string())?
        .relay(pool)
        .batch(20);
    loop {
        let published = relay
            .publish_batch(|message| {
                let producer = producer.clone();
                async move {
                    producer
                        .send(&message.message_id, &message.payload)
                        .await
                        .map(|_| ())
                }
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

async fn consume(db: &str, redis_url: &str, stream: &str, name: &str) -> Result<(), String> {
    let svc = paytrace::ServiceTelemetry::new("order", "1.0.0");
    let pool = sqlx::PgPool::connect(db).await.map_err(|e| e.to_string())?;
    let client = paytrace::redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let mut config = StreamConsumerConfig::default();
    config.block = Duration::from_millis(50);
    // A killed consumer's messages come back to the next one this soon.
    config.claim_after = Duration::from_millis(300);
    config.max_deliveries = 1_000;
    let consumer = StreamConsumer::connect(&svc, &client, stream, "order", name, config)
        .await
        .map_err(|e| e.to_string())?;
    let inbox = Inbox::new(&svc, "shop_inbox", "order").map_err(|e| e.to_string())?;
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
            let done = consumer
                .handle(message, async {
                    inbox
                        .run(&pool, &id, async |tx| {
                            sqlx::query("INSERT INTO shop_effects (message_id) VALUES ($1)")
                                .bind(&id)
                                .execute(&mut **tx)
                                .await
                        })
                        .await
                })
                .await;
            match done {
                Ok(Ok(_)) => applied += 1,
                Ok(Err(e)) => eprintln!("consume {id}: {e}"),
                Err(e) => eprintln!("ack {id}: {e}"),
            }
        }
        if applied > 0 {
            println!("applied {applied}");
        }
    }
}
