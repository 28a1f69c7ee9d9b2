//! Synthetic OTLP payloads for the aggregator benchmarks.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
        ..Default::default()
    }
}

/// One request of `traces` checkout traces of 10 spans each, shaped like the
/// demo's: a root, stages, HTTP client and server spans, with the attributes
/// a real SDK sets. Trace ids start at `first_trace`.
pub fn checkout_request(first_trace: u64, traces: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity((traces * 10) as usize);
    let base = 1_764_000_000_000_000_000u64;
    for t in 0..traces {
        let mut trace_id = [0u8; 16];
        trace_id[8..].copy_from_slice(&(first_trace + t + 1).to_be_bytes());
        let names = [
            ("POST /checkout", None, 0u64, 100u64),
            ("order.create", Some(0usize), 5, 95),
            ("POST", Some(1), 10, 40),
            ("POST /inventory/try", Some(2), 12, 38),
            ("inventory.try", Some(3), 13, 37),
            ("POST", Some(1), 41, 90),
            ("POST /payments", Some(5), 42, 89),
            ("payment.create", Some(6), 43, 88),
            ("channel.request", Some(7), 45, 85),
            ("SELECT stock", Some(4), 14, 20),
        ];
        for (i, (name, parent, start, end)) in names.iter().enumerate() {
            let mut attributes = vec![
                kv("http.request.method", "POST"),
                kv("server.address", "127.0.0.1"),
                kv("url.scheme", "http"),
            ];
            if name.contains('.') && !name.contains(' ') {
                attributes.push(kv("paytrace.stage", name));
            }
            if i == 0 {
                attributes.push(kv("paytrace.flow", "checkout"));
                attributes.push(kv("payment.method", "alipay"));
                attributes.push(kv("payment.channel", "alipay"));
            }
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: ((t << 8) + i as u64 + 1).to_be_bytes().to_vec(),
                parent_span_id: parent
                    .map(|p| ((t << 8) + p as u64 + 1).to_be_bytes().to_vec())
                    .unwrap_or_default(),
                name: (*name).to_owned(),
                kind: 2,
                start_time_unix_nano: base + start * 1_000_000,
                end_time_unix_nano: base + end * 1_000_000,
                attributes,
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "gateway")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
