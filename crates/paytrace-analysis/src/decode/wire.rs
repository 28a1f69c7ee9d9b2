//! OTLP/protobuf bytes straight into [`Span`](crate::Span)s.
//!
//! Decoding a request into OTLP messages first (what `prost` does) allocates
//! a `String` for every attribute key and value and a message for every
//! event, although the aggregator reads a dozen fields of each span. This
//! decoder walks the protobuf wire format instead, borrows what it reads
//! from the request's bytes and skips the rest by its length. Its result is
//! the one [`decode`](super::decode) gives for the same request, which a
//! property test checks.
//!
//! Fields the aggregator does not read (scopes, events other than their
//! names, values that are not strings or integers) are skipped without
//! being checked; a field it does
//! read with the wrong wire type, a truncated field or an invalid varint
//! makes the whole request malformed, as it would for any protobuf decoder.

use std::sync::Arc;

use prost::encoding::{DecodeContext, WireType, decode_varint, skip_field};

use super::{
    Attr, AttrValue, Decoded, Interner, RawSpan, SpanLimits, SpanPath, UNKNOWN_SERVICE, build,
};
use crate::config::StageRules;

/// A request body that is not a protobuf `ExportTraceServiceRequest`.
///
/// ```
/// use paytrace_analysis::config::StageRules;
/// use paytrace_analysis::decode::{Interner, SpanLimits, decode_protobuf};
///
/// // Field 1 (resource_spans) says 100 bytes follow, but none do.
/// let err = decode_protobuf(&[0x0a, 100], &SpanLimits::default(), &StageRules::default(),
///     &mut Interner::default()).unwrap_err();
/// assert!(err.to_string().contains("truncated"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an OTLP ExportTraceServiceRequest (protobuf): {0}")]
pub struct MalformedRequest(String);

/// Decodes an OTLP/protobuf `ExportTraceServiceRequest` into spans,
/// rejecting invalid spans one by one as [`decode`](super::decode) does.
///
/// ```
/// use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
/// use paytrace_analysis::config::StageRules;
/// use paytrace_analysis::decode::{Interner, SpanLimits, decode_protobuf};
/// use prost::Message;
///
/// let body = ExportTraceServiceRequest::default().encode_to_vec();
/// let decoded = decode_protobuf(&body, &SpanLimits::default(), &StageRules::default(),
///     &mut Interner::default()).expect("an empty request is valid");
/// assert!(decoded.spans.is_empty() && decoded.rejected == 0);
/// ```
pub fn decode_protobuf(
    body: &[u8],
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
) -> Result<Decoded, MalformedRequest> {
    let mut out = Decoded::default();
    // One allocation for the request's spans: counting them reads only keys
    // and lengths.
    out.spans.reserve(count_spans(body)?);
    let mut scratch = Scratch::default();
    let mut request = Fields::new(body);
    let mut resource = 0;
    while let Some((tag, value)) = request.next()? {
        if tag == 1 {
            let resource_spans = value.bytes("ExportTraceServiceRequest.resource_spans")?;
            decode_resource_spans(
                resource_spans,
                resource,
                limits,
                rules,
                interner,
                &mut scratch,
                &mut out,
            )?;
            resource += 1;
        }
    }
    Ok(out)
}

/// Vectors reused from span to span, so that a span costs no allocation
/// beyond what it keeps.
#[derive(Default)]
struct Scratch<'a> {
    attributes: Vec<Attr<'a>>,
    links: Vec<(&'a [u8], &'a [u8])>,
}

fn count_spans(body: &[u8]) -> Result<usize, WireError> {
    let mut n = 0;
    let mut request = Fields::new(body);
    while let Some((tag, value)) = request.next()? {
        if tag != 1 {
            continue;
        }
        let mut resource_spans =
            Fields::new(value.bytes("ExportTraceServiceRequest.resource_spans")?);
        while let Some((tag, value)) = resource_spans.next()? {
            if tag != 2 {
                continue;
            }
            let mut scope_spans = Fields::new(value.bytes("ResourceSpans.scope_spans")?);
            while let Some((tag, _)) = scope_spans.next()? {
                n += usize::from(tag == 2);
            }
        }
    }
    Ok(n)
}

