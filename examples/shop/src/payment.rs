//! The payment service: Try creates a payment and requests it from the
//! channel; the channel's callback arrives later in a new trace, linked to
//! the request, and goes through a queue to the consumer that confirms the
//! payment and tells the order service. The payment's branch is a row of
//! its ledger, each phase committed with the fence's row.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::trace::SpanContext;
use paytrace::messaging::outbox::Outbox;
use paytrace::tcc::{BranchError, BranchKey, Phase, SqlFence};
use paytrace::{Client, Flow, QueueSender, ServiceTelemetry};
use paytrace_demo::ledger::{Hold, Ledger, LedgerError, Message};
use paytrace_semconv::{flow, stage, tcc};
use tracing::Instrument;

use crate::broker::{NOTIFICATIONS, Notification};
use crate::chaos::{Chaos, Fault};
use crate::plan::{Plan, Role};
use crate::settle::InHand;
use crate::wire::{ChannelCallback, PayRequest, RefundRequest, TccCall};

/// A confirmed callback waiting for the consumer.
struct Confirmation {
    callback: ChannelCallback,
    producer: SpanContext,
}

#[derive(Clone)]
struct Payment {
    svc: ServiceTelemetry,
    http: Client,
    plan: Plan,
    queue: QueueSender<Confirmation>,
    ledger: Ledger,
    fence: SqlFence,
    seen: Arc<Mutex<HashSet<String>>>,
    cancelled: Arc<Mutex<HashSet<String>>>,
}

