//! The JSON bodies the shop's services exchange.

use serde::{Deserialize, Serialize};

/// `POST /checkout` at the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// `alipay`, `wechat_pay` or `card`.
    pub payment_method: String,
}

/// What the gateway answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckoutResponse {
    /// The order.
    pub order_id: String,
    /// `pending_payment`, or `cancelled` when a Try failed.
    pub status: String,
}

/// `POST /orders` at the order service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateOrder {
    /// The order id, also the TCC global transaction id.
    pub order_id: String,
    /// Payment method.
    pub payment_method: String,
    /// Payment channel.
    pub payment_channel: String,
    /// Amount, in cents.
    pub amount_cents: u64,
    /// The item bought.
    pub sku: u32,
}

/// A TCC phase call to a participant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TccCall {
    /// Global transaction id.
    pub xid: String,
    /// Branch id.
    pub branch_id: String,
    /// The order.
    pub order_id: String,
    /// Amount, in cents.
    pub amount_cents: u64,
    /// The item.
    pub sku: u32,
    /// The channel (payment only).
    pub payment_channel: String,
}

/// `POST /pay` at a mock channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayRequest {
    /// The order.
    pub order_id: String,
    /// Amount, in cents.
    pub amount_cents: u64,
    /// Where the channel posts its callback.
    pub callback_url: String,
}

/// The channel's asynchronous callback to the payment service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelCallback {
    /// The order.
    pub order_id: String,
    /// `paid` or `failed`.
    pub status: String,
    /// The channel.
    pub channel: String,
    /// The payment method.
    pub payment_method: String,
    /// The `traceparent` of the payment request the callback answers, so the
    /// callback's new trace can link to it.
    pub request_traceparent: Option<String>,
}

/// `POST /refund` at the gateway, and `POST /refunds` at payment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The order to refund.
    pub order_id: String,
    /// Its payment method.
    pub payment_method: String,
}
