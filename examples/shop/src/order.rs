//! The order service: creates the order and coordinates TCC. Try runs on
//! inventory, coupon, points and payment in parallel; any failure cancels
//! every branch. Confirm runs when the payment is confirmed. Phase two is
//! retried as a TCC coordinator must (Seata's and DTM's retry it until it
//! takes): an attempt that timed out, failed or found the branch busy is
//! tried again with backoff, for up to [`SECOND_PHASE_BUDGET`]; one the
//! participant refused is not (the branch went the other way).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use paytrace::tcc::Phase;
use paytrace::{Client, ServiceTelemetry};
use paytrace_semconv::stage;
use tracing::Instrument;

use crate::chaos::{Chaos, Fault};
use crate::participant::proto::BranchCall;
use crate::participant::proto::tcc_participant_client::TccParticipantClient;
use tonic::transport::{Channel, Endpoint};

use crate::plan::{Plan, Role};
use crate::wire::{CreateOrder, TccCall};

/// Inventory's TCC phases over gRPC, through paytrace's client layer.
type InventoryClient = TccParticipantClient<paytrace::grpc::GrpcClientService<Channel>>;

#[derive(Clone)]
struct Order {
    svc: ServiceTelemetry,
    http: Client,
    inventory: InventoryClient,
    plan: Plan,
    /// Empty rollbacks and late cancels, when in force (checked per order:
    /// `--chaos-after` starts them late).
    chaos: Arc<Chaos>,
    /// `paytrace_demo_faults_injected_total{fault}`: what the chaos did, to
    /// compare with what the fences and the aggregator found.
    injected: prometheus::IntCounterVec,
    /// Orders already cancelled late: a duplicated payment callback runs
    /// `paid` twice, and two late cancels racing each other and a second
    /// Confirm would be ordered one way by the fence and another by the
    /// spans' clocks. One late cancel per order keeps the anomaly
    /// countable alike by both.
    cancelled_late: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Orders created and orders paid so far: the chaos hits every tenth
    /// of each, from the first, so that a short run of a few dozen orders
    /// injects its faults for certain (a tenth drawn at random injected
    /// none in about one run of a hundred).
    created: Arc<std::sync::atomic::AtomicU64>,
    paid: Arc<std::sync::atomic::AtomicU64>,
}

/// Whether this is one of every ten calls of `counter`, from the first.
fn one_in_ten(counter: &std::sync::atomic::AtomicU64) -> bool {
    counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(10)
}

/// How long the coordinator keeps retrying a branch's Confirm or Cancel
/// before it gives up and leaves the branch frozen (the aggregator's
/// `frozen` names it). A real coordinator never gives up; the demo's run
/// ends. Long enough that a machine stalled for seconds delays phase two
/// rather than abandoning it.
pub const SECOND_PHASE_BUDGET: Duration = Duration::from_secs(20);

/// The longest pause between two attempts of phase two.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How a participant answered one attempt of a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Done (or already done: the fence skipped a repeat).
    Done,
    /// Refused for good: no stock, or the fence rejected the phase.
    Refused,
    /// Failed, timed out, or busy: worth another attempt.
    Failed,
}

const PARTICIPANTS: [Role; 4] = [Role::Inventory, Role::Coupon, Role::Points, Role::Payment];
const SECOND_PHASE: [Role; 3] = [Role::Inventory, Role::Coupon, Role::Points];

fn call(order_id: &str, role: Role, channel: &str) -> TccCall {
    TccCall {
        xid: order_id.to_owned(),
        branch_id: format!("{order_id}-{role}"),
        order_id: order_id.to_owned(),
        amount_cents: 4_990,
        sku: 1,
        payment_channel: channel.to_owned(),
    }
}

