//! A TCC participant (inventory, coupon, points): Try holds, Confirm
//! commits, Cancel releases, each phase one transaction of the
//! participant's ledger with the fence's row in it
//! ([`paytrace_demo::ledger`]). With `--redis`, inventory keeps its stock in
//! Redis instead, each phase's stock change in the Redis fence's script
//! (`RedisResource`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use paytrace::tcc::{BranchError, BranchKey, Phase, RedisEffect, RedisResource, SqlFence};
use paytrace_demo::ledger::{Hold, Ledger, LedgerError};
use paytrace_demo::stock::StockStore;
use rand::RngExt;
use tracing::Instrument;

use crate::chaos::{Chaos, Fault};
use crate::wire::TccCall;

/// Where a participant keeps its business state and its fence.
#[derive(Clone)]
pub enum Store {
    /// A ledger in SQLite or PostgreSQL, the fence's row in each phase's
    /// transaction.
    Sql {
        /// The ledger's pool.
        ledger: Ledger,
        /// The fence on the ledger's database.
        fence: SqlFence,
    },
    /// Inventory's stock in Redis, each phase's change in the Redis
    /// fence's script.
    Redis {
        /// The stock.
        stock: Arc<StockStore>,
        /// The fence, which runs the effects.
        fence: RedisResource,
        /// Try's effect, and phase two's.
        reserve: RedisEffect,
        /// Phase two's effect.
        settle: RedisEffect,
    },
}

#[derive(Clone)]
struct Participant {
    resource: &'static str,
    stages: [&'static str; 3],
    store: Store,
    /// Checked per call: `--chaos-after` starts the faults late.
    chaos: Arc<Chaos>,
    /// Phases go through the fence (`--without-fence` turns it off).
    fenced: bool,
}

/// What the stock's effect answers when too little is left
/// ([`paytrace_demo::stock::RESERVE_EFFECT`]).
const NO_STOCK: &str = "no stock";

impl Participant {
    /// How long a phase's queries take: the time it holds its connection.
    fn think(&self) -> Duration {
        let base = match (self.resource, self.chaos.has(Fault::PoolExhausted)) {
            ("inventory", true) => Duration::from_millis(40),
            ("inventory", false) => Duration::from_millis(6),
            _ => Duration::from_millis(3),
        };
        base.mul_f64(rand::rng().random_range(0.5..1.5))
    }

    /// What a Try of `call` holds here.
    fn hold(&self, call: &TccCall) -> Hold {
        match self.resource {
            "inventory" => Hold {
                sku: Some(call.sku),
                amount: 1,
            },
            // One point per currency unit.
            "points" => Hold {
                sku: None,
                amount: i64::try_from(call.amount_cents / 100).unwrap_or(i64::MAX),
            },
            _ => Hold {
                sku: None,
                amount: 1,
            },
        }
    }

    /// The phase on the ledger, through its fence unless turned off.
    async fn on_ledger(
        &self,
        ledger: &Ledger,
        fence: &SqlFence,
        phase: Phase,
        key: &BranchKey,
        call: &TccCall,
    ) -> Result<(), BranchError<LedgerError>> {
        let (hold, think) = (self.hold(call), self.think());
        if self.fenced {
            ledger
                .fenced(fence, phase, key, hold, think)
                .await
                .map(drop)
        } else {
            // No fence: every phase runs, whatever came before it.
            ledger
                .unfenced(phase, key, hold, think)
                .await
                .map(drop)
                .map_err(BranchError::Handler)
        }
    }

    /// The phase on Redis stock: its change in the Redis fence's script,
    /// or alone when the fence is turned off.
    async fn on_redis(
        &self,
        store: &Store,
        phase: Phase,
        key: &BranchKey,
        call: &TccCall,
    ) -> Result<(), BranchError<String>> {
        let Store::Redis {
            stock,
            fence,
            reserve,
            settle,
        } = store
        else {
            return Ok(());
        };
        tokio::time::sleep(self.think()).await;
        if !self.fenced {
            let changed = match phase {
                Phase::Try => stock.reserve(call.sku, &call.xid, 1).await,
                Phase::Confirm => stock.commit(call.sku, &call.xid).await.map(|_| true),
                Phase::Cancel => stock.release(call.sku, &call.xid).await.map(|_| true),
            };
            return match changed {
                Ok(true) => Ok(()),
                Ok(false) => Err(BranchError::Handler(NO_STOCK.to_owned())),
                Err(e) => Err(BranchError::Handler(e.to_string())),
            };
        }
        let Some([available, reserved, sold]) = stock.redis_keys(call.sku) else {
            return Ok(());
        };
        let (effect, keys) = match phase {
            Phase::Try => (reserve, [&available, &reserved, &sold]),
            Phase::Confirm => (settle, [&available, &reserved, &sold]),
            Phase::Cancel => (settle, [&available, &reserved, &available]),
        };
        let keys = keys.map(String::as_str);
        let initial = stock.initial().to_string();
        fence
            .run(phase, key, effect, &keys, &[&call.xid, "1", &initial])
            .await
            .map(drop)
    }

    /// Holds one of the ledger's connections until dropped (Redis: none).
    async fn hold_connection(&self) -> Option<paytrace_demo::ledger::HeldConnection> {
        match &self.store {
            Store::Sql { ledger, .. } => ledger.hold_connection().await.ok(),
            Store::Redis { .. } => None,
        }
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
        let stage = match &self.store {
            Store::Sql { fence, .. } => fence.stage(stage, phase, &key),
            Store::Redis { fence, .. } => fence.stage(stage, phase, &key),
        };
        let mut guard = stage.start();
        let span = guard.span().clone();
        // Refused (by the fence, or for want of stock), or failed.
        let result: Result<(), Option<String>> = match &self.store {
            Store::Sql { ledger, fence } => {
                match self
                    .on_ledger(ledger, fence, phase, &key, call)
                    .instrument(span)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(
                        BranchError::Rejected(_) | BranchError::Handler(LedgerError::Insufficient),
                    ) => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                }
            }
            store @ Store::Redis { .. } => {
                match self
                    .on_redis(store, phase, &key, call)
                    .instrument(span)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(BranchError::Rejected(_)) => Err(None),
                    Err(BranchError::Handler(reason)) if reason == NO_STOCK => Err(None),
                    Err(e) => Err(Some(e.to_string())),
                }
            }
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
            let _conn = self.hold_connection().await;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        match result {
            Ok(()) => StatusCode::OK,
            Err(None) => {
                guard.set_outcome(paytrace::Outcome::Rejected);
                StatusCode::CONFLICT
            }
            Err(Some(error)) => {
                tracing::warn!(%error, resource = self.resource, "TCC phase failed");
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

/// The participant `resource` (`inventory`, `coupon`, `points`) on
/// `store`: its HTTP routes, and its gRPC service (the same phases, the
/// same fence).
pub fn participant(
    resource: &'static str,
    chaos: &Arc<Chaos>,
    store: Store,
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
    if let (Store::Sql { ledger, .. }, Some(from), false) =
        (&store, chaos.from(), chaos.has(Fault::PoolExhausted))
        && resource == "inventory"
        && chaos.planned(Fault::PoolExhausted)
    {
        // Exhausted later (`--chaos-after`): seven of the eight connections
        // leak at that moment, and stay taken.
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let wait = from
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let mut leaked = Vec::new();
            while leaked.len() < 7 {
                if let Ok(conn) = ledger.hold_connection().await {
                    leaked.push(conn);
                }
            }
            std::future::pending::<()>().await;
            drop(leaked);
        });
    }
    let p = Participant {
        resource,
        stages,
        store,
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
