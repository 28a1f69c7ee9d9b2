//! W3C trace context and baggage on the wire: read from a request's
//! headers once per request by the server layers (from a message's by the
//! consumer), written into each outgoing call's and message's.
//!
//! What is read and written is what `TextMapCompositePropagator` of
//! `TraceContextPropagator` and `BaggagePropagator` reads and writes
//! through `opentelemetry_http`'s `HeaderExtractor` and `HeaderInjector`
//! (property tests hold the two together), for less work: the header
//! names are constants instead of
//! being parsed on each look-up, `traceparent` and baggage members are
//! split without collecting their parts, ids of the usual shape are read
//! without a generic number parser, and text without `%` is not decoded
//! nor the keys paytrace reads copied; a `traceparent` is written without
//! `format!` and a `baggage` without a `String` per member.
//!
//! The rules kept from the SDK's baggage propagator, whatever W3C allows
//! beyond them, so that a service reads the same baggage whichever of the
//! two extracted it:
//! - a header over 8,192 bytes is ignored whole, and only its first 64
//!   members are read;
//! - a member's value ends at its second `=`;
//! - a member whose name or value does not percent-decode to UTF-8 is
//!   dropped, as is one without `=`; a property that does not decode is
//!   left out of the member's metadata;
//! - names, values and properties are trimmed of white space.

use std::borrow::Cow;
use std::str::FromStr;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::Key;
use opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata, KeyValueMetadata};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use paytrace_semconv::attr;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// The W3C limit on a whole `baggage` header, as the SDK enforces it.
const MAX_BAGGAGE_LENGTH: usize = 8192;
/// The most baggage members read from one header, as the SDK reads them.
const MAX_BAGGAGE_MEMBERS: usize = 64;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The remote parent and baggage `headers` carry, on top of the current
/// context (as a propagator's `extract` does).
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    extract_from(&W3cHeaders(headers))
}

/// The remote parent and baggage `carrier` holds, on top of the current
/// context: a message's headers.
pub(crate) fn extract_from(carrier: &dyn Extractor) -> Context {
    let cx = Context::current();
    let cx = match remote_span(carrier) {
        Some(parent) => cx.with_remote_span_context(parent),
        None => cx,
    };
    match carrier.get("baggage") {
        Some(baggage) => with_baggage_header(&cx, baggage),
        None => cx,
    }
}

/// The most recent `traceparent` version the SDK reads (`ff` is invalid).
const MAX_TRACEPARENT_VERSION: u8 = 254;

