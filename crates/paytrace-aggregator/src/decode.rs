//! OTLP trace requests, as any OpenTelemetry SDK sends them, into [`Span`]s.
//!
//! Each span is checked on its own; an invalid one is rejected with a reason
//! (for `partial_success.rejected_spans`) and the rest of the request is kept.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use paytrace_semconv::attr;

use crate::config::StageRules;
use crate::span::{Business, Link, Span, SpanId, TraceId};

/// Limits beyond which a span is rejected as absurd rather than buffered.
#[derive(Clone, Debug)]
pub struct SpanLimits {
    /// Longest span name, in bytes.
    pub max_name_bytes: usize,
    /// Most attributes on one span.
    pub max_attributes: usize,
    /// Most links on one span.
    pub max_links: usize,
    /// Longest value of a paytrace attribute (stage, flow, flow id, method, channel).
    pub max_business_value_bytes: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: 1024,
            max_attributes: 1024,
            max_links: 128,
            max_business_value_bytes: 256,
        }
    }
}

/// The result of decoding one request.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The valid spans.
    pub spans: Vec<Span>,
    /// How many spans were rejected.
    pub rejected: u64,
    /// Why the first rejected span was rejected.
    pub first_error: Option<String>,
}

impl Decoded {
    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.first_error.is_none() {
            self.first_error = Some(reason);
        }
    }
}

/// Shares one allocation among equal strings (service names, stages, flows),
/// up to a bounded number of distinct values.
#[derive(Debug, Default)]
pub struct Interner {
    values: crate::FastSet<Arc<str>>,
}

impl Interner {
    const MAX: usize = 65_536;

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(v) = self.values.get(s) {
            return v.clone();
        }
        let v: Arc<str> = Arc::from(s);
        if self.values.len() < Self::MAX {
            self.values.insert(v.clone());
        }
        v
    }
}

const UNKNOWN_SERVICE: &str = "unknown_service";

fn string_value(value: &Option<AnyValue>) -> Option<&str> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// Decodes `request` into spans, rejecting invalid spans one by one.
///
/// ```
/// use paytrace_aggregator::config::StageRules;
/// use paytrace_aggregator::decode::{Interner, SpanLimits, decode};
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
///
/// let decoded = decode(
///     ExportTraceServiceRequest::default(),
///     &SpanLimits::default(),
///     &StageRules::default(),
///     &mut Interner::default(),
/// );
/// assert!(decoded.spans.is_empty() && decoded.rejected == 0);
/// ```
pub fn decode(
    request: ExportTraceServiceRequest,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
) -> Decoded {
    let mut out = Decoded::default();
    // One allocation for the request's spans, not a doubling per power of two.
    out.spans.reserve(
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum(),
    );
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| string_value(&kv.value))
            .unwrap_or(UNKNOWN_SERVICE);
        let service = interner.intern(service);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                match convert(span, &service, limits, rules, interner) {
                    Ok(span) => out.spans.push(span),
                    Err(reason) => out.reject(reason),
                }
            }
        }
    }
    out
}

fn convert(
    span: opentelemetry_proto::tonic::trace::v1::Span,
    service: &Arc<str>,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
) -> Result<Span, String> {
    let trace_id = TraceId::from_bytes(&span.trace_id).ok_or_else(|| {
        format!(
            "span {:?}: trace_id {}",
            truncate(&span.name),
            id_problem(span.trace_id.len(), 16)
        )
    })?;
    let span_id = SpanId::from_bytes(&span.span_id).ok_or_else(|| {
        format!(
            "span {:?} of trace {trace_id}: span_id {}",
            truncate(&span.name),
            id_problem(span.span_id.len(), 8)
        )
    })?;
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        8 => SpanId::from_bytes(&span.parent_span_id),
        n => {
            return Err(format!(
                "span {span_id} of trace {trace_id}: parent_span_id must be empty or 8 bytes (got {n})"
            ));
        }
    };
    if span.start_time_unix_nano == 0 {
        return Err(format!(
            "span {span_id} of trace {trace_id}: start_time_unix_nano is missing"
        ));
    }
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(format!(
            "span {span_id} of trace {trace_id}: ends before it starts ({} < {})",
            span.end_time_unix_nano, span.start_time_unix_nano
        ));
    }
    if span.name.len() > limits.max_name_bytes {
        return Err(format!(
            "span {span_id} of trace {trace_id}: name of {} bytes exceeds {}",
            span.name.len(),
            limits.max_name_bytes
        ));
    }
    if span.attributes.len() > limits.max_attributes {
        return Err(format!(
            "span {span_id} of trace {trace_id}: {} attributes exceed {}",
            span.attributes.len(),
            limits.max_attributes
        ));
    }
    if span.links.len() > limits.max_links {
        return Err(format!(
            "span {span_id} of trace {trace_id}: {} links exceed {}",
            span.links.len(),
            limits.max_links
        ));
    }
    let mut business = business(&span.attributes, limits, interner).map_err(|key| {
        format!("span {span_id} of trace {trace_id}: attribute {key} is too long")
    })?;
    if business.stage.is_none()
        && let Some((stage, flow)) = rules.stage_for(service, &span.name, &span.attributes)
    {
        business.stage = Some(stage.clone());
        if business.flow.is_none() {
            business.flow = flow.cloned();
        }
    }
    let links = span
        .links
        .iter()
        .filter_map(|l| {
            Some(Link {
                trace_id: TraceId::from_bytes(&l.trace_id)?,
                span_id: SpanId::from_bytes(&l.span_id)?,
            })
        })
        .collect();
    let is_error = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: Arc::from(span.name),
        service: service.clone(),
        start_ns: span.start_time_unix_nano,
        end_ns: span.end_time_unix_nano,
        is_error,
        links,
        business,
    })
}