fn decode_resource_spans<'a>(
    buf: &'a [u8],
    resource: usize,
    limits: &SpanLimits,
    rules: &StageRules,
    interner: &mut Interner,
    scratch: &mut Scratch<'a>,
    out: &mut Decoded,
) -> Result<(), WireError> {
    // The resource may follow the spans on the wire: find it first.
    let mut service = None;
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        if tag == 1 && service.is_none() {
            service = service_name(value.bytes("ResourceSpans.resource")?)?;
        }
    }
    let service = match service {
        Some(AttrValue::Str(name)) => {
            std::str::from_utf8(name).map_err(|_| WireError::ServiceNameNotUtf8)?
        }
        _ => UNKNOWN_SERVICE,
    };
    let service: Arc<str> = interner.intern(service);
    let empty: Arc<[u8]> = Arc::from(&[][..]);
    let resource_bytes: Arc<[u8]> = if limits.keep_as_sent {
        last_field(buf, 1, "ResourceSpans.resource")?.map_or_else(|| empty.clone(), Arc::from)
    } else {
        empty.clone()
    };
    let mut fields = Fields::new(buf);
    let mut at = SpanPath {
        resource,
        scope: 0,
        span: 0,
    };
    while let Some((tag, value)) = fields.next()? {
        if tag != 2 {
            continue;
        }
        let scope_spans_bytes = value.bytes("ResourceSpans.scope_spans")?;
        let scope_bytes: Arc<[u8]> = if limits.keep_as_sent {
            last_field(scope_spans_bytes, 1, "ScopeSpans.scope")?
                .map_or_else(|| empty.clone(), Arc::from)
        } else {
            empty.clone()
        };
        let mut scope_spans = Fields::new(scope_spans_bytes);
        at.span = 0;
        while let Some((tag, value)) = scope_spans.next()? {
            if tag != 2 {
                continue;
            }
            scratch.attributes.clear();
            scratch.links.clear();
            let span_bytes = value.bytes("ScopeSpans.spans")?;
            let mut span = decode_span(span_bytes, at, rules, scratch)?;
            if limits.keep_as_sent {
                span.as_sent = Some((
                    std::borrow::Cow::Borrowed(span_bytes),
                    resource_bytes.clone(),
                    scope_bytes.clone(),
                ));
            }
            let built = build(&span, &service, limits, rules, interner, out);
            out.push(built);
            at.span += 1;
        }
        at.scope += 1;
    }
    Ok(())
}

/// The bytes of the last field `tag` of the message `buf`, if any.
fn last_field<'a>(
    buf: &'a [u8],
    tag: u32,
    what: &'static str,
) -> Result<Option<&'a [u8]>, WireError> {
    let mut found = None;
    let mut fields = Fields::new(buf);
    while let Some((t, value)) = fields.next()? {
        if t == tag {
            found = Some(value.bytes(what)?);
        }
    }
    Ok(found)
}

/// The value of the first `service.name` attribute of a `Resource`, if any.
fn service_name(resource: &[u8]) -> Result<Option<AttrValue<'_>>, WireError> {
    let mut fields = Fields::new(resource);
    while let Some((tag, value)) = fields.next()? {
        if tag == 1 {
            let attr = decode_key_value(value.bytes("Resource.attributes")?, |key| {
                key == b"service.name"
            })?;
            if attr.key == b"service.name" {
                return Ok(Some(attr.value));
            }
        }
    }
    Ok(None)
}

