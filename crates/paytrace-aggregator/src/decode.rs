//! OTLP trace requests, as any OpenTelemetry SDK sends them, into [`Span`]s.
//!
//! Each span is checked on its own; an invalid one is rejected with a reason
//! (for `partial_success.rejected_spans`) and the rest of the request is kept.
//!
//! Two decoders share that check, so they agree: [`decode_protobuf`]
//! reads protobuf bytes directly and is what the receivers use;
//! [`decode`] takes OTLP messages, for OTLP/JSON and files.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use paytrace_semconv::attr;

use crate::config::StageRules;
use crate::span::{Business, Link, Span, SpanId, TraceId};

mod wire;

pub use wire::{MalformedRequest, decode_protobuf};

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
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// The valid spans.
    pub spans: Vec<Span>,
    /// How many spans were rejected.
    pub rejected: u64,
    /// Why the first rejected span was rejected.
    pub first_error: Option<String>,
}

impl Decoded {
    fn push(&mut self, span: Result<Span, String>) {
        match span {
            Ok(span) => self.spans.push(span),
            Err(reason) => {
                self.rejected += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(reason);
                }
            }
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

/// An attribute's value, as far as paytrace reads it: strings, and integers
/// (some SDKs send transaction ids as numbers). Other values are never
/// decoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`, not yet checked to be UTF-8 (it is only when kept).
    Str(&'a [u8]),
    /// `int_value`.
    Int(i64),
    /// Any other value, or none.
    Other,
}

/// One attribute of a span, borrowed from the request it came in.
///
/// ```
/// use paytrace_aggregator::decode::{Attr, AttrValue};
/// let attr = Attr { key: b"http.route", value: AttrValue::Str(b"/pay") };
/// assert_eq!(attr.str_value(), Some(&b"/pay"[..]));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attr<'a> {
    /// The key, as bytes: compared with known keys, never kept.
    pub key: &'a [u8],
    /// The value.
    pub value: AttrValue<'a>,
}

impl<'a> Attr<'a> {
    /// The string value, if the value is a string.
    pub fn str_value(&self) -> Option<&'a [u8]> {
        match self.value {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One span as either decoder saw it, borrowed: the one place where spans
/// are validated and turned into [`Span`]s, so both decoders agree.
struct RawSpan<'a, 's> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a [u8],
    start_ns: u64,
    end_ns: u64,
    is_error: bool,
    attributes: &'s [Attr<'a>],
    /// (trace id, span id) of each link, unchecked.
    links: &'s [(&'a [u8], &'a [u8])],
}

fn string_value(value: &Option<AnyValue>) -> Option<&str> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attr_of(kv: &KeyValue) -> Attr<'_> {
    Attr {
        key: kv.key.as_bytes(),
        value: match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.as_bytes()),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
            _ => AttrValue::Other,
        },
    }
}

/// Decodes `request` into spans, rejecting invalid spans one by one.
///
/// This is for requests already decoded into OTLP messages (OTLP/JSON, the
/// file exporter's output); protobuf bytes go faster through
/// [`decode_protobuf`], with the same result.
///
/// ```
/// use paytrace_aggregator::config::StageRules;
/// use paytrace_aggregator::decode::{Interner, SpanLimits, decode};
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
///
/// let decoded = decode(
///     &ExportTraceServiceRequest::default(),
///     &SpanLimits::default(),
///     &StageRules::default(),
///     &mut Interner::default(),
/// );
/// assert!(decoded.spans.is_empty() && decoded.rejected == 0);
/// ```
pub fn decode(
    request: &ExportTraceServiceRequest,
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
    let mut attributes = Vec::new();
    let mut links = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| string_value(&kv.value))
            .unwrap_or(UNKNOWN_SERVICE);
        let service = interner.intern(service);
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            attributes.clear();
            attributes.extend(span.attributes.iter().map(attr_of));
            links.clear();
            links.extend(
                span.links
                    .iter()
                    .map(|l| (l.trace_id.as_slice(), l.span_id.as_slice())),
            );
            let raw = RawSpan {
                trace_id: &span.trace_id,
                span_id: &span.span_id,
                parent_span_id: &span.parent_span_id,
                name: span.name.as_bytes(),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                is_error: span
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == StatusCode::Error as i32),
                attributes: &attributes,
                links: &links,
            };
            out.push(build(&raw, &service, limits, rules, interner));
        }
    }
    out
}