fn channel_role(channel: &str) -> Role {
    match channel {
        "alipay" => Role::Alipay,
        "wxpay" => Role::WechatPay,
        _ => Role::Card,
    }
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error("the channel refused the payment: {0}")]
    Channel(#[from] reqwest::Error),
    #[error("the payment's ledger: {0}")]
    Ledger(#[from] BranchError<LedgerError>),
}

/// How long the ledger's queries of a phase take.
const THINK: Duration = Duration::from_millis(3);

/// The payment's row: the amount, in cents.
fn hold(amount_cents: u64) -> Hold {
    Hold {
        sku: None,
        amount: i64::try_from(amount_cents).unwrap_or(i64::MAX),
    }
}

async fn tcc_try(State(p): State<Payment>, Json(call): Json<TccCall>) -> StatusCode {
    let key = branch(&call.xid);
    let created = p
        .fence
        .stage("payment.create", Phase::Try, &key)
        .run(async {
            p.ledger
                .fenced(&p.fence, Phase::Try, &key, hold(call.amount_cents), THINK)
                .await
        })
        .await;
    match created {
        Ok(_) => {}
        // Cancelled before it was tried: the fence refuses the late Try.
        Err(BranchError::Rejected(_)) => return StatusCode::CONFLICT,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE,
    }
    let channel = channel_role(&call.payment_channel);
    let request = PayRequest {
        order_id: call.order_id.clone(),
        amount_cents: call.amount_cents,
        callback_url: format!(
            "{}/callbacks/{}",
            p.plan.url(Role::Payment),
            call.payment_channel
        ),
    };
    let url = format!("{}/pay", p.plan.url(channel));
    let requested = p
        .svc
        .stage("channel.request")
        .run_with_deadline(Duration::from_secs(5), async {
            let response = p
                .http
                .send(p.http.inner().post(&url).json(&request))
                .await?;
            response.error_for_status()?;
            Ok::<_, PayError>(())
        })
        .await;
    match requested {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

/// The payment's TCC branch of global transaction `xid` (one per order).
fn branch(xid: &str) -> BranchKey {
    BranchKey {
        xid: xid.to_owned(),
        branch_id: tcc::RESOURCE_PAYMENT.to_owned(),
    }
}

/// TCC Cancel of a payment: the order was cancelled; a callback that still
/// arrives for it is acknowledged and ignored (the channel refunds it).
async fn tcc_cancel(State(p): State<Payment>, Json(call): Json<TccCall>) -> StatusCode {
    let key = branch(&call.xid);
    let mut stage = p
        .fence
        .stage(stage::PAYMENT_CANCEL, Phase::Cancel, &key)
        .start();
    let cancelled = p
        .ledger
        .fenced(
            &p.fence,
            Phase::Cancel,
            &key,
            hold(call.amount_cents),
            THINK,
        )
        .instrument(stage.span().clone())
        .await;
    match cancelled {
        Ok(_) => {
            p.cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(call.order_id);
            StatusCode::OK
        }
        // Captured already: the fence refuses a Cancel after the Confirm.
        Err(BranchError::Rejected(_)) => {
            stage.set_outcome(paytrace::Outcome::Rejected);
            StatusCode::CONFLICT
        }
        Err(e) => {
            tracing::warn!(error = %e, "the payment's Cancel failed");
            stage.set_outcome(paytrace::Outcome::Error);
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn callback(
    State(p): State<Payment>,
    Path(_channel): Path<String>,
    Json(cb): Json<ChannelCallback>,
) -> StatusCode {
    let cancelled = p
        .cancelled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&cb.order_id);
    let first = !cancelled
        && p.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cb.order_id.clone());
    let flow = Flow::new(flow::CHECKOUT)
        .id(cb.order_id.clone())
        .payment_method(cb.payment_method.clone())
        .payment_channel(cb.channel.clone());
    let queue = p.queue.clone();
    flow.scope(async {
        // The callback request is the stage: its trace's root is named
        // channel.callback, and the wait before it is async:channel.callback.
        // The callback is a new trace: link it to the payment request it answers.
        let mut stage = p
            .svc
            .stage("channel.callback")
            .link_traceparent(cb.request_traceparent.as_deref().unwrap_or_default())
            .start_on_current_span();
        if !first {
            // A duplicate callback, or one for a cancelled order:
            // acknowledged, not processed.
            stage.set_outcome(paytrace::Outcome::Rejected);
            return StatusCode::OK;
        }
        let producer = stage.span_context();
        match queue.send(Confirmation {
            callback: cb,
            producer,
        }) {
            Ok(()) => StatusCode::OK,
            Err(_) => {
                stage.set_outcome(paytrace::Outcome::Error);
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    })
    .await
}

async fn consume(
    (ledger, fence): (Ledger, SqlFence),
    http: Client,
    plan: Plan,
    mut rx: paytrace::QueueReceiver<Confirmation>,
    chaos: Arc<Chaos>,
    outbox: Option<Outbox>,
    in_hand: InHand,
) {
    while let Some(Confirmation {
        callback: cb,
        producer,
    }) = rx.recv().await
    {
        // Out of the queue's depth, not yet in a stage: counted as in hand.
        let _held = in_hand.hold();
        if chaos.has(Fault::QueueBacklog) {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let url = format!("{}/orders/{}/paid", plan.url(Role::Order), cb.order_id);
        let flow = Flow::new(flow::CHECKOUT)
            .id(cb.order_id.clone())
            .payment_method(cb.payment_method.clone())
            .payment_channel(cb.channel.clone());
        // The consumer task has no current span: the stage starts a new
        // trace, linked to the producer.
        let done = flow
            .scope(async {
                // The payment branch's Confirm: money captured (committed
                // with the fence's row), then the order told. xid and order
                // id are one in the shop.
                let key = branch(&cb.order_id);
                fence
                    .stage("payment.confirm", Phase::Confirm, &key)
                    .link(producer)
                    .run(async {
                        match &outbox {
                            // With a broker: the order is told by a message
                            // written with the Confirm, sent by the relay.
                            Some(outbox) => {
                                let id = format!("paid-{}", cb.order_id);
                                let payload = serde_json::to_vec(&Notification {
                                    order_id: cb.order_id.clone(),
                                })
                                .unwrap_or_default();
                                let message = Message {
                                    outbox,
                                    destination: NOTIFICATIONS,
                                    id: &id,
                                    payload: &payload,
                                };
                                ledger
                                    .fenced_with_message(
                                        &fence,
                                        Phase::Confirm,
                                        &key,
                                        (hold(0), THINK),
                                        message,
                                    )
                                    .await?;
                            }
                            None => {
                                ledger
                                    .fenced(&fence, Phase::Confirm, &key, hold(0), THINK)
                                    .await?;
                                let r = http.post(&url).send().await?;
                                r.error_for_status()?;
                            }
                        }
                        Ok::<_, PayError>(())
                    })
                    .await
            })
            .await;
        match done {
            Ok(()) => rx.metrics().processed(),
            Err(_) => rx.metrics().failed(),
        }
    }
}

async fn refund(State(p): State<Payment>, Json(req): Json<RefundRequest>) -> StatusCode {
    let channel = match req.payment_method.as_str() {
        "alipay" => Role::Alipay,
        "wechat_pay" => Role::WechatPay,
        _ => Role::Card,
    };
    let url = format!("{}/refund", p.plan.url(channel));
    let done = p
        .svc
        .stage("payment.refund")
        .run(async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            p.svc
                .stage("channel.refund")
                .run_with_deadline(Duration::from_secs(5), async {
                    let r = p.http.post(&url).json(&req).send().await?;
                    r.error_for_status()?;
                    Ok::<_, PayError>(())
                })
                .await
        })
        .await;
    if done.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// The payment service's routes, its payments kept in `ledger` behind
/// `fence`; starts the callback consumer, which tells the order service
/// through `outbox` (`--broker`) or over HTTP.
pub fn router(
    svc: &ServiceTelemetry,
    plan: Plan,
    chaos: &Arc<Chaos>,
    (ledger, fence): (Ledger, SqlFence),
    outbox: Option<Outbox>,
) -> Router {
    let http = svc.client(reqwest::Client::new());
    let (tx, rx) = paytrace::queue(svc, "payment_callbacks", 10_000);
    tokio::spawn(consume(
        (ledger.clone(), fence.clone()),
        http.clone(),
        plan,
        rx,
        chaos.clone(),
        outbox,
        InHand::register(svc, "confirmations"),
    ));
    Router::new()
        .route("/tcc/try", post(tcc_try))
        .route("/tcc/cancel", post(tcc_cancel))
        .route("/callbacks/{channel}", post(callback))
        .route("/refunds", post(refund))
        .with_state(Payment {
            svc: svc.clone(),
            http,
            plan,
            queue: tx,
            ledger,
            fence,
            seen: Arc::new(Mutex::new(HashSet::new())),
            cancelled: Arc::new(Mutex::new(HashSet::new())),
        })
}