fn decode_span<'a, 's>(
    buf: &'a [u8],
    at: SpanPath,
    rules: &StageRules,
    scratch: &'s mut Scratch<'a>,
) -> Result<RawSpan<'a, 's>, WireError> {
    let mut span = RawSpan {
        at,
        trace_id: &[],
        span_id: &[],
        parent_span_id: &[],
        trace_state: &[],
        name: &[],
        start_ns: 0,
        end_ns: 0,
        status_code: 0,
        kind: 0,
        attributes: &[],
        links: &[],
        fence_event: false,
        fence_anomaly: false,
        as_sent: None,
    };
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => span.trace_id = value.bytes("Span.trace_id")?,
            2 => span.span_id = value.bytes("Span.span_id")?,
            3 => span.trace_state = value.bytes("Span.trace_state")?,
            4 => span.parent_span_id = value.bytes("Span.parent_span_id")?,
            5 => span.name = value.bytes("Span.name")?,
            // An enum is an int32 on the wire.
            6 => span.kind = value.varint("Span.kind")? as i32,
            7 => span.start_ns = value.fixed64("Span.start_time_unix_nano")?,
            8 => span.end_ns = value.fixed64("Span.end_time_unix_nano")?,
            9 => scratch
                .attributes
                .push(decode_key_value(value.bytes("Span.attributes")?, |key| {
                    rules.reads(key)
                })?),
            11 => {
                let (name, anomaly) = fence_event(value.bytes("Span.events")?)?;
                let fence = name == paytrace_semconv::attr::TCC_FENCE_EVENT.as_bytes();
                span.fence_event |= fence;
                span.fence_anomaly |= fence && anomaly;
            }
            13 => scratch.links.push(decode_link(value.bytes("Span.links")?)?),
            15 => {
                // Status messages seen twice merge: a later one without a
                // code keeps the earlier code.
                let mut status = Fields::new(value.bytes("Span.status")?);
                while let Some((tag, value)) = status.next()? {
                    if tag == 3 {
                        span.status_code = value.varint("Status.code")? as i32;
                    }
                }
            }
            _ => {}
        }
    }
    span.attributes = &scratch.attributes;
    span.links = &scratch.links;
    Ok(span)
}

/// One attribute. Its value is decoded only when `wanted(key)`: the
/// aggregator reads a few attributes of each span and skips the rest.
fn decode_key_value(buf: &[u8], wanted: impl Fn(&[u8]) -> bool) -> Result<Attr<'_>, WireError> {
    let mut key: &[u8] = &[];
    let mut has_value = false;
    let mut fields = Fields::new(buf);
    while let Some((tag, field)) = fields.next()? {
        match tag {
            1 => key = field.bytes("KeyValue.key")?,
            2 => {
                field.bytes("KeyValue.value")?;
                has_value = true;
            }
            _ => {}
        }
    }
    let mut value = AttrValue::Other;
    if has_value && wanted(key) {
        // A value sent in pieces merges, in wire order.
        let mut fields = Fields::new(buf);
        while let Some((tag, field)) = fields.next()? {
            if tag == 2 {
                value = decode_any_value(field.bytes("KeyValue.value")?, value)?;
            }
        }
    }
    Ok(Attr { key, value })
}

/// An `AnyValue` merged onto `previous`, as a value seen twice merges.
fn decode_any_value<'a>(
    buf: &'a [u8],
    previous: AttrValue<'a>,
) -> Result<AttrValue<'a>, WireError> {
    let mut result = previous;
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        // A oneof: the last member on the wire is the value.
        result = match tag {
            1 => AttrValue::Str(value.bytes("AnyValue.string_value")?),
            3 => AttrValue::Int(value.varint("AnyValue.int_value")? as i64),
            2 | 4..=8 => AttrValue::Other,
            _ => result,
        };
    }
    Ok(result)
}

