//! Mock third-party payment channels: heavy-tailed latency, errors, and an
//! asynchronous callback that comes late, twice, or (under chaos) never.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use rand::RngExt;
use rand_distr::{Distribution, LogNormal};

use crate::chaos::Chaos;
use crate::plan::Role;
use crate::settle::InHand;
use crate::wire::{ChannelCallback, PayRequest};

/// How one channel behaves.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Median answer time, ms.
    pub median_ms: f64,
    /// Log-normal sigma of the answer time (the tail).
    pub sigma: f64,
    /// Share of requests answered with an error.
    pub error_rate: f64,
    /// Median callback delay after the answer, ms.
    pub callback_median_ms: f64,
    /// Share of callbacks sent twice.
    pub duplicate_rate: f64,
    /// Share of callbacks five times later than usual.
    pub late_rate: f64,
}

/// The profile of each mock channel.
pub fn profile(role: Role) -> Profile {
    match role {
        Role::Alipay => Profile {
            median_ms: 60.0,
            sigma: 0.5,
            error_rate: 0.01,
            callback_median_ms: 250.0,
            duplicate_rate: 0.02,
            late_rate: 0.02,
        },
        Role::WechatPay => Profile {
            median_ms: 45.0,
            sigma: 0.6,
            error_rate: 0.02,
            callback_median_ms: 350.0,
            duplicate_rate: 0.03,
            late_rate: 0.03,
        },
        _ => Profile {
            median_ms: 120.0,
            sigma: 0.4,
            error_rate: 0.03,
            callback_median_ms: 150.0,
            duplicate_rate: 0.01,
            late_rate: 0.01,
        },
    }
}

/// The payment channel (the `payment.channel` value) a mock plays.
pub fn channel_name(role: Role) -> &'static str {
    match role {
        Role::Alipay => paytrace_semconv::payment::ALIPAY,
        Role::WechatPay => paytrace_semconv::payment::CHANNEL_WXPAY,
        _ => paytrace_semconv::payment::CHANNEL_STRIPE,
    }
}

#[derive(Clone)]
struct Mock {
    role: Role,
    profile: Profile,
    chaos: Arc<Chaos>,
    // A plain client: a third party does not propagate our trace context.
    http: reqwest::Client,
    /// Callbacks scheduled and not yet delivered (or given up).
    callbacks: InHand,
}

fn sample_ms(median: f64, sigma: f64) -> Duration {
    let d = LogNormal::new(median.ln(), sigma).map_or(median, |d| d.sample(&mut rand::rng()));
    Duration::from_secs_f64(d.clamp(1.0, 60_000.0) / 1e3)
}

async fn pay(
    State(m): State<Mock>,
    headers: HeaderMap,
    Json(req): Json<PayRequest>,
) -> Result<&'static str, StatusCode> {
    let slow = if m.chaos.channel_slow(m.role) {
        // Tenfold would leave the answer (median 450 ms) about as long as
        // the callback wait (350 ms), so which of them is the larger stage
        // would be a coin toss on a small sample.
        20.0
    } else {
        1.0
    };
    tokio::time::sleep(sample_ms(m.profile.median_ms * slow, m.profile.sigma)).await;
    if m.chaos.channel_down(m.role) || rand::rng().random_bool(m.profile.error_rate) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    if m.chaos.callback_lost(m.role) {
        return Ok("accepted");
    }
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The merchant's passback data (Alipay's `passback_params`, WeChat Pay's
    // `attach`), returned as sent with the notification: the payment service
    // passes its W3C baggage, which names the flow and its id.
    let passback = headers.get("baggage").cloned();
    let method = match m.role {
        Role::Alipay => paytrace_semconv::payment::ALIPAY,
        Role::WechatPay => paytrace_semconv::payment::WECHAT_PAY,
        _ => paytrace_semconv::payment::CARD,
    };
    let callback = ChannelCallback {
        order_id: req.order_id,
        status: "paid".to_owned(),
        channel: channel_name(m.role).to_owned(),
        payment_method: method.to_owned(),
        request_traceparent: traceparent,
    };
    let (late, duplicate) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(m.profile.late_rate),
            rng.random_bool(m.profile.duplicate_rate),
        )
    };
    let mut delay = sample_ms(m.profile.callback_median_ms, 0.4);
    if late {
        delay *= 5;
    }
    let sends = if duplicate { 2 } else { 1 };
    let held = m.callbacks.hold();
    tokio::spawn(async move {
        let _held = held;
        for i in 0..sends {
            tokio::time::sleep(if i == 0 {
                delay
            } else {
                Duration::from_millis(50)
            })
            .await;
            // The channel retries a failed callback twice, as real ones do.
            for _ in 0..3 {
                let mut notify = m.http.post(&req.callback_url).json(&callback);
                if let Some(passback) = &passback {
                    notify = notify.header("baggage", passback.clone());
                }
                let sent = notify.send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok("accepted")
}

async fn refund(State(m): State<Mock>) -> Result<&'static str, StatusCode> {
    tokio::time::sleep(sample_ms(m.profile.median_ms * 1.5, m.profile.sigma)).await;
    if m.chaos.channel_down(m.role) || rand::rng().random_bool(m.profile.error_rate) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok("refunded")
}

/// The mock channel's routes.
pub fn router(svc: &paytrace::ServiceTelemetry, role: Role, chaos: Arc<Chaos>) -> Router {
    Router::new()
        .route("/pay", post(pay))
        .route("/refund", post(refund))
        .with_state(Mock {
            role,
            profile: profile(role),
            chaos,
            http: reqwest::Client::new(),
            callbacks: InHand::register(svc, "callbacks"),
        })
}
