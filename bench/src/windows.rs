//! An hour of rolling windows for the aggregator benchmarks: the demo's
//! checkout in six payment method/channel groups, decoded as the receivers
//! decode it.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Decoded, Interner, SpanLimits, decode_protobuf};
use paytrace_aggregator::pipeline::{Now, Pipeline, Protocol};
use prost::Message;

use crate::otlp::checkout_request;

/// The (payment method, payment channel) groups the flows are spread over.
pub const PAYMENT_GROUPS: [(&str, &str); 6] = [
    ("alipay", "alipay"),
    ("wechat_pay", "wechat_pay"),
    ("card", "stripe"),
    ("card", "adyen"),
    ("points", "internal"),
    ("wallet", "internal"),
];

/// Checkouts a minute per group.
const PER_GROUP: u64 = 333;

/// The spans of checkout traces `first..first + traces`, decoded from
/// protobuf bytes as a receiver decodes them.
///
/// ```
/// let decoded = paytrace_bench::windows::decoded_checkouts(0, 2);
/// assert_eq!(decoded.spans.len(), 20);
/// ```
pub fn decoded_checkouts(first: u64, traces: u64) -> Decoded {
    let body = checkout_request(first, traces).encode_to_vec();
    decode_protobuf(
        &body,
        &SpanLimits::default(),
        &StageRules::default(),
        &mut Interner::default(),
    )
    .unwrap_or_else(|_| {
        eprintln!("error: a generated request does not decode");
        std::process::exit(1);
    })
}

/// Fills `pipelines`, taking turns, with the hour of flows ending at
/// `last_minute` (since the epoch): each minute, 333 checkouts of each
/// payment group, finished in that minute.
pub fn fill_hour(pipelines: &[&Pipeline], last_minute: u64) {
    let now = Instant::now();
    let mut trace = 0u64;
    let mut turn = 0usize;
    for minute in last_minute - 59..=last_minute {
        for (method, channel) in PAYMENT_GROUPS {
            let mut batch = decoded_checkouts(trace, PER_GROUP);
            trace += 1_000;
            for span in &mut batch.spans {
                if span.business.flow.is_some() {
                    span.business.payment_method = Some(Arc::from(method));
                    span.business.payment_channel = Some(Arc::from(channel));
                }
            }
            pipelines[turn % pipelines.len()].ingest(Protocol::Grpc, batch, now);
            turn += 1;
        }
        let wall = UNIX_EPOCH + Duration::from_secs(minute * 60);
        for p in pipelines {
            p.flush(Now::at(now, wall));
        }
    }
}