/// The name of a `Span.Event` (the last one on the wire, as for any
/// field), and whether it has a `tcc.fence.anomaly` attribute.
fn fence_event(buf: &[u8]) -> Result<(&[u8], bool), WireError> {
    let mut name: &[u8] = &[];
    let mut anomaly = false;
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            2 => name = value.bytes("Event.name")?,
            3 => {
                let attr = decode_key_value(value.bytes("Event.attributes")?, |_| false)?;
                anomaly |= attr.key == paytrace_semconv::attr::TCC_FENCE_ANOMALY.as_bytes();
            }
            _ => {}
        }
    }
    Ok((name, anomaly))
}

fn decode_link(buf: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        match tag {
            1 => trace_id = value.bytes("Link.trace_id")?,
            2 => span_id = value.bytes("Link.span_id")?,
            _ => {}
        }
    }
    Ok((trace_id, span_id))
}

/// What is wrong with a request, cheap to return from every field read;
/// worded once, in [`MalformedRequest`].
#[derive(Clone, Copy, Debug)]
enum WireError {
    Truncated {
        need: u64,
        left: usize,
    },
    InvalidVarint,
    InvalidKey(u64),
    WrongType {
        field: &'static str,
        expected: WireType,
        got: WireType,
    },
    UnmatchedEndGroup(u32),
    InvalidGroup,
    ServiceNameNotUtf8,
}

fn wire_type_name(wire_type: WireType) -> &'static str {
    match wire_type {
        WireType::Varint => "a varint",
        WireType::SixtyFourBit => "64-bit",
        WireType::LengthDelimited => "length-delimited",
        WireType::StartGroup | WireType::EndGroup => "a group",
        WireType::ThirtyTwoBit => "32-bit",
    }
}

impl From<WireError> for MalformedRequest {
    fn from(e: WireError) -> Self {
        Self(match e {
            WireError::Truncated { need, left } => {
                format!("truncated: a field of {need} bytes with {left} left")
            }
            WireError::InvalidVarint => "an invalid varint".to_owned(),
            WireError::InvalidKey(key) => format!("an invalid field key {key}"),
            WireError::WrongType {
                field,
                expected,
                got,
            } => format!(
                "{field} must be {}, got {}",
                wire_type_name(expected),
                wire_type_name(got)
            ),
            WireError::UnmatchedEndGroup(tag) => {
                format!("an end-group marker for field {tag} without its start")
            }
            WireError::InvalidGroup => "an invalid group".to_owned(),
            WireError::ServiceNameNotUtf8 => "the resource's service.name is not UTF-8".to_owned(),
        })
    }
}

/// One field's payload, borrowed from the message.
#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
    Group,
}

impl<'a> Value<'a> {
    fn wire_type(self) -> WireType {
        match self {
            Self::Varint(_) => WireType::Varint,
            Self::Fixed64(_) => WireType::SixtyFourBit,
            Self::Fixed32 => WireType::ThirtyTwoBit,
            Self::Bytes(_) => WireType::LengthDelimited,
            Self::Group => WireType::StartGroup,
        }
    }