impl Order {
    async fn phase(&self, role: Role, phase: &str, body: &TccCall, timeout: Duration) -> Answer {
        if role == Role::Inventory {
            return self.inventory_phase(phase, body, timeout).await;
        }
        let url = format!("{}/tcc/{phase}", self.plan.url(role));
        let request = self.http.inner().post(&url).json(body).timeout(timeout);
        match self.http.send(request).await {
            Ok(r) if r.status().is_success() => Answer::Done,
            Ok(r) if r.status() == StatusCode::CONFLICT => Answer::Refused,
            _ => Answer::Failed,
        }
    }

    /// A phase of inventory's branch, over gRPC with `timeout` as its deadline.
    async fn inventory_phase(&self, phase: &str, body: &TccCall, timeout: Duration) -> Answer {
        let mut request = tonic::Request::new(BranchCall {
            xid: body.xid.clone(),
            branch_id: body.branch_id.clone(),
            order_id: body.order_id.clone(),
            amount_cents: body.amount_cents,
            sku: body.sku,
        });
        request.set_timeout(timeout);
        let mut client = self.inventory.clone();
        let answer = match phase {
            "try" => client.r#try(request).await,
            "confirm" => client.confirm(request).await,
            _ => client.cancel(request).await,
        };
        match answer {
            Ok(_) => Answer::Done,
            Err(status) if status.code() == tonic::Code::Aborted => Answer::Refused,
            Err(_) => Answer::Failed,
        }
    }

    /// Runs phase two as the stage `order.confirm` or `order.cancel`, whose
    /// span carries the global decision for the aggregator to check every
    /// branch against.
    async fn decide<T>(&self, xid: &str, decision: Phase, fan_out: impl Future<Output = T>) -> T {
        let stage = match decision {
            Phase::Cancel => stage::ORDER_CANCEL,
            _ => stage::ORDER_CONFIRM,
        };
        let guard = self.svc.stage(stage).tcc_decision(xid, decision).start();
        fan_out.instrument(guard.span().clone()).await
    }