/// The remote span `carrier`'s `traceparent` names, with its `tracestate`,
/// by the SDK's rules: a version up to `fe` (`00` with exactly four
/// fields), lower-case hex ids that are not all zeros, only the sampled
/// flag kept, a `tracestate` that does not parse read as empty.
pub(super) fn remote_span(carrier: &dyn Extractor) -> Option<SpanContext> {
    let traceparent = carrier.get("traceparent").unwrap_or("").trim();
    let mut fields = traceparent.split_terminator('-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let version = u8::from_str_radix(version, 16).ok()?;
    if version > MAX_TRACEPARENT_VERSION || (version == 0 && fields.next().is_some()) {
        return None;
    }
    let trace_id = match lower_hex::<16>(trace_id) {
        Some(bytes) => TraceId::from_bytes(bytes),
        None if has_upper_case(trace_id) => return None,
        None => TraceId::from_hex(trace_id).ok()?,
    };
    let span_id = match lower_hex::<8>(span_id) {
        Some(bytes) => SpanId::from_bytes(bytes),
        None if has_upper_case(span_id) => return None,
        None => SpanId::from_hex(span_id).ok()?,
    };
    if has_upper_case(flags) {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    let state = carrier
        .get("tracestate")
        .map(|s| TraceState::from_str(s).unwrap_or_default())
        .unwrap_or_default();
    let parent = SpanContext::new(trace_id, span_id, flags, true, state);
    parent.is_valid().then_some(parent)
}

/// `N` bytes written as exactly `2N` lower-case hex digits, the usual
/// shape of an id; `None` for any other text.
fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

fn has_upper_case(text: &str) -> bool {
    text.bytes().any(|c| c.is_ascii_uppercase())
}

/// A header's value as text, when it is (the first one of its name).
fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// HTTP headers, the W3C ones looked up by constant names.
struct W3cHeaders<'h>(&'h HeaderMap);

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => header(self.0, &TRACEPARENT),
            "tracestate" => header(self.0, &TRACESTATE),
            "baggage" => header(self.0, &BAGGAGE),
            other => self.0.get(other).and_then(|v| v.to_str().ok()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// `cx` with the baggage a `baggage` header's value holds in place of its own.
fn with_baggage_header(cx: &Context, value: &str) -> Context {
    if value.len() > MAX_BAGGAGE_LENGTH {
        return cx.clone();
    }
    cx.with_baggage(
        value
            .split(',')
            .take(MAX_BAGGAGE_MEMBERS)
            .filter_map(member),
    )
}

/// One `name=value;property;…` member, if it is readable.
fn member(member: &str) -> Option<KeyValueMetadata> {
    let mut parts = member.split(';');
    let mut name_and_value = parts.next()?.split('=');
    let (name, value) = (name_and_value.next()?, name_and_value.next()?);
    let name = decoded(name)?;
    let value = decoded(value)?;
    Some(KeyValueMetadata::new(
        key(name.trim()),
        value.trim().to_owned(),
        metadata(parts),
    ))
}

/// `text` percent-decoded, if that is UTF-8; as it is when it has no `%`.
fn decoded(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%') {
        return Some(Cow::Borrowed(text));
    }
    percent_decode_str(text).decode_utf8().ok()
}

/// The baggage key `name`, without a copy for the keys paytrace reads.
fn key(name: &str) -> Key {
    match name {
        attr::FLOW => Key::from_static_str(attr::FLOW),
        attr::FLOW_ID => Key::from_static_str(attr::FLOW_ID),
        attr::PAYMENT_METHOD => Key::from_static_str(attr::PAYMENT_METHOD),
        attr::PAYMENT_CHANNEL => Key::from_static_str(attr::PAYMENT_CHANNEL),
        other => Key::from(other.to_owned()),
    }
}

/// A member's properties, decoded and trimmed, joined by `;`.
fn metadata<'a>(properties: impl Iterator<Item = &'a str>) -> BaggageMetadata {
    let mut joined = String::new();
    let mut first = true;
    for property in properties {
        let Some(property) = decoded(property) else {
            continue;
        };
        if !first {
            joined.push(';');
        }
        first = false;
        joined.push_str(property.trim());
    }
    BaggageMetadata::from(joined)
}

/// The W3C characters a baggage name or value is percent-encoded for, as
/// the SDK's propagator encodes them (and every byte beyond ASCII).
const BAGGAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b';').add(b',').add(b'=');

/// Writes `cx`'s span context and baggage into `headers`, as
/// `HeaderInjector` through the SDK's propagators writes them.
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) {
    let mut set = |name: HeaderName, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    let span = cx.span();
    let parent = span.span_context();
    if parent.is_valid() {
        set(TRACEPARENT, traceparent(parent));
        set(TRACESTATE, parent.trace_state().header());
    }
    let baggage = cx.baggage();
    if !baggage.is_empty() {
        set(BAGGAGE, baggage_header(baggage));
    }
}

/// Writes `cx`'s span context and baggage through `injector`: a message's
/// headers.
pub(crate) fn inject_into(cx: &Context, injector: &mut dyn Injector) {
    let span = cx.span();
    let parent = span.span_context();
    if parent.is_valid() {
        injector.set("traceparent", traceparent(parent));
        injector.set("tracestate", parent.trace_state().header());
    }
    let baggage = cx.baggage();
    if !baggage.is_empty() {
        injector.set("baggage", baggage_header(baggage));
    }
}

