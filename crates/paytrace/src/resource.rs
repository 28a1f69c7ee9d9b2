//! USE instrumentation: pools, queues and the tokio runtime.
//!
//! Brendan Gregg's USE method asks of every resource: its **utilisation**
//! (`paytrace_resource_in_use / paytrace_resource_capacity`), its
//! **saturation** (`paytrace_resource_wait_seconds`, queue depth and age) and
//! its **errors** (`paytrace_resource_errors_total`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use paytrace_semconv::queue_outcome;
use prometheus::{Gauge, Histogram, IntCounterVec, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_metrics::{RuntimeIntervals, RuntimeMonitor};

use crate::cardinality::OTHER;
use crate::metrics::{SampledGauges, Sampler};
use crate::service::ServiceTelemetry;

/// USE metrics of one resource (a connection pool, a worker pool, a rate limit).
///
/// Made by [`ServiceTelemetry::resource`]. Use it directly when a library does the
/// pooling; [`Pool`] uses it for you.
///
/// ```
/// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
/// let db = svc.resource("inventory_db");
/// db.set_capacity(16);
/// db.set_in_use(3);
/// db.observe_wait(std::time::Duration::from_millis(2));
/// db.error("timeout");
/// assert!(svc.metrics().render().contains(
///     r#"paytrace_resource_in_use{resource="inventory_db",service_name="inventory"} 3"#
/// ));
/// ```
#[derive(Clone, Debug)]
pub struct ResourceMetrics {
    service: ServiceTelemetry,
    in_use: IntGauge,
    capacity: IntGauge,
    wait: Histogram,
    errors: IntCounterVec,
    resource: String,
}

impl ResourceMetrics {
    pub(crate) fn new(service: &ServiceTelemetry, resource: &str) -> Self {
        let f = service.families();
        let resource = f
            .admit(service.name(), |g| &g.resource, resource)
            .unwrap_or(OTHER)
            .to_owned();
        let labels = [service.name(), resource.as_str()];
        Self {
            in_use: f.sampled.resource_in_use.with_label_values(&labels),
            capacity: f.sampled.resource_capacity.with_label_values(&labels),
            wait: f.resource_wait.with_label_values(&labels),
            errors: f.resource_errors.clone(),
            service: service.clone(),
            resource,
        }
    }

    /// Sets the total units.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.set(saturating_i64(capacity));
    }

    /// Sets the units in use.
    pub fn set_in_use(&self, in_use: usize) {
        self.in_use.set(saturating_i64(in_use));
    }

    /// Records how long one acquisition waited.
    pub fn observe_wait(&self, waited: Duration) {
        self.wait.observe(waited.as_secs_f64());
    }

    /// Counts one error of `kind` (`timeout`, `closed`, `connect`, …).
    pub fn error(&self, kind: &str) {
        let kind = self
            .service
            .families()
            .admit(self.service.name(), |g| &g.kind, kind)
            .unwrap_or(OTHER);
        self.errors
            .with_label_values(&[self.service.name(), self.resource.as_str(), kind])
            .inc();
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Why [`Pool::acquire_timeout`] gave no permit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// No unit became free in time; counted as error kind `timeout`.
    #[error("no unit of the pool became free within {0:?}")]
    Timeout(Duration),
    /// The pool was closed; counted as error kind `closed`.
    #[error("the pool is closed")]
    Closed,
}

/// A pool of `capacity` permits with USE metrics: utilisation, wait time,
/// timeouts. Guard a connection pool, a worker pool or a downstream's
/// concurrency limit with it.
///
/// ```
/// # #[tokio::main] async fn main() {
/// use std::time::Duration;
/// use paytrace::PoolError;
///
/// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
/// let pool = svc.pool("inventory_db", 1);
/// let held = pool.acquire().await.unwrap();
/// assert_eq!(
///     pool.acquire_timeout(Duration::from_millis(1)).await.unwrap_err(),
///     PoolError::Timeout(Duration::from_millis(1)),
/// );
/// drop(held);
/// assert!(pool.acquire().await.is_ok());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pool {
    metrics: ResourceMetrics,
    semaphore: Arc<Semaphore>,
}

/// One unit of a [`Pool`]; returned to the pool when dropped.
#[derive(Debug)]
pub struct PoolPermit {
    _permit: OwnedSemaphorePermit,
    in_use: IntGauge,
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        self.in_use.dec();
    }
}