    /// A second-phase call, each attempt with a 1 s deadline, retried
    /// with backoff (50 ms doubling, at most [`MAX_BACKOFF`]) until it is
    /// done, refused, or [`SECOND_PHASE_BUDGET`] has passed.
    async fn second_phase(&self, role: Role, phase: Phase, body: &TccCall) -> bool {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            if attempts > 0 {
                self.svc.count_tcc_retry(role.name(), phase);
            }
            attempts += 1;
            match self
                .phase(role, phase.as_str(), body, Duration::from_secs(1))
                .await
            {
                Answer::Done => return true,
                Answer::Refused => return false,
                Answer::Failed if started.elapsed() + backoff >= SECOND_PHASE_BUDGET => {
                    tracing::warn!(
                        resource = role.name(),
                        phase = phase.as_str(),
                        attempts,
                        "gave up on phase two: the branch stays frozen"
                    );
                    return false;
                }
                Answer::Failed => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn create(
    State(o): State<Order>,
    Json(req): Json<CreateOrder>,
) -> (StatusCode, &'static str) {
    let created = o
        .svc
        .stage("order.create")
        .attribute("order.id", &req.order_id)
        .run(async {
            tokio::time::sleep(Duration::from_millis(4)).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    if created.is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failed");
    }
    if o.chaos.has(Fault::EmptyRollback) && one_in_ten(&o.created) {
        o.injected.with_label_values(&["empty_rollback"]).inc();
        // The coordinator gave up on inventory's Try before it arrived and
        // cancelled it: the Cancel overtakes the Try.
        let body = call(&req.order_id, Role::Inventory, &req.payment_channel);
        let _ = o
            .phase(Role::Inventory, "cancel", &body, Duration::from_secs(1))
            .await;
    }
    let tries = PARTICIPANTS.map(|role| {
        let body = call(&req.order_id, role, &req.payment_channel);
        let o = o.clone();
        async move { o.phase(role, "try", &body, Duration::from_secs(6)).await == Answer::Done }
    });
    let [a, b, c, d] = tries;
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    if a && b && c && d {
        return (StatusCode::OK, "pending_payment");
    }
    let cancels = PARTICIPANTS.map(|role| {
        let body = call(&req.order_id, role, &req.payment_channel);
        let o = o.clone();
        async move { o.second_phase(role, Phase::Cancel, &body).await }
    });
    let [a, b, c, d] = cancels;
    let _ = o
        .decide(&req.order_id, Phase::Cancel, async {
            tokio::join!(a, b, c, d);
        })
        .await;
    (StatusCode::CONFLICT, "cancelled")
}

async fn paid(State(o): State<Order>, Path(order_id): Path<String>) -> StatusCode {
    if confirm_paid(&o, &order_id).await {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// Phase two of a paid order: Confirm on every branch (and, under the
/// `cancel-after-confirm` chaos, a late Cancel). Whether every Confirm
/// succeeded.
async fn confirm_paid(o: &Order, order_id: &str) -> bool {
    let confirms = SECOND_PHASE.map(|role| {
        let body = call(order_id, role, "");
        let o = o.clone();
        async move { o.second_phase(role, Phase::Confirm, &body).await }
    });
    let [a, b, c] = confirms;
    let (a, b, c) = o
        .decide(order_id, Phase::Confirm, async { tokio::join!(a, b, c) })
        .await;
    if o.chaos.has(Fault::CancelAfterConfirm)
        && one_in_ten(&o.paid)
        && o.cancelled_late
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(order_id.to_owned())
    {
        // A recovery job that missed the Confirm cancels the branch late.
        o.injected
            .with_label_values(&["cancel_after_confirm"])
            .inc();
        let body = call(order_id, Role::Inventory, "");
        let _ = o
            .phase(Role::Inventory, "cancel", &body, Duration::from_secs(1))
            .await;
    }
    a && b && c
}

/// `paytrace_demo_faults_injected_total{fault}` in the service's registry
/// (a family of the demo, not of paytrace).
fn injected_counter(svc: &ServiceTelemetry) -> prometheus::IntCounterVec {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "paytrace_demo_faults_injected_total",
            "TCC faults the demo's chaos injected, by the anomaly each should cause.",
        ),
        &["fault"],
    )
    .expect("a valid family");
    for fault in ["empty_rollback", "cancel_after_confirm"] {
        counter.with_label_values(&[fault]);
    }
    if let Err(e) = svc.metrics().registry().register(Box::new(counter.clone())) {
        tracing::warn!(error = %e, "cannot register the injected-faults counter");
    }
    counter
}

/// A lazily connected, traced gRPC client of inventory.
fn inventory_client(svc: &ServiceTelemetry, plan: Plan) -> InventoryClient {
    let addr = plan.grpc_addr(Role::Inventory);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("an IP address and port make a valid URI")
        .connect_lazy();
    TccParticipantClient::new(tower::Layer::layer(
        &svc.grpc_client_layer(&addr.to_string()),
        channel,
    ))
}

/// Phase two of a paid order, for a consumer of the payment's
/// notifications (`--broker`); whether it finished.
pub type Paid =
    Box<dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The order service's routes, and phase two of a paid order for the
/// notifications' consumer.
pub fn router(svc: &ServiceTelemetry, plan: Plan, chaos: &Arc<Chaos>) -> (Router, Paid) {
    let order = Order {
        svc: svc.clone(),
        http: svc.client(reqwest::Client::new()),
        inventory: inventory_client(svc, plan),
        plan,
        chaos: chaos.clone(),
        injected: injected_counter(svc),
        cancelled_late: Default::default(),
        created: Default::default(),
        paid: Default::default(),
    };
    let consumer = order.clone();
    let paid_by_message: Paid = Box::new(move |order_id| {
        let o = consumer.clone();
        Box::pin(async move { confirm_paid(&o, &order_id).await })
    });
    let routes = Router::new()
        .route("/orders", post(create))
        .route("/orders/{id}/paid", post(paid))
        .with_state(order);
    (routes, paid_by_message)
}
