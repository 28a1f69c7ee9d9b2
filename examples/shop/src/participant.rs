//! A TCC participant (inventory, coupon, points): Try reserves, Confirm
//! commits, Cancel releases. Inventory reserves through a bounded pool, as a
//! real one would through its database connections.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use paytrace::tcc::{BranchError, BranchKey, BranchOutcome, FenceStore, Phase, TccResource};
use paytrace::{Pool, ServiceTelemetry};
use paytrace_demo::stock::StockStore;
use rand::RngExt;
use tracing::Instrument;

use crate::chaos::{Chaos, Fault};
use crate::wire::TccCall;

#[derive(Clone)]
struct Participant {
    resource: &'static str,
    stages: [&'static str; 3],
    fence: TccResource,
    pool: Option<Pool>,
    stock: Option<Arc<StockStore>>,
    /// Checked per call: `--chaos-after` starts the faults late.
    chaos: Arc<Chaos>,
    /// Phases go through the fence (`--without-fence` turns it off).
    fenced: bool,
}

#[derive(Debug, thiserror::Error)]
enum TccError {
    #[error("the pool had no free connection: {0}")]
    Pool(#[from] paytrace::PoolError),
    #[error("the stock store failed: {0}")]
    Stock(#[from] paytrace_demo::stock::StockError),
    #[error("not enough stock")]
    Insufficient,
}

impl Participant {
    /// How long a phase holds its connection.
    fn hold(&self) -> Duration {
        match (self.resource, self.chaos.has(Fault::PoolExhausted)) {
            ("inventory", true) => Duration::from_millis(40),
            ("inventory", false) => Duration::from_millis(6),
            _ => Duration::from_millis(3),
        }
    }

    /// The business side of a phase: hold a connection, do the work.
    async fn business(&self, phase: Phase, call: &TccCall) -> Result<(), TccError> {
        let _conn = match &self.pool {
            Some(pool) => Some(pool.acquire_timeout(Duration::from_millis(500)).await?),
            None => None,
        };
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(self.hold().mul_f64(jitter)).await;
        match (&self.stock, phase) {
            (Some(stock), Phase::Try) => {
                if !stock.reserve(call.sku, &call.xid, 1).await? {
                    return Err(TccError::Insufficient);
                }
            }
            (Some(stock), Phase::Confirm) => {
                stock.commit(call.sku, &call.xid).await?;
            }
            (Some(stock), Phase::Cancel) => {
                stock.release(call.sku, &call.xid).await?;
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Runs one phase as a stage, through the fence.
    async fn phase(&self, phase: Phase, call: &TccCall) -> StatusCode {
        let stage = match phase {
            Phase::Try => self.stages[0],
            Phase::Confirm => self.stages[1],
            Phase::Cancel => self.stages[2],
        };
        let key = BranchKey {
            xid: call.xid.clone(),
            branch_id: call.branch_id.clone(),
        };
        let mut guard = self.fence.stage(stage, phase, &key).start();
        let result = if self.fenced {
            self.fence
                .run(phase, &key, || self.business(phase, call))
                .instrument(guard.span().clone())
                .await
        } else {
            // No fence: every phase runs, whatever came before it.
            self.business(phase, call)
                .instrument(guard.span().clone())
                .await
                .map(BranchOutcome::Ran)
                .map_err(BranchError::Handler)
        };
        let lost_answer = phase == Phase::Confirm
            && self.resource == "inventory"
            && self.chaos.has(Fault::ConfirmNetworkFailure)
            && rand::rng().random_bool(0.2);
        if lost_answer {
            // The Confirm is done and recorded; the network eats its
            // answer: the coordinator times out at 1 s and retries, and the
            // retry is a duplicate Confirm. The worker answering into the
            // dead connection keeps its database connection meanwhile (with
            // pool-exhausted, the pool then times acquisitions out).
            let _conn = match &self.pool {
                Some(pool) => pool.acquire_timeout(Duration::from_millis(500)).await.ok(),
                None => None,
            };
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        match result {
            Ok(_) => StatusCode::OK,
            Err(BranchError::Rejected(_)) | Err(BranchError::Handler(TccError::Insufficient)) => {
                guard.set_outcome(paytrace::Outcome::Rejected);
                StatusCode::CONFLICT
            }
            Err(e) => {
                tracing::warn!(error = %e, resource = self.resource, "TCC phase failed");
                guard.set_outcome(paytrace::Outcome::Error);
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

async fn tcc(p: Participant, phase: Phase, call: TccCall) -> StatusCode {
    p.phase(phase, &call).await
}

/// The code generated from `proto/shop/v1/tcc.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("shop.v1");
}

impl Participant {
    /// A phase asked for over gRPC: OK, or ABORTED when refused (the
    /// fence, or no stock), UNAVAILABLE when it failed.
    async fn grpc_phase(
        &self,
        phase: Phase,
        request: tonic::Request<proto::BranchCall>,
    ) -> Result<tonic::Response<proto::BranchReply>, tonic::Status> {
        let b = request.into_inner();
        let call = TccCall {
            xid: b.xid,
            branch_id: b.branch_id,
            order_id: b.order_id,
            amount_cents: b.amount_cents,
            sku: b.sku,
            payment_channel: String::new(),
        };
        match self.phase(phase, &call).await {
            StatusCode::OK => Ok(tonic::Response::new(proto::BranchReply {})),
            StatusCode::CONFLICT => Err(tonic::Status::aborted("refused")),
            _ => Err(tonic::Status::unavailable("the phase failed")),
        }
    }
}

#[tonic::async_trait]
impl proto::tcc_participant_server::TccParticipant for Participant {
    async fn r#try(
        &self,
        request: tonic::Request<proto::BranchCall>,
    ) -> Result<tonic::Response<proto::BranchReply>, tonic::Status> {
        self.grpc_phase(Phase::Try, request).await
    }

    async fn confirm(
        &self,
        request: tonic::Request<proto::BranchCall>,
    ) -> Result<tonic::Response<proto::BranchReply>, tonic::Status> {
        self.grpc_phase(Phase::Confirm, request).await
    }

    async fn cancel(
        &self,
        request: tonic::Request<proto::BranchCall>,
    ) -> Result<tonic::Response<proto::BranchReply>, tonic::Status> {
        self.grpc_phase(Phase::Cancel, request).await
    }
}

/// The participant `resource` (`inventory`, `coupon`, `points`): its HTTP
/// routes, and its gRPC service (the same phases, the same fence).
pub fn participant(
    svc: &ServiceTelemetry,
    resource: &'static str,
    chaos: &Arc<Chaos>,
    stock: Option<Arc<StockStore>>,
    fence: Arc<dyn FenceStore>,
    fenced: bool,
) -> (
    Router,
    proto::tcc_participant_server::TccParticipantServer<
        impl proto::tcc_participant_server::TccParticipant,
    >,
) {
    let stages = match resource {
        "inventory" => ["inventory.try", "inventory.confirm", "inventory.cancel"],
        "coupon" => ["coupon.try", "coupon.confirm", "coupon.cancel"],
        _ => ["points.try", "points.confirm", "points.cancel"],
    };
    let exhausted = chaos.has(Fault::PoolExhausted);
    let pool =
        (resource == "inventory").then(|| svc.pool("inventory_db", if exhausted { 1 } else { 8 }));
    if let (Some(pool), Some(from), false) = (&pool, chaos.from(), exhausted)
        && chaos.planned(Fault::PoolExhausted)
    {
        // Exhausted later (`--chaos-after`): seven of the eight connections
        // leak at that moment, and stay taken.
        let pool = pool.clone();
        tokio::spawn(async move {
            let wait = from
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let mut leaked = Vec::new();
            for _ in 0..7 {
                if let Ok(permit) = pool.acquire_timeout(Duration::from_secs(30)).await {
                    leaked.push(permit);
                }
            }
            std::future::pending::<()>().await;
            drop(leaked);
        });
    }
    let p = Participant {
        resource,
        stages,
        fence: svc.tcc(resource, fence),
        pool,
        stock,
        chaos: chaos.clone(),
        fenced,
    };
    let grpc = proto::tcc_participant_server::TccParticipantServer::new(p.clone());
    let (a, b, c) = (p.clone(), p.clone(), p);
    let routes = Router::new()
        .route(
            "/tcc/try",
            post(move |Json(call): Json<TccCall>| tcc(a.clone(), Phase::Try, call)),
        )
        .route(
            "/tcc/confirm",
            post(move |Json(call): Json<TccCall>| tcc(b.clone(), Phase::Confirm, call)),
        )
        .route(
            "/tcc/cancel",
            post(move |Json(call): Json<TccCall>| tcc(c.clone(), Phase::Cancel, call)),
        );
    (routes, grpc)
}
