//! The gateway: `POST /checkout` starts the flow (order id, payment method
//! and channel in baggage) and asks the order service to create the order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use paytrace::{Client, Flow, ServiceTelemetry};
use paytrace_semconv::{flow, payment};
use rand::RngExt;

use crate::plan::{Plan, Role};
use crate::wire::{CheckoutRequest, CheckoutResponse, CreateOrder, RefundRequest};

#[derive(Clone)]
struct Gateway {
    http: Client,
    plan: Plan,
}

/// The channel a payment method goes through.
pub fn channel_for(method: &str) -> Option<&'static str> {
    match method {
        payment::ALIPAY => Some(payment::ALIPAY),
        payment::WECHAT_PAY => Some(payment::CHANNEL_WXPAY),
        payment::CARD => Some(payment::CHANNEL_STRIPE),
        _ => None,
    }
}

/// Whether a client's order id is one the shop takes: `ord_` and up to 64
/// letters, digits, `_` or `-`.
fn is_order_id(id: &str) -> bool {
    id.strip_prefix("ord_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

async fn checkout(
    State(g): State<Gateway>,
    Json(req): Json<CheckoutRequest>,
) -> Result<Json<CheckoutResponse>, (StatusCode, String)> {
    let channel = channel_for(&req.payment_method).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "unknown payment method {:?}: alipay, wechat_pay or card",
                req.payment_method
            ),
        )
    })?;
    // The order id the storefront minted (its baggage's flow id), or a new one.
    let order_id = Flow::current()
        .flow_id
        .filter(|id| is_order_id(id))
        .unwrap_or_else(|| format!("ord_{:016x}", rand::rng().random::<u64>()));
    let body = CreateOrder {
        order_id: order_id.clone(),
        payment_method: req.payment_method.clone(),
        payment_channel: channel.to_owned(),
        amount_cents: 4_990,
        sku: 1,
    };
    let url = format!("{}/orders", g.plan.url(Role::Order));
    let response = Flow::new(flow::CHECKOUT)
        .id(order_id.clone())
        .payment_method(req.payment_method)
        .payment_channel(channel)
        .scope(g.http.post(&url).json(&body).send())
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("order service: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(Json(CheckoutResponse {
            order_id,
            status: text,
        }))
    } else {
        Err((
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            text,
        ))
    }
}

async fn refund(
    State(g): State<Gateway>,
    Json(req): Json<RefundRequest>,
) -> Result<&'static str, (StatusCode, String)> {
    let channel = channel_for(&req.payment_method).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("unknown payment method {:?}", req.payment_method),
        )
    })?;
    let url = format!("{}/refunds", g.plan.url(Role::Payment));
    // A refund is its own flow instance: its key is not the order's, or the
    // aggregator would stitch it into the checkout.
    let response = Flow::new(flow::REFUND)
        .id(format!("refund:{}", req.order_id))
        .payment_method(req.payment_method.clone())
        .payment_channel(channel)
        .scope(g.http.post(&url).json(&req).send())
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("payment service: {e}")))?;
    if response.status().is_success() {
        Ok("refunded")
    } else {
        Err((StatusCode::BAD_GATEWAY, "the refund failed".to_owned()))
    }
}

/// The gateway's routes.
pub fn router(svc: &ServiceTelemetry, plan: Plan) -> Router {
    Router::new()
        .route("/checkout", post(checkout))
        .route("/refund", post(refund))
        .with_state(Gateway {
            http: svc.client(reqwest::Client::new()),
            plan,
        })
}
