//! The load generator: checkouts at a steady rate, payment methods mixed by weight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use serde::Serialize;
use tokio::sync::watch;

use crate::wire::{CheckoutRequest, CheckoutResponse, RefundRequest};

/// Request counters.
#[derive(Debug, Default)]
pub struct Counters {
    checkouts: AtomicU64,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of [`Counters`], as the report writes it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Requests {
    /// Checkouts started.
    pub checkouts: u64,
    /// Requests sent: checkouts and refunds.
    pub sent: u64,
    /// Answered with a success.
    pub ok: u64,
    /// Answered with an error, or not at all.
    pub failed: u64,
}

impl Counters {
    /// The current counts.
    pub fn snapshot(&self) -> Requests {
        Requests {
            checkouts: self.checkouts.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The share of successful checkouts that are refunded.
const REFUND_SHARE: f64 = 0.1;

/// Payment methods and their weights.
const MIX: [(&str, u32); 3] = [("alipay", 50), ("wechat_pay", 35), ("card", 15)];

fn pick_method() -> &'static str {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut n = rand::rng().random_range(0..total);
    for (method, weight) in MIX {
        if n < weight {
            return method;
        }
        n -= weight;
    }
    MIX[0].0
}

/// Sends `rps` checkouts a second to `gateway` until `stop` turns true.
pub async fn drive(
    gateway: String,
    rps: f64,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = format!("{gateway}/checkout");
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let (client, url, counters) = (client.clone(), url.clone(), counters.clone());
        counters.checkouts.fetch_add(1, Ordering::Relaxed);
        counters.sent.fetch_add(1, Ordering::Relaxed);
        in_flight.spawn(async move {
            let method = pick_method();
            let body = CheckoutRequest {
                payment_method: method.to_owned(),
            };
            // The storefront mints the order id (its idempotency key) and
            // sends it as W3C baggage: the flow id is known from the flow's
            // first span, so every trace of the flow samples alike.
            let order_id = format!("ord_{:016x}", rand::rng().random::<u64>());
            let baggage = format!(
                "{}={},{}={order_id}",
                paytrace_semconv::attr::FLOW,
                paytrace_semconv::flow::CHECKOUT,
                paytrace_semconv::attr::FLOW_ID
            );
            let sent = client
                .post(&url)
                .header("baggage", baggage)
                .json(&body)
                .send();
            let order = match sent.await {
                Ok(r) if r.status().is_success() => {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                    r.json::<CheckoutResponse>().await.ok()
                }
                _ => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            // A share of paid orders is refunded a little later.
            if let Some(order) = order
                && rand::rng().random_bool(REFUND_SHARE)
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let refund = RefundRequest {
                    order_id: order.order_id,
                    payment_method: method.to_owned(),
                };
                let refund_url = url.replace("/checkout", "/refund");
                counters.sent.fetch_add(1, Ordering::Relaxed);
                match client.post(&refund_url).json(&refund).send().await {
                    Ok(r) if r.status().is_success() => counters.ok.fetch_add(1, Ordering::Relaxed),
                    _ => counters.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}
