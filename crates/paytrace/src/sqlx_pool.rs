//! USE metrics of an sqlx connection pool (features `sqlx-postgres`,
//! `sqlx-mysql`, `sqlx-sqlite`): its capacity and connections in use read
//! from the pool at every scrape, and, through [`SqlFence::pool_metrics`]
//! or your own [`ResourceMetrics::observe_wait`], how long acquisitions
//! waited and which timed out.
//!
//! [`SqlFence::pool_metrics`]: crate::tcc::SqlFence::pool_metrics

use crate::ResourceMetrics;

/// Reads one sqlx pool into its resource's gauges at scrape time.
struct PoolSampler<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    metrics: ResourceMetrics,
}

impl<DB: sqlx::Database> crate::metrics::Sampler for PoolSampler<DB> {
    fn sample(&self, _gauges: &crate::metrics::SampledGauges) -> bool {
        if self.pool.is_closed() {
            self.metrics.set_in_use(0);
            return false;
        }
        let max = self.pool.options().get_max_connections();
        self.metrics
            .set_capacity(usize::try_from(max).unwrap_or(usize::MAX));
        let open = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        self.metrics
            .set_in_use(usize::try_from(open.saturating_sub(idle)).unwrap_or(usize::MAX));
        true
    }
}

impl crate::ServiceTelemetry {
    /// USE metrics of the sqlx pool `pool` as resource `resource`
    /// (`paytrace_resource_capacity` its `max_connections`,
    /// `paytrace_resource_in_use` its connections checked out), read at
    /// every scrape until the pool is closed. Returns the resource's
    /// metrics, for the waits and errors of acquisitions: hand them to
    /// [`SqlFence::pool_metrics`](crate::tcc::SqlFence::pool_metrics), or
    /// record your own.
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlx-sqlite")]
    /// # async fn demo() -> Result<(), sqlx::Error> {
    /// let svc = paytrace::ServiceTelemetry::with_metrics("inventory", "1.0.0", &paytrace::Metrics::new());
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let db = svc.sqlx_pool("inventory_db", &pool);
    /// let fence = svc.tcc_sql("inventory").pool_metrics(db);
    /// # drop(fence);
    /// # Ok(()) }
    /// ```
    pub fn sqlx_pool<DB: sqlx::Database>(
        &self,
        resource: &str,
        pool: &sqlx::Pool<DB>,
    ) -> ResourceMetrics {
        let metrics = self.resource(resource);
        let sampler = PoolSampler {
            pool: pool.clone(),
            metrics: metrics.clone(),
        };
        self.families().sampled.add(Box::new(sampler));
        metrics
    }
}