/// `version-traceid-spanid-flags`, version `00`, only the sampled flag.
fn traceparent(span: &SpanContext) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &span.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &span.span_id().to_bytes());
    out.push('-');
    push_hex(
        &mut out,
        &[(span.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// `name=value;metadata` for each entry, joined by `,`, names and values
/// trimmed and percent-encoded.
fn baggage_header(baggage: &Baggage) -> String {
    let mut out = String::new();
    for (name, (value, metadata)) in baggage {
        if !out.is_empty() {
            out.push(',');
        }
        out.extend(utf8_percent_encode(name.as_str().trim(), BAGGAGE_ESCAPED));
        out.push('=');
        out.extend(utf8_percent_encode(value.as_str().trim(), BAGGAGE_ESCAPED));
        let metadata = metadata.as_str().trim();
        if !metadata.is_empty() {
            out.push(';');
            out.push_str(metadata);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use proptest::prelude::*;

    /// What the SDK's propagators extract from the same headers.
    fn by_the_sdk(headers: &HeaderMap) -> Context {
        super::super::PROPAGATOR.extract(&opentelemetry_http::HeaderExtractor(headers))
    }

    /// A context's span and baggage, comparable.
    fn seen(cx: &Context) -> (String, Vec<(String, String, String)>) {
        let span = cx.span();
        let sc = span.span_context();
        let span = format!(
            "{}-{}-{:?}-{}-{}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            sc.is_remote(),
            sc.trace_state().header()
        );
        let mut baggage: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
            .collect();
        baggage.sort();
        (span, baggage)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("a valid header value"));
        }
        map
    }

    #[test]
    fn reads_the_flow_the_parent_and_properties() {
        let map = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
            (
                "baggage",
                "paytrace.flow=checkout, payment.method = alipay;p1 ; p%3D2,k%7E=v%20w,k%2C=comma,bad=%FF,novalue",
            ),
        ]);
        let cx = extract(&map);
        let (span, baggage) = seen(&cx);
        assert_eq!(
            span,
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-TraceFlags(1)-true-vendor=x"
        );
        assert_eq!(
            baggage,
            [
                ("k~".into(), "v w".into(), String::new()),
                ("payment.method".into(), "alipay".into(), "p1;p=2".into()),
                ("paytrace.flow".into(), "checkout".into(), String::new()),
            ]
        );
        // A key with a `,` (decoded) is no token: dropped, as by the SDK.
        assert_eq!(seen(&by_the_sdk(&map)), (span, baggage));
    }

    #[test]
    fn an_oversize_header_is_ignored_whole() {
        let long = format!("a=1,b={}", "x".repeat(MAX_BAGGAGE_LENGTH));
        let cx = extract(&headers(&[("baggage", &long)]));
        assert!(cx.baggage().is_empty());
    }

    /// Header values made of the characters that matter to the parsers.
    fn header_value() -> impl Strategy<Value = String> {
        proptest::string::string_regex(
            "([a-z.]{1,6}|paytrace\\.flow|payment\\.method|%[0-9A-Fa-fG]{0,2}|%FF|%C3%A9|[ ,;=\t]){0,24}",
        )
        .expect("a valid pattern")
    }

    /// A `traceparent`, mostly of the right shape: versions valid and
    /// not, ids of every case and length near the right one, all-zero
    /// ids, flags, extra fields, a trailing `-`.
    fn traceparent_value() -> impl Strategy<Value = String> {
        proptest::string::string_regex(concat!(
            "(00|01|fe|ff|0|\\+0|000|zz)",
            "-([0-9a-f]{32}|[0-9a-fA-F]{30,33}|0{32}|\\+[0-9a-f]{31})",
            "-([0-9a-f]{16}|[0-9a-fA-F]{15,17}|0{16}|\\+[0-9a-f]{15})",
            "-([0-9a-f]{2}|[0-9a-fA-F]{1,3})",
            "(-[a-z0-9]{0,3}){0,2}-?",
        ))
        .expect("a valid pattern")
    }

    /// One baggage member, mostly well formed: a name, a value (sometimes
    /// none, sometimes with a second `=`), properties, blanks around each,
    /// percent escapes valid and not.
    fn member_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex(concat!(
            "[ \t]{0,2}([a-z.]{1,6}|paytrace\\.flow(_id)?|payment\\.(method|channel)|%[0-9A-Fa-fG]{0,2}|%FF|%7E|%2C)[ \t]{0,2}",
            "(=[ \t]{0,2}([a-z.=]{0,6}|%[0-9A-F]{0,2}|%FF|%20)[ \t]{0,2})?",
            "(;[ \t]{0,2}[a-z=%2CF]{0,5}[ \t]{0,2}){0,3}",
        ))
        .expect("a valid pattern")
    }

    /// A whole `baggage` value: well-formed-ish members (up to more than
    /// are read), or anything.
    fn baggage_value() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(member_text(), 0..80).prop_map(|m| m.join(",")),
            header_value(),
        ]
    }

    /// Baggage entries: names valid and not, values and metadata with the
    /// characters that are escaped, blanks and non-ASCII text.
    fn baggage_entries() -> impl Strategy<Value = Vec<(String, String, String)>> {
        proptest::collection::vec(
            (
                "[ ]?([a-z.~!]{1,6}|paytrace\\.flow|k,|é)[ ]?",
                "[ ]?[a-z;,=\" %é\\x7f]{0,8}[ ]?",
                "[ ]?([a-z]{1,3}(=[a-z;]{0,2})?)?[ ]?",
            ),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn injects_what_the_sdk_injects(
            ids in proptest::option::of((any::<u128>(), any::<u64>(), any::<u8>())),
            state in proptest::option::of("[a-z]{1,4}=[a-z0-9]{1,4}(,[a-z]{1,3}=[a-z]{1,3}){0,2}"),
            entries in baggage_entries(),
        ) {
            let mut cx = Context::new();
            if let Some((trace, span, flags)) = ids {
                let state = state
                    .map(|s| TraceState::from_str(&s).unwrap_or_default())
                    .unwrap_or_default();
                cx = cx.with_remote_span_context(SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(span),
                    TraceFlags::new(flags),
                    true,
                    state,
                ));
            }
            let cx = cx.with_baggage(
                entries
                    .into_iter()
                    .map(|(k, v, m)| KeyValueMetadata::new(k, v, m.as_str())),
            );
            let (mut ours, mut theirs) = (HeaderMap::new(), HeaderMap::new());
            inject(&cx, &mut ours);
            super::super::PROPAGATOR
                .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut theirs));
            prop_assert_eq!(&ours, &theirs);
            let (mut ours, mut theirs) = (
                std::collections::HashMap::new(),
                std::collections::HashMap::new(),
            );
            inject_into(&cx, &mut ours);
            super::super::PROPAGATOR.inject_context(&cx, &mut theirs);
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn extracts_what_the_sdk_extracts(
            baggage in proptest::option::of(baggage_value()),
            traceparent in proptest::option::of(prop_oneof![
                Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
                traceparent_value(),
                "[0-9a-f-]{0,60}",
            ]),
            tracestate in proptest::option::of(header_value()),
        ) {
            let mut pairs: Vec<(&'static str, String)> = Vec::new();
            if let Some(b) = baggage {
                pairs.push(("baggage", b));
            }
            if let Some(t) = traceparent {
                pairs.push(("traceparent", t));
            }
            if let Some(t) = tracestate {
                pairs.push(("tracestate", t));
            }
            let mut map = HeaderMap::new();
            for (name, value) in &pairs {
                let Ok(value) = value.trim().parse() else { return Ok(()) };
                map.append(*name, value);
            }
            prop_assert_eq!(seen(&extract(&map)), seen(&by_the_sdk(&map)));
        }
    }
}
