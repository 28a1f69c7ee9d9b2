//! The outbox and the inbox: what is committed is published (in order, at
//! least once, in the business flow's context), what is rolled back never
//! is, a failed publish is retried, and a message is applied once however
//! often it comes (SQLite, in process). Then the crash test: a relay and a
//! consumer killed with SIGKILL at many moments while orders are written,
//! over PostgreSQL (`apt-get install postgresql`) and Redis Streams
//! (`apt-get install redis-server`) or RabbitMQ (`apt-get install
//! rabbitmq-server`): every committed order's message is applied exactly
//! once, no rolled-back one ever.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paytrace::messaging::amqp::AmqpQueue;
use paytrace::messaging::outbox::{Applied, Inbox, InboxError, Outbox, OutboxError};
use paytrace::{Flow, Metrics, ServiceTelemetry};
use paytrace_testkit::{PostgresServer, Process, RabbitMqServer, RedisServer, sample_value};
use rand::{RngExt, SeedableRng};

/// A SQLite database in a file of its own (an in-memory one would vanish
/// with the connection a dropped call closes), removed when dropped.
struct Sqlite {
    pool: sqlx::SqlitePool,
    path: std::path::PathBuf,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

async fn sqlite() -> Sqlite {
    let path = std::env::temp_dir().join(format!(
        "paytrace-outbox-{}-{}.db",
        std::process::id(),
        paytrace_testkit::free_port()
    ));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("a SQLite file");
    Sqlite { pool, path }
}

fn paid(order: &str) -> Flow {
    Flow {
        flow: Some("checkout".into()),
        flow_id: Some(order.into()),
        payment_method: Some("card".into()),
        payment_channel: Some("stripe".into()),
    }
}

#[tokio::test]
async fn committed_messages_are_published_in_order_in_their_flow_and_applied_once() {
    let db = sqlite().await;
    let pool = db.pool.clone();
    let metrics = Metrics::new();
    let payment = ServiceTelemetry::with_metrics("payment", "1.0.0", &metrics);
    let order = ServiceTelemetry::with_metrics("order", "1.0.0", &metrics);
    let outbox = Outbox::new(&payment, "payment_outbox").expect("a valid name");
    outbox.create_table(&pool).await.expect("created");
    outbox
        .create_table(&pool)
        .await
        .expect("creating twice is harmless");
    sqlx::query("CREATE TABLE payments (id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("business table");

    // Three payments: the second one's transaction rolls back.
    for (i, commit) in [(1, true), (2, false), (3, true)] {
        let id = format!("pay_{i}");
        paid(&format!("ord_{i}"))
            .scope(async {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO payments (id) VALUES (?)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .expect("business write");
                outbox
                    .enqueue(&mut tx, "payment.notifications", &id, id.as_bytes())
                    .await
                    .expect("enqueued");
                if commit {
                    tx.commit().await.expect("commit");
                } else {
                    tx.rollback().await.expect("rollback");
                }
            })
            .await;
    }
    let relay = outbox.relay(pool.clone());
    assert_eq!(relay.observe().await.expect("counted").0, 2);
    let pending =
        r#"paytrace_outbox_pending_messages{outbox="payment_outbox",service_name="payment"}"#;
    assert_eq!(sample_value(&metrics.render(), pending), 2.0);

    // The broker is down for the first attempt: nothing is marked sent.
    let refused = relay
        .publish_batch(|_m| async { Err::<(), _>("connection refused") })
        .await;
    assert!(
        matches!(refused, Err(OutboxError::Publish { ref message_id, .. }) if message_id == "pay_1"),
        "{refused:?}"
    );
    let published = std::sync::Mutex::new(Vec::new());
    let n = relay
        .publish_batch(|m| {
            let published = &published;
            async move {
                // Inside the context stored with the message.
                let flow = Flow::current();
                published.lock().expect("not poisoned").push((
                    m.message_id.clone(),
                    m.payload.clone(),
                    flow,
                ));
                Ok::<_, std::io::Error>(())
            }
        })
        .await
        .expect("published");
    let published = published.into_inner().expect("not poisoned");
    assert_eq!(n, 2);
    assert_eq!(
        published,
        vec![
            ("pay_1".to_owned(), b"pay_1".to_vec(), paid("ord_1")),
            ("pay_3".to_owned(), b"pay_3".to_vec(), paid("ord_3")),
        ],
        "in order, the rolled-back one never, each in its flow"
    );
    let again = relay
        .publish_batch(|m| async move { Err::<(), _>(format!("{} published twice", m.message_id)) })
        .await;
    assert_eq!(again.expect("nothing to publish"), 0);
    assert_eq!(relay.observe().await.expect("counted"), (0, None));
    assert_eq!(sample_value(&metrics.render(), pending), 0.0);

    // The consumer side: each message applied once.
    let inbox = Inbox::new(&order, "order_inbox", "payment-notifications").expect("a valid name");
    inbox.create_table(&pool).await.expect("created");
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("effects table");
    let apply = |id: &'static str| {
        let (inbox, pool) = (inbox.clone(), pool.clone());
        async move {
            inbox
                .run(&pool, id, async |tx| {
                    sqlx::query("INSERT INTO effects (message_id) VALUES (?)")
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                })
                .await
        }
    };
    assert!(matches!(apply("pay_1").await, Ok(Applied::Now(_))));
    assert!(matches!(apply("pay_1").await, Ok(Applied::Before)));
    // A handler that fails commits nothing, the id included.
    let failed = inbox
        .run(&pool, "pay_3", async |_tx| {
            Err::<(), _>("the order is locked")
        })
        .await;
    assert!(matches!(failed, Err(InboxError::Handler(_))));
    // Dropped mid-handler: nothing committed either.
    let hung = inbox.run(&pool, "pay_3", async |_tx| {
        std::future::pending::<Result<(), ()>>().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(50), hung)
            .await
            .is_err()
    );
    assert!(matches!(apply("pay_3").await, Ok(Applied::Now(_))));
    let effects: Vec<(String, i64)> =
        sqlx::query_as("SELECT message_id, COUNT(*) FROM effects GROUP BY message_id ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("effects");
    assert_eq!(effects, vec![("pay_1".into(), 1), ("pay_3".into(), 1)]);
    let duplicates =
        r#"paytrace_inbox_duplicates_total{inbox="payment-notifications",service_name="order"}"#;
    assert_eq!(sample_value(&metrics.render(), duplicates), 1.0);

    // Bad input is refused before any SQL.
    let mut tx = pool.begin().await.expect("begin");
    let long = "x".repeat(129);
    assert!(matches!(
        outbox.enqueue(&mut tx, "d", &long, b"").await,
        Err(OutboxError::Invalid(_))
    ));
    assert!(matches!(
        outbox.enqueue(&mut tx, "", "ok", b"").await,
        Err(OutboxError::Invalid(_))
    ));
}

/// The relay or the consumer process, restarted after each kill, with the
/// progress lines it prints (`published N`, `applied N`).
struct Node {
    _process: Process,
    progress: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Node {
    fn spawn(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut process = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_outbox_node"))
                .args(args)
                .stdout(Stdio::piped()),
            "cargo build -p paytrace-integration",
        );
        let stdout = process.child().stdout.take().expect("piped stdout");
        let (tx, progress) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _process: process,
            progress,
        }
    }

    /// Waits (at most 2 s) for the node to report progress: it is then in
    /// the middle of its work, the next batch begun.
    async fn busy(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.progress.recv())
            .await
            .is_ok_and(|line| line.is_some())
    }
}