fn id_problem(len: usize, expected: usize) -> String {
    if len == expected {
        "is all zeros".to_owned()
    } else {
        format!("must be {expected} bytes (got {len})")
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The paytrace attributes of a span; `Err(key)` when one is absurdly long.
fn business<'a>(
    attributes: &'a [KeyValue],
    limits: &SpanLimits,
    interner: &mut Interner,
) -> Result<Business, &'a str> {
    let mut b = Business::default();
    for kv in attributes {
        let key = kv.key.as_str();
        let slot = match key {
            attr::STAGE => &mut b.stage,
            attr::FLOW => &mut b.flow,
            attr::FLOW_ID => &mut b.flow_id,
            attr::PAYMENT_METHOD => &mut b.payment_method,
            attr::PAYMENT_CHANNEL => &mut b.payment_channel,
            attr::OUTCOME => &mut b.outcome,
            _ if key.starts_with("tcc.") => {
                let tcc = b.tcc.get_or_insert_with(Box::default);
                match key {
                    attr::TCC_XID => &mut tcc.xid,
                    attr::TCC_BRANCH_ID => &mut tcc.branch_id,
                    attr::TCC_RESOURCE => &mut tcc.resource,
                    attr::TCC_PHASE => &mut tcc.phase,
                    attr::TCC_DECISION => &mut tcc.decision,
                    _ => continue,
                }
            }
            _ => continue,
        };
        let is_id = matches!(key, attr::FLOW_ID | attr::TCC_XID | attr::TCC_BRANCH_ID);
        let value: std::borrow::Cow<'_, str> =
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.into(),
                // Some SDKs send numeric transaction ids.
                Some(any_value::Value::IntValue(i)) if is_id => i.to_string().into(),
                _ => continue,
            };
        if value.len() > limits.max_business_value_bytes {
            return Err(&kv.key);
        }
        // Ids are unique per span: interning them would only grow the table.
        *slot = Some(if is_id {
            Arc::from(value.as_ref())
        } else {
            interner.intern(&value)
        });
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn good_span() -> opentelemetry_proto::tonic::trace::v1::Span {
        opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "inventory.try".into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![
                kv(attr::STAGE, "inventory.try"),
                kv(attr::PAYMENT_METHOD, "alipay"),
            ],
            status: Some(Status {
                message: String::new(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    fn request(
        spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "inventory")],
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

    #[test]
    fn valid_spans_keep_their_business_attributes() {
        let d = decode(
            request(vec![good_span()]),
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(d.rejected, 0);
        let s = &d.spans[0];
        assert_eq!(&*s.service, "inventory");
        assert_eq!(s.business.stage.as_deref(), Some("inventory.try"));
        assert_eq!(s.business.payment_method.as_deref(), Some("alipay"));
        assert!(s.is_error);
        assert_eq!(s.duration_ns(), 1_000);
    }

    type Breaker = Box<dyn Fn(&mut opentelemetry_proto::tonic::trace::v1::Span)>;

    #[test]
    fn invalid_spans_are_rejected_one_by_one_with_a_reason() {
        let broken: Vec<(&str, Breaker)> = vec![
            ("trace_id", Box::new(|s| s.trace_id = vec![0; 16])),
            ("trace_id", Box::new(|s| s.trace_id = vec![1; 3])),
            ("span_id", Box::new(|s| s.span_id = vec![0; 8])),
            (
                "parent_span_id",
                Box::new(|s| s.parent_span_id = vec![1; 5]),
            ),
            (
                "ends before it starts",
                Box::new(|s| s.end_time_unix_nano = 10),
            ),
            ("start_time", Box::new(|s| s.start_time_unix_nano = 0)),
            ("name", Box::new(|s| s.name = "x".repeat(5000))),
            (
                "attributes exceed",
                Box::new(|s| s.attributes = vec![kv("k", "v"); 2000]),
            ),
            (
                "too long",
                Box::new(|s| s.attributes = vec![kv(attr::FLOW_ID, &"9".repeat(1000))]),
            ),
        ];
        for (expected, breaker) in broken {
            let mut bad = good_span();
            breaker(&mut bad);
            let d = decode(
                request(vec![good_span(), bad]),
                &SpanLimits::default(),
                &StageRules::default(),
                &mut Interner::default(),
            );
            assert_eq!((d.spans.len(), d.rejected), (1, 1), "{expected}");
            let reason = d.first_error.expect("a reason");
            assert!(
                reason.contains(expected),
                "{reason:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn rules_name_the_stage_of_plain_spans_but_not_of_marked_ones() {
        let config = crate::config::Config::from_toml(
            "t",
            "[[rules]]\nservice = \"inventory\"\nspan_name = \"*\"\nstage = \"stock.reserve\"\nflow = \"checkout\"\n",
        )
        .expect("valid");
        let mut plain = good_span();
        plain.attributes.clear();
        let d = decode(
            request(vec![plain, good_span()]),
            &SpanLimits::default(),
            &config.rules,
            &mut Interner::default(),
        );
        assert_eq!(d.spans[0].business.stage.as_deref(), Some("stock.reserve"));
        assert_eq!(d.spans[0].business.flow.as_deref(), Some("checkout"));
        assert_eq!(d.spans[1].business.stage.as_deref(), Some("inventory.try"));
    }

    #[test]
    fn a_missing_service_name_is_unknown_service() {
        let mut req = request(vec![good_span()]);
        req.resource_spans[0].resource = None;
        let d = decode(
            req,
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(&*d.spans[0].service, "unknown_service");
    }
}