impl Pool {
    pub(crate) fn new(metrics: ResourceMetrics, capacity: usize) -> Self {
        metrics.set_capacity(capacity);
        metrics.set_in_use(0);
        Self {
            metrics,
            semaphore: Arc::new(Semaphore::new(capacity)),
        }
    }

    /// Waits for a unit.
    pub async fn acquire(&self) -> Result<PoolPermit, PoolError> {
        let start = Instant::now();
        let permit = self.semaphore.clone().acquire_owned().await;
        self.granted(start, permit.ok())
    }

    /// Waits at most `timeout` for a unit.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<PoolPermit, PoolError> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, self.semaphore.clone().acquire_owned()).await {
            Ok(permit) => self.granted(start, permit.ok()),
            Err(_) => {
                self.metrics.observe_wait(start.elapsed());
                self.metrics.error("timeout");
                Err(PoolError::Timeout(timeout))
            }
        }
    }

    fn granted(
        &self,
        start: Instant,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<PoolPermit, PoolError> {
        self.metrics.observe_wait(start.elapsed());
        let Some(permit) = permit else {
            self.metrics.error("closed");
            return Err(PoolError::Closed);
        };
        self.metrics.in_use.inc();
        Ok(PoolPermit {
            _permit: permit,
            in_use: self.metrics.in_use.clone(),
        })
    }

    /// Closes the pool: waiters and later acquisitions fail with [`PoolError::Closed`].
    pub fn close(&self) {
        self.semaphore.close();
    }

    /// Units free right now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// Metrics of one queue: depth, age of the oldest message, messages by outcome.
///
/// Made by [`ServiceTelemetry::queue_metrics`] for a queue you run elsewhere (a broker,
/// a table); [`crate::queue`] makes an in-process queue that keeps them for you.
///
/// ```
/// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
/// let q = svc.queue_metrics("callbacks");
/// q.set_depth(4);
/// q.set_oldest_age(std::time::Duration::from_secs(2));
/// q.processed();
/// q.dead_lettered();
/// assert!(svc.metrics().render().contains(
///     r#"paytrace_queue_messages_total{outcome="dead_lettered",queue="callbacks",service_name="payment"} 1"#
/// ));
/// ```
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    depth: IntGauge,
    oldest_age: Gauge,
    processed: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    dead_lettered: prometheus::IntCounter,
}

impl QueueMetrics {
    pub(crate) fn new(service: &ServiceTelemetry, queue: &str) -> Self {
        let f = service.families();
        let queue = f
            .admit(service.name(), |g| &g.queue, queue)
            .unwrap_or(OTHER);
        let labels = [service.name(), queue];
        let outcome = |o: &str| {
            f.queue_messages
                .with_label_values(&[service.name(), queue, o])
        };
        Self {
            depth: f.queue_depth.with_label_values(&labels),
            oldest_age: f.sampled.queue_oldest_age.with_label_values(&labels),
            processed: outcome(queue_outcome::PROCESSED),
            failed: outcome(queue_outcome::FAILED),
            dead_lettered: outcome(queue_outcome::DEAD_LETTERED),
        }
    }

    /// Sets the number of messages waiting.
    pub fn set_depth(&self, depth: usize) {
        self.depth.set(saturating_i64(depth));
    }

    /// Sets the age of the oldest waiting message (zero when empty).
    pub fn set_oldest_age(&self, age: Duration) {
        self.oldest_age.set(age.as_secs_f64());
    }

    /// Counts one message handled.
    pub fn processed(&self) {
        self.processed.inc();
    }

    /// Counts one message whose handling failed (it may be retried).
    pub fn failed(&self) {
        self.failed.inc();
    }

    /// Counts one message given up on.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }
}

/// An in-process FIFO queue of at most `capacity` messages whose depth and
/// oldest-message age are read at every scrape.
///
/// ```
/// # #[tokio::main] async fn main() {
/// let svc = paytrace::ServiceTelemetry::with_metrics("payment", "1.0.0", &paytrace::Metrics::new());
/// let (tx, mut rx) = paytrace::queue::<u32>(&svc, "callbacks", 16);
/// tx.send(7).unwrap();
/// assert!(svc.metrics().render().contains(
///     r#"paytrace_queue_depth{queue="callbacks",service_name="payment"} 1"#
/// ));
/// assert_eq!(rx.recv().await, Some(7));
/// rx.metrics().processed();
/// # }
/// ```
pub fn queue<T>(
    service: &ServiceTelemetry,
    name: &str,
    capacity: usize,
) -> (QueueSender<T>, QueueReceiver<T>) {
    let metrics = QueueMetrics::new(service, name);
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(QueueShared {
        enqueued_at: Mutex::new(VecDeque::new()),
        metrics: metrics.clone(),
    });
    service
        .families()
        .sampled
        .add(Box::new(QueueSampler(Arc::downgrade(&shared))));
    (
        QueueSender {
            tx,
            shared: shared.clone(),
        },
        QueueReceiver { rx, shared },
    )
}