/// Orders written while the relay and the consumer (`outbox_node`, over
/// the broker at `broker`, destination `destination`) are killed with
/// SIGKILL and restarted: every committed order's message must be applied
/// exactly once, no rolled-back one ever. Returns the committed orders.
async fn killed_at_random_moments(broker: &str, destination: &str) -> Vec<String> {
    const ORDERS: usize = 400;
    const KILLS: usize = 30;
    let pg = PostgresServer::start().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(pg.url())
        .await
        .expect("connects");
    let svc = ServiceTelemetry::with_metrics("payment", "1.0.0", &Metrics::new());
    let outbox = Outbox::new(&svc, "shop_outbox").expect("a valid name");
    outbox.create_table(&pool).await.expect("outbox");
    Inbox::new(&svc, "shop_inbox", "order")
        .expect("a valid name")
        .create_table(&pool)
        .await
        .expect("inbox");
    for ddl in [
        "CREATE TABLE shop_orders (id TEXT PRIMARY KEY)",
        "CREATE TABLE shop_effects (seq BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL)",
    ] {
        sqlx::query(ddl)
            .execute(&pool)
            .await
            .expect("business tables");
    }
    let relay_args = ["relay", pg.url(), broker, destination];
    let mut relay = Node::spawn(&relay_args);
    let mut consumers = 0;
    let mut next_consumer = || {
        consumers += 1;
        Node::spawn(&[
            "consume",
            pg.url(),
            broker,
            destination,
            &format!("order-{consumers}"),
        ])
    };
    let mut consumer = next_consumer();

    // The writer: every seventh order's transaction rolls back.
    let writer = {
        let (pool, outbox, destination) = (pool.clone(), outbox.clone(), destination.to_owned());
        tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..ORDERS {
                let id = format!("ord_{i:04}");
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO shop_orders (id) VALUES ($1)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .expect("order");
                outbox
                    .enqueue(&mut tx, &destination, &id, id.as_bytes())
                    .await
                    .expect("enqueued");
                if i % 7 == 3 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    committed.push(id);
                }
                // Orders arrive over the kills, not all before them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            committed
        })
    };

    // Kill one side or the other just after it reported progress (so in
    // the middle of its next batch), 0 to 3 ms into it; seeded, so the
    // choices are the same each run.
    let seed = 29;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut busy_kills = 0;
    for _ in 0..KILLS {
        let into = Duration::from_micros(rng.random_range(0..3_000));
        if rng.random_bool(0.5) {
            busy_kills += usize::from(relay.busy().await);
            tokio::time::sleep(into).await;
            drop(relay);
            relay = Node::spawn(&relay_args);
        } else {
            busy_kills += usize::from(consumer.busy().await);
            tokio::time::sleep(into).await;
            drop(consumer);
            consumer = next_consumer();
        }
    }
    let committed = writer.await.expect("the writer finished");

    // The last relay and consumer drain what is left.
    let count = async || -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM shop_effects), \
                    (SELECT COUNT(*) FROM shop_outbox WHERE sent_ms IS NULL)",
        )
        .fetch_one(&pool)
        .await
        .expect("counted")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (effects, unsent) = count().await;
        if effects >= committed.len() as i64 && unsent == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained in 60 s: {effects} effects of {} orders, {unsent} unsent",
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((relay, consumer));

    let effects: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, COUNT(*) FROM shop_effects GROUP BY message_id ORDER BY message_id",
    )
    .fetch_all(&pool)
    .await
    .expect("effects");
    let twice: Vec<_> = effects.iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    let applied: Vec<String> = effects.into_iter().map(|(id, _)| id).collect();
    assert_eq!(applied, committed, "every committed order, and only those");

    eprintln!(
        "{broker}: {KILLS} kills (seed {seed}), {busy_kills} of them mid-work: {} orders \
         committed, {} rolled back",
        committed.len(),
        ORDERS - committed.len()
    );
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_streams_a_relay_and_a_consumer_killed_at_random_moments_apply_every_committed_order_once()
 {
    let redis = RedisServer::start().await;
    let stream = "orders.paid";
    let committed = killed_at_random_moments(redis.url(), stream).await;
    // Messages the relay published more than once (0 is possible).
    let client = paytrace::redis::Client::open(redis.url()).expect("a URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let published: usize = paytrace::redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    eprintln!(
        "{published} messages published for {} orders",
        committed.len()
    );
    assert!(published >= committed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rabbitmq_a_relay_and_a_consumer_killed_at_random_moments_apply_every_committed_order_once()
 {
    let rabbit = RabbitMqServer::start().await;
    let queue = "orders.paid";
    let connection = paytrace::lapin::Connection::connect(
        rabbit.amqp_url(),
        paytrace::lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connects");
    AmqpQueue::new(queue)
        .max_deliveries(1_000)
        .declare(&connection)
        .await
        .expect("declared");
    killed_at_random_moments(rabbit.amqp_url(), queue).await;
}