fn build(
    span: &RawSpan<'_, '_>,
    service: &Arc<str>,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
) -> Result<Span, String> {
    let name = std::str::from_utf8(span.name);
    // Error messages quote what they can of a name that is not UTF-8.
    let quoted = || String::from_utf8_lossy(span.name);
    let trace_id = TraceId::from_bytes(span.trace_id).ok_or_else(|| {
        format!(
            "span {:?}: trace_id {}",
            truncate(&quoted()),
            id_problem(span.trace_id.len(), 16)
        )
    })?;
    let span_id = SpanId::from_bytes(span.span_id).ok_or_else(|| {
        format!(
            "span {:?} of trace {trace_id}: span_id {}",
            truncate(&quoted()),
            id_problem(span.span_id.len(), 8)
        )
    })?;
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        8 => SpanId::from_bytes(span.parent_span_id),
        n => {
            return Err(format!(
                "span {span_id} of trace {trace_id}: parent_span_id must be empty or 8 bytes (got {n})"
            ));
        }
    };
    if span.start_ns == 0 {
        return Err(format!(
            "span {span_id} of trace {trace_id}: start_time_unix_nano is missing"
        ));
    }
    if span.end_ns < span.start_ns {
        return Err(format!(
            "span {span_id} of trace {trace_id}: ends before it starts ({} < {})",
            span.end_ns, span.start_ns
        ));
    }
    if span.name.len() > limits.max_name_bytes {
        return Err(format!(
            "span {span_id} of trace {trace_id}: name of {} bytes exceeds {}",
            span.name.len(),
            limits.max_name_bytes
        ));
    }
    let Ok(name) = name else {
        return Err(format!(
            "span {span_id} of trace {trace_id}: the name is not UTF-8"
        ));
    };
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
    let mut business = business(span.attributes, limits, interner)
        .map_err(|e| format!("span {span_id} of trace {trace_id}: attribute {e}"))?;
    if business.stage.is_none()
        && let Some((stage, flow)) = rules.stage_for(service, name, span.attributes)
    {
        business.stage = Some(stage.clone());
        if business.flow.is_none() {
            business.flow = flow.cloned();
        }
    }
    let links = span
        .links
        .iter()
        .filter_map(|(trace_id, span_id)| {
            Some(Link {
                trace_id: TraceId::from_bytes(trace_id)?,
                span_id: SpanId::from_bytes(span_id)?,
            })
        })
        .collect();
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        // Span names repeat: within a request, they share one allocation.
        name: interner.intern(name),
        service: service.clone(),
        start_ns: span.start_ns,
        end_ns: span.end_ns,
        is_error: span.is_error,
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

/// The paytrace attributes of a span; `Err` names an attribute whose value
/// is absurdly long or not UTF-8.
fn business(
    attributes: &[Attr<'_>],
    limits: &SpanLimits,
    interner: &mut Interner,
) -> Result<Business, String> {
    let mut b = Business::default();
    for a in attributes {
        let (slot, key) = match a.key {
            k if k == attr::STAGE.as_bytes() => (&mut b.stage, attr::STAGE),
            k if k == attr::FLOW.as_bytes() => (&mut b.flow, attr::FLOW),
            k if k == attr::FLOW_ID.as_bytes() => (&mut b.flow_id, attr::FLOW_ID),
            k if k == attr::PAYMENT_METHOD.as_bytes() => {
                (&mut b.payment_method, attr::PAYMENT_METHOD)
            }
            k if k == attr::PAYMENT_CHANNEL.as_bytes() => {
                (&mut b.payment_channel, attr::PAYMENT_CHANNEL)
            }
            k if k == attr::OUTCOME.as_bytes() => (&mut b.outcome, attr::OUTCOME),
            k if k.starts_with(b"tcc.") => {
                let tcc = b.tcc.get_or_insert_with(Box::default);
                match k {
                    k if k == attr::TCC_XID.as_bytes() => (&mut tcc.xid, attr::TCC_XID),
                    k if k == attr::TCC_BRANCH_ID.as_bytes() => {
                        (&mut tcc.branch_id, attr::TCC_BRANCH_ID)
                    }
                    k if k == attr::TCC_RESOURCE.as_bytes() => {
                        (&mut tcc.resource, attr::TCC_RESOURCE)
                    }
                    k if k == attr::TCC_PHASE.as_bytes() => (&mut tcc.phase, attr::TCC_PHASE),
                    k if k == attr::TCC_DECISION.as_bytes() => {
                        (&mut tcc.decision, attr::TCC_DECISION)
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        let is_id = matches!(key, attr::FLOW_ID | attr::TCC_XID | attr::TCC_BRANCH_ID);
        let number;
        let value: &str = match a.value {
            AttrValue::Str(s) => {
                if s.len() > limits.max_business_value_bytes {
                    return Err(format!("{key} is too long"));
                }
                std::str::from_utf8(s).map_err(|_| format!("{key} is not UTF-8"))?
            }
            // Some SDKs send numeric transaction ids.
            AttrValue::Int(i) if is_id => {
                number = i.to_string();
                &number
            }
            _ => continue,
        };
        // Ids are unique per span: interning them would only grow the table.
        *slot = Some(if is_id {
            Arc::from(value)
        } else {
            interner.intern(value)
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
            &request(vec![good_span()]),
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
                &request(vec![good_span(), bad]),
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
            &request(vec![plain, good_span()]),
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
            &req,
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(&*d.spans[0].service, "unknown_service");
    }
}