#[derive(Debug)]
struct QueueShared {
    /// Enqueue times, in channel order (pushed under the same lock as the send).
    enqueued_at: Mutex<VecDeque<Instant>>,
    metrics: QueueMetrics,
}

impl QueueShared {
    fn times(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        crate::sync::lock(&self.enqueued_at)
    }
}

/// The sending half of [`queue`]. Cheap to clone.
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: mpsc::Sender<T>,
    shared: Arc<QueueShared>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Why [`QueueSender::send`] did not enqueue; the message is handed back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError<T> {
    /// The queue holds `capacity` messages already.
    #[error("the queue is full")]
    Full(T),
    /// The receiver is gone.
    #[error("the queue is closed")]
    Closed(T),
}

impl<T> QueueSender<T> {
    /// Enqueues `message` without waiting; a full queue hands it back.
    pub fn send(&self, message: T) -> Result<(), QueueError<T>> {
        let mut times = self.shared.times();
        match self.tx.try_send(message) {
            Ok(()) => {
                times.push_back(Instant::now());
                self.shared.metrics.set_depth(times.len());
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(m)) => Err(QueueError::Full(m)),
            Err(mpsc::error::TrySendError::Closed(m)) => Err(QueueError::Closed(m)),
        }
    }
}

/// The receiving half of [`queue`].
#[derive(Debug)]
pub struct QueueReceiver<T> {
    rx: mpsc::Receiver<T>,
    shared: Arc<QueueShared>,
}

impl<T> QueueReceiver<T> {
    /// The next message, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        let message = self.rx.recv().await?;
        let mut times = self.shared.times();
        times.pop_front();
        self.shared.metrics.set_depth(times.len());
        Some(message)
    }

    /// The queue's metrics, to count each message's outcome.
    pub fn metrics(&self) -> &QueueMetrics {
        &self.shared.metrics
    }
}

struct QueueSampler(Weak<QueueShared>);

impl Sampler for QueueSampler {
    fn sample(&self, _: &SampledGauges) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        let times = shared.times();
        shared.metrics.set_depth(times.len());
        let age = times.front().map(Instant::elapsed).unwrap_or_default();
        shared.metrics.set_oldest_age(age);
        true
    }
}

/// Samples a tokio runtime at every scrape (see [`ServiceTelemetry::monitor_runtime`]).
pub(crate) struct RuntimeSampler {
    service: String,
    intervals: Mutex<RuntimeIntervals>,
}

impl RuntimeSampler {
    pub(crate) fn new(service: &str, handle: &tokio::runtime::Handle) -> Self {
        Self {
            service: service.to_owned(),
            intervals: Mutex::new(RuntimeMonitor::new(handle).intervals()),
        }
    }
}

impl Sampler for RuntimeSampler {
    fn sample(&self, gauges: &SampledGauges) -> bool {
        let sample = {
            let mut intervals = crate::sync::lock(&self.intervals);
            intervals.next()
        };
        let Some(m) = sample else {
            return false;
        };
        let labels = [self.service.as_str()];
        let workers = m.workers_count.max(1) as f64;
        let elapsed = m.elapsed.as_secs_f64();
        let busy = if elapsed > 0.0 {
            (m.total_busy_duration.as_secs_f64() / (elapsed * workers)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        gauges
            .runtime_workers
            .with_label_values(&labels)
            .set(saturating_i64(m.workers_count));
        gauges
            .runtime_busy_ratio
            .with_label_values(&labels)
            .set(busy);
        gauges
            .runtime_global_queue_depth
            .with_label_values(&labels)
            .set(saturating_i64(m.global_queue_depth));
        gauges
            .runtime_alive_tasks
            .with_label_values(&labels)
            .set(saturating_i64(m.live_tasks_count));
        true
    }
}