    #[inline]
    fn bytes(self, field: &'static str) -> Result<&'a [u8], WireError> {
        match self {
            Self::Bytes(b) => Ok(b),
            other => Err(other.mismatch(field, WireType::LengthDelimited)),
        }
    }

    #[inline]
    fn varint(self, field: &'static str) -> Result<u64, WireError> {
        match self {
            Self::Varint(v) => Ok(v),
            other => Err(other.mismatch(field, WireType::Varint)),
        }
    }

    #[inline]
    fn fixed64(self, field: &'static str) -> Result<u64, WireError> {
        match self {
            Self::Fixed64(v) => Ok(v),
            other => Err(other.mismatch(field, WireType::SixtyFourBit)),
        }
    }

    #[cold]
    fn mismatch(self, field: &'static str, expected: WireType) -> WireError {
        WireError::WrongType {
            field,
            expected,
            got: self.wire_type(),
        }
    }
}

/// The fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    #[inline(always)]
    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() => {
                let (head, tail) = self.buf.split_at(n);
                self.buf = tail;
                Ok(head)
            }
            _ => Err(WireError::Truncated {
                need: n,
                left: self.buf.len(),
            }),
        }
    }

    /// A varint; nearly all tags and lengths fit one byte, which is read
    /// here, the rest by `prost`.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        match self.buf.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.buf = rest;
                Ok(u64::from(b))
            }
            _ => decode_varint(&mut self.buf).map_err(|_| WireError::InvalidVarint),
        }
    }

    // Always: called for every field of every message, its result (a tag
    // and a value) is best kept in registers; out of line it cost 11% of the
    // decoder's instructions (3,765 -> 3,358 per span).
    #[inline(always)]
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = match u32::try_from(key >> 3) {
            Ok(tag) if tag > 0 => tag,
            _ => return Err(WireError::InvalidKey(key)),
        };
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut le = [0; 8];
                le.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(le))
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            3 => {
                // Deprecated groups appear in no OTLP message; skip them as
                // any protobuf decoder would, with its nesting limit.
                skip_field(
                    WireType::StartGroup,
                    tag,
                    &mut self.buf,
                    DecodeContext::default(),
                )
                .map_err(|_| WireError::InvalidGroup)?;
                Value::Group
            }
            4 => return Err(WireError::UnmatchedEndGroup(tag)),
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            _ => return Err(WireError::InvalidKey(key)),
        };
        Ok(Some((tag, value)))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn wire(body: &[u8]) -> Result<Decoded, MalformedRequest> {
        decode_protobuf(
            body,
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        )
    }

    fn span() -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "pay".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        }
    }

    /// `field` as a length-delimited protobuf field.
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag << 3 | 2];
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_resource_after_its_spans_still_names_the_service() {
        let spans = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let resource = ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("payment".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        // Two encodings of one message concatenated are that message merged:
        // here its spans come first on the wire, its resource last.
        let mut resource_spans = spans.encode_to_vec();
        resource_spans.extend(resource.encode_to_vec());
        let body = field(1, &resource_spans);
        let decoded = wire(&body).expect("valid");
        assert_eq!(&*decoded.spans[0].service, "payment");
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("prost agrees");
        let messages = super::super::decode(
            &request,
            &SpanLimits::default(),
            &StageRules::default(),
            &mut Interner::default(),
        );
        assert_eq!(decoded, messages);
    }

    #[test]
    fn a_field_it_reads_with_the_wrong_wire_type_makes_the_request_malformed() {
        // Span.name (5) as a varint.
        let span = [5 << 3, 7];
        let body = field(1, &field(2, &field(2, &span)));
        let err = wire(&body).expect_err("malformed");
        assert!(
            err.to_string()
                .contains("Span.name must be length-delimited"),
            "{err}"
        );
    }

    #[test]
    fn fields_it_does_not_read_are_skipped_whatever_their_type() {
        let mut span_bytes = span().encode_to_vec();
        // Unknown field 99 as a 32-bit value, then as a group.
        span_bytes.extend([0x9d, 0x06, 1, 2, 3, 4]);
        span_bytes.extend([0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06]);
        let decoded = wire(&field(1, &field(2, &field(2, &span_bytes)))).expect("valid");
        assert_eq!((decoded.spans.len(), decoded.rejected), (1, 0));
        assert_eq!(&*decoded.spans[0].name, "pay");
    }

    #[test]
    fn a_name_that_is_not_utf8_rejects_only_its_span() {
        let mut bad = span();
        bad.name = String::new();
        let mut bad_bytes = bad.encode_to_vec();
        bad_bytes.extend(field(5, &[0xff, 0xfe]));
        let mut scope = field(2, &span().encode_to_vec());
        scope.extend(field(2, &bad_bytes));
        let decoded = wire(&field(1, &field(2, &scope))).expect("the request is kept");
        assert_eq!((decoded.spans.len(), decoded.rejected), (1, 1));
        let reason = decoded.first_error.expect("a reason");
        assert!(reason.contains("not UTF-8"), "{reason}");
    }
}
