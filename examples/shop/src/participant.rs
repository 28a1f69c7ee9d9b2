//! A TCC participant (inventory, coupon, points): Try reserves, Confirm
//! commits, Cancel releases. Inventory reserves through a bounded pool, as a
//! real one would through its database connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use paytrace::{Pool, Service};
use paytrace_demo::stock::StockStore;
use paytrace_semconv::attr;
use rand::RngExt;
use tracing::Instrument;

use crate::chaos::{Chaos, Fault};
use crate::wire::TccCall;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Branch {
    Tried,
    Confirmed,
    Cancelled,
}

#[derive(Clone)]
struct Participant {
    svc: Service,
    resource: &'static str,
    stages: [&'static str; 3],
    branches: Arc<Mutex<HashMap<String, Branch>>>,
    pool: Option<Pool>,
    stock: Option<Arc<StockStore>>,
    hold: Duration,
}

#[derive(Debug, thiserror::Error)]
enum TccError {
    #[error("the pool had no free connection: {0}")]
    Pool(#[from] paytrace::PoolError),
    #[error("the stock store failed: {0}")]
    Stock(#[from] paytrace_demo::stock::StockError),
}

impl Participant {
    /// Runs one phase as a stage; `Ok(false)` when the business refused it
    /// (not enough stock).
    async fn phase(
        &self,
        stage: &'static str,
        call: &TccCall,
        to: Branch,
    ) -> Result<bool, TccError> {
        let mut guard = self
            .svc
            .stage(stage)
            .attribute(attr::TCC_XID, &call.xid)
            .attribute(attr::TCC_BRANCH_ID, &call.branch_id)
            .attribute(attr::TCC_RESOURCE, self.resource)
            .attribute(attr::TCC_PHASE, stage.rsplit('.').next().unwrap_or(stage))
            .start();
        let result = async {
            let _conn = match &self.pool {
                Some(pool) => Some(pool.acquire_timeout(Duration::from_millis(500)).await?),
                None => None,
            };
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(self.hold.mul_f64(jitter)).await;
            let accepted = match (&self.stock, to) {
                (Some(stock), Branch::Tried) => stock.reserve(call.sku, &call.xid, 1).await?,
                (Some(stock), Branch::Confirmed) => {
                    stock.commit(call.sku, &call.xid).await?;
                    true
                }
                (Some(stock), Branch::Cancelled) => {
                    stock.release(call.sku, &call.xid).await?;
                    true
                }
                (None, _) => true,
            };
            if accepted {
                self.branches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(call.xid.clone(), to);
            }
            Ok::<_, TccError>(accepted)
        }
        .instrument(guard.span().clone())
        .await;
        match &result {
            Ok(true) => {}
            Ok(false) => guard.set_outcome(paytrace::Outcome::Rejected),
            Err(_) => guard.set_outcome(paytrace::Outcome::Error),
        }
        result
    }
}

async fn tcc(p: Participant, index: usize, to: Branch, call: TccCall) -> StatusCode {
    match p.phase(p.stages[index], &call, to).await {
        Ok(true) => StatusCode::OK,
        Ok(false) => StatusCode::CONFLICT,
        Err(e) => {
            tracing::warn!(error = %e, resource = p.resource, "TCC phase failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The participant's routes for `resource` (`inventory`, `coupon`, `points`).
pub fn router(
    svc: &Service,
    resource: &'static str,
    chaos: &Chaos,
    stock: Option<Arc<StockStore>>,
) -> Router {
    let stages = match resource {
        "inventory" => ["inventory.try", "inventory.confirm", "inventory.cancel"],
        "coupon" => ["coupon.try", "coupon.confirm", "coupon.cancel"],
        _ => ["points.try", "points.confirm", "points.cancel"],
    };
    let exhausted = chaos.has(Fault::PoolExhausted);
    let pool =
        (resource == "inventory").then(|| svc.pool("inventory_db", if exhausted { 1 } else { 8 }));
    let hold = match (resource, exhausted) {
        ("inventory", true) => Duration::from_millis(40),
        ("inventory", false) => Duration::from_millis(6),
        _ => Duration::from_millis(3),
    };
    let p = Participant {
        svc: svc.clone(),
        resource,
        stages,
        branches: Arc::new(Mutex::new(HashMap::new())),
        pool,
        stock,
        hold,
    };
    let (a, b, c) = (p.clone(), p.clone(), p);
    Router::new()
        .route(
            "/tcc/try",
            post(move |Json(call): Json<TccCall>| tcc(a.clone(), 0, Branch::Tried, call)),
        )
        .route(
            "/tcc/confirm",
            post(move |Json(call): Json<TccCall>| tcc(b.clone(), 1, Branch::Confirmed, call)),
        )
        .route(
            "/tcc/cancel",
            post(move |Json(call): Json<TccCall>| tcc(c.clone(), 2, Branch::Cancelled, call)),
        )
}
