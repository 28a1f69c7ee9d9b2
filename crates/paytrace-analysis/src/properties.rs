//! Properties of the analysis on random traces: critical-path times sum to
//! the end-to-end duration, self time never exceeds duration, and the result
//! does not depend on the order the spans arrived in.
//!
//! Unit tests, not integration tests: they check the analysis, which is
//! internal to the crate.

use crate::Span;
use crate::critical_path::analyze_flow;
use crate::testing::{child, numbered, span, stage, with_parent_id};
use proptest::prelude::*;

/// One generated span: parent (`None` = orphan), start, length, stage flag.
type Shape = (Option<usize>, u64, u64, bool);

fn trace_strategy() -> impl Strategy<Value = Vec<Span>> {
    (1usize..60)
        .prop_flat_map(|n| {
            proptest::collection::vec(
                (
                    proptest::option::weighted(0.95, any::<usize>()),
                    0u64..1_000,
                    0u64..400,
                    any::<bool>(),
                ),
                n,
            )
        })
        .prop_map(|shapes: Vec<Shape>| {
            let spans = shapes
                .iter()
                .enumerate()
                .map(|(i, &(parent, start, len, is_stage))| {
                    let name = format!("s{i}");
                    let s = match (i, parent) {
                        (0, _) => span(&name, start, start + len),
                        (_, Some(p)) => child(&name, p % i + 1, start, start + len),
                        (_, None) => with_parent_id(span(&name, start, start + len), 10_000),
                    };
                    if is_stage || i == 0 { stage(s) } else { s }
                })
                .collect();
            numbered(spans)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn critical_path_times_sum_to_the_duration(trace in trace_strategy()) {
        let flow = analyze_flow(&[trace]).expect("non-empty");
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        prop_assert_eq!(total, flow.duration_ns());
        let path: u64 = flow.critical_path.iter().map(|s| s.end_ns - s.start_ns).sum();
        prop_assert_eq!(path, flow.duration_ns());
    }

    #[test]
    fn self_time_never_exceeds_duration(trace in trace_strategy()) {
        let flow = analyze_flow(&[trace]).expect("non-empty");
        for s in &flow.stages {
            prop_assert!(s.self_ns <= s.duration_ns, "{:?}", s);
        }
    }

    #[test]
    fn the_result_does_not_depend_on_arrival_order(
        trace in trace_strategy(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = trace.clone();
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let a = analyze_flow(&[trace]).expect("non-empty");
        let b = analyze_flow(&[shuffled]).expect("non-empty");
        prop_assert_eq!(&a.stages, &b.stages);
        prop_assert_eq!(a.duration_ns(), b.duration_ns());
    }

    #[test]
    fn stitched_flows_sum_to_their_duration(
        first in trace_strategy(),
        second in trace_strategy(),
        gap in 0u64..500,
    ) {
        let offset = first.iter().map(|s| s.end_ns).max().unwrap_or(0) + gap;
        let second: Vec<Span> = second
            .into_iter()
            .map(|mut s| {
                s.trace_id = crate::TraceId([9; 16]);
                s.start_ns += offset;
                s.end_ns += offset;
                s
            })
            .collect();
        let flow = analyze_flow(&[first, second]).expect("non-empty");
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        prop_assert_eq!(total, flow.duration_ns());
    }
}

/// Random traces at the edges: spans of three services with every span
/// kind, children anywhere around their parents (overflowing, outside,
/// skewed), producers with consumers; `links` adds a second trace linked
/// to a random span of the first.
fn edge_strategy() -> impl Strategy<Value = Vec<Vec<Span>>> {
    use crate::span::SpanKind;
    const KINDS: [SpanKind; 5] = [
        SpanKind::Unspecified,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];
    let one = || {
        (
            trace_strategy(),
            proptest::collection::vec((0usize..3, 0usize..KINDS.len()), 60),
        )
            .prop_map(|(mut spans, looks)| {
                for (s, &(svc, kind)) in spans.iter_mut().zip(&looks) {
                    s.service = ["order", "inventory", "payment"][svc].into();
                    s.business.kind = KINDS[kind];
                }
                spans
            })
    };
    (
        one(),
        proptest::option::of((one(), any::<usize>(), 0u64..800)),
    )
        .prop_map(|(first, second)| {
            let Some((second, at, offset)) = second else {
                return vec![first];
            };
            let linked = &first[at % first.len()];
            let (trace, span_id) = (linked.trace_id, linked.span_id);
            let second = second
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    s.trace_id = crate::TraceId([9; 16]);
                    s.start_ns += offset;
                    s.end_ns += offset;
                    if i == 0 {
                        s.links.push(crate::span::Link {
                            trace_id: trace,
                            span_id,
                        });
                    }
                    s
                })
                .collect();
            vec![first, second]
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// At the edges, at any clock tolerance: no stage has more time on the
    /// path than its spans lasted; the stages' times add up to the end to
    /// end; the path runs without a gap or an overlap from the flow's start
    /// to its end.
    #[test]
    fn the_path_holds_at_the_edges(
        traces in edge_strategy(),
        tolerance in prop_oneof![Just(0u64), 0u64..50],
    ) {
        let flow = crate::critical_path::analyze_flow_with(&traces, tolerance).expect("non-empty");
        for s in &flow.stages {
            if !s.stage.starts_with(paytrace_semconv::stage::ASYNC_PREFIX) {
                prop_assert!(s.critical_path_ns <= s.duration_ns, "{:?}", s);
            }
            prop_assert!(s.self_ns <= s.duration_ns, "{:?}", s);
        }
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        prop_assert_eq!(total, flow.duration_ns());
        let mut at = flow.end_ns;
        for seg in &flow.critical_path {
            prop_assert!(seg.start_ns <= seg.end_ns, "{:?}", seg);
            prop_assert_eq!(seg.end_ns, at, "a gap or an overlap: {:?}", flow.critical_path);
            at = seg.start_ns;
        }
        prop_assert_eq!(at, flow.start_ns, "{:?}", flow.critical_path);
    }

    /// At the edges, the answer does not depend on the order the spans
    /// arrived in, nor the traces.
    #[test]
    fn the_edges_do_not_depend_on_arrival_order(
        traces in edge_strategy(),
        seed in any::<u64>(),
    ) {
        let mut shuffled: Vec<Vec<Span>> = traces.iter().rev().cloned().collect();
        let mut state = seed | 1;
        for spans in &mut shuffled {
            for i in (1..spans.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                spans.swap(i, (state % (i as u64 + 1)) as usize);
            }
        }
        let a = crate::critical_path::analyze_flow_with(&traces, 1).expect("non-empty");
        let b = crate::critical_path::analyze_flow_with(&shuffled, 1).expect("non-empty");
        prop_assert_eq!(&a.stages, &b.stages);
        prop_assert_eq!((a.start_ns, a.end_ns), (b.start_ns, b.end_ns));
        let skews = |f: &crate::critical_path::FlowAnalysis| {
            let mut v: Vec<(String, i64)> =
                f.clock_skew.iter().map(|c| (c.service.to_string(), c.offset_ns)).collect();
            v.sort();
            v
        };
        prop_assert_eq!(skews(&a), skews(&b));
    }
}

/// A root with sequential stages (durations in ms, optional gaps), then
/// shifted as a millisecond clock shifts them: each span starts up to 1 ms
/// early and ends its precise duration later, as the OpenTelemetry JS SDK
/// records them. Returns the spans and each stage's true duration.
fn sequential_with_jitter() -> impl Strategy<Value = (Vec<Span>, Vec<u64>)> {
    const MS: u64 = 1_000_000;
    proptest::collection::vec((5 * MS..300 * MS, 0u64..3 * MS, 0..=MS), 1..8)
        .prop_flat_map(|stages| {
            let n = stages.len();
            (
                Just(stages),
                0..=MS,
                proptest::collection::vec(any::<bool>(), n),
            )
        })
        .prop_map(|(stages, root_jitter, nested)| {
            let mut spans = Vec::new();
            let mut durations = Vec::new();
            let mut t = 10 * MS;
            let start = t;
            for (i, &(len, gap, jitter)) in stages.iter().enumerate() {
                t += gap;
                let name = format!("stage{i}");
                let (s, e) = (t - jitter, t - jitter + len);
                spans.push(stage(child(&name, 1, s, e)));
                if nested[i] {
                    // A plain span inside the stage (its HTTP server span).
                    let parent = spans.len();
                    spans.push(child(
                        &format!("inner{i}"),
                        parent + 1,
                        s + len / 4,
                        e - len / 4,
                    ));
                }
                durations.push(len);
                t += len;
            }
            let root = stage(span("root", start - root_jitter, t + MS - root_jitter));
            let mut all = vec![root];
            all.extend(spans);
            // Children were numbered counting the root as position 1.
            (numbered(all), durations)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Millisecond clocks never move a sequential stage off the critical
    /// path: each keeps its duration, less at most the 1 ms its start moved
    /// at either end.
    #[test]
    fn millisecond_jitter_keeps_sequential_stages_on_the_path(
        (trace, durations) in sequential_with_jitter(),
    ) {
        let flow = analyze_flow(&[trace]).expect("non-empty");
        for (i, duration) in durations.iter().enumerate() {
            let name = format!("stage{i}");
            let cp = flow.stages.iter().find(|s| *s.stage == *name).map_or(0, |s| s.critical_path_ns);
            prop_assert!(
                cp + 2_000_000 >= *duration,
                "{} has {} ns on the path of its {} ns: {:?}", name, cp, duration, flow.stages
            );
        }
        let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
        prop_assert_eq!(total, flow.duration_ns());
    }
}

#[test]
fn a_hundred_thousand_span_trace_is_analysed() {
    // A 4-ary tree: span i (0-based) is the parent of 4i+1..4i+4; children
    // split their parent's interval into quarters with small gaps.
    let n = 100_000usize;
    let mut bounds = vec![(0u64, 4u64.pow(10)); n];
    let mut spans = Vec::with_capacity(n);
    for i in 0..n {
        let (start, end) = bounds[i];
        let name = format!("s{i}");
        let s = if i == 0 {
            span(&name, start, end)
        } else {
            child(&name, (i - 1) / 4 + 1, start, end)
        };
        spans.push(if i % 7 == 0 { stage(s) } else { s });
        let quarter = (end - start) / 4;
        for k in 0..4 {
            let c = 4 * i + 1 + k;
            if c < n {
                let cs = start + k as u64 * quarter;
                bounds[c] = (cs + quarter / 8, cs + quarter - quarter / 8);
            }
        }
    }
    let flow = analyze_flow(&[numbered(spans)]).expect("non-empty");
    let total: u64 = flow.stages.iter().map(|s| s.critical_path_ns).sum();
    assert_eq!(total, 4u64.pow(10));
    assert!(flow.stages.iter().all(|s| s.self_ns <= s.duration_ns));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The analysis core gives the same breakdown however the spans were
    /// batched into requests and in whatever order the batches arrived.
    #[test]
    fn the_result_does_not_depend_on_batching(
        trace in trace_strategy(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        use std::time::Instant;
        use crate::decode::Decoded;
        use crate::core::{Core, Now, PipelineConfig, Query};

        let run = |batches: Vec<Vec<Span>>| {
            let mut core = Core::new(&PipelineConfig::default());
            for spans in batches {
                core.ingest(Decoded { spans, ..Decoded::default() }, Instant::now(), &mut ());
            }
            let now = Now::at(std::time::Instant::now(), std::time::UNIX_EPOCH + std::time::Duration::from_secs(60));
            core.flush(now, &mut ());
            let view = core.view(now);
            let flow = view.flows(1, 1).pop().map(|f| f.flow).unwrap_or_default();
            serde_json::to_string(&view.breakdown(&Query::new(&flow, 1, 1))).expect("serialisable")
        };
        let whole = run(vec![trace.clone()]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (trace.len() + 1)).collect();
        points.sort_unstable();
        let mut batches = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([trace.len()]) {
            batches.push(trace[last..p].to_vec());
            last = p;
        }
        batches.reverse();
        prop_assert_eq!(whole, run(batches));
    }
}

/// Strategies for OTLP requests with every kind of span the decoders must
/// tell apart: valid and invalid ids and times, business attributes as
/// strings, numbers and other values, oversize names and values, links,
/// statuses, events and fields paytrace never reads.
mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;

    fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), len),
            1 => Just(vec![0; len]),
            1 => proptest::collection::vec(any::<u8>(), 0..20),
        ]
    }

    fn value() -> impl Strategy<Value = Option<AnyValue>> {
        let v = prop_oneof![
            4 => "[a-z0-9/]{0,12}".prop_map(any_value::Value::StringValue),
            1 => any::<i64>().prop_map(any_value::Value::IntValue),
            1 => any::<bool>().prop_map(any_value::Value::BoolValue),
            1 => any::<f64>().prop_map(any_value::Value::DoubleValue),
            1 => Just(any_value::Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(any_value::Value::StringValue("x".into())),
                }],
            })),
        ];
        proptest::option::weighted(0.9, v.prop_map(|v| AnyValue { value: Some(v) }))
    }

    fn key_value() -> impl Strategy<Value = KeyValue> {
        let key = prop_oneof![
            Just("paytrace.stage".to_owned()),
            Just("paytrace.flow".to_owned()),
            Just("paytrace.flow_id".to_owned()),
            Just("payment.method".to_owned()),
            Just("payment.channel".to_owned()),
            Just("tcc.xid".to_owned()),
            Just("tcc.phase".to_owned()),
            Just("tcc.other".to_owned()),
            Just("http.route".to_owned()),
            "[a-z.]{1,10}",
        ];
        (key, value()).prop_map(|(key, value)| KeyValue {
            key,
            value,
            ..Default::default()
        })
    }

    fn span() -> impl Strategy<Value = Span> {
        (
            (id(16), id(8), prop_oneof![Just(Vec::new()), id(8)]),
            "[a-zA-Zé /]{0,20}",
            (0u64..3, 0u64..3),
            proptest::collection::vec(key_value(), 0..8),
            proptest::collection::vec((id(16), id(8)), 0..4),
            proptest::option::of(0i32..4),
            proptest::collection::vec("[a-z]{0,5}", 0..2),
        )
            .prop_map(
                |(ids, name, times, attributes, links, status, events)| Span {
                    trace_id: ids.0,
                    span_id: ids.1,
                    parent_span_id: ids.2,
                    trace_state: "k=v".into(),
                    name,
                    kind: 2,
                    start_time_unix_nano: times.0 * 1_000,
                    end_time_unix_nano: times.1 * 1_000,
                    attributes,
                    events: events
                        .into_iter()
                        .map(|name| Event {
                            name,
                            time_unix_nano: 5,
                            ..Default::default()
                        })
                        .collect(),
                    links: links
                        .into_iter()
                        .map(|(trace_id, span_id)| Link {
                            trace_id,
                            span_id,
                            ..Default::default()
                        })
                        .collect(),
                    status: status.map(|code| Status {
                        message: "m".into(),
                        code,
                    }),
                    dropped_attributes_count: 3,
                    ..Default::default()
                },
            )
    }

    pub(crate) fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        let resource = proptest::option::of(
            (proptest::collection::vec(key_value(), 0..3), value()).prop_map(
                |(mut attributes, service)| {
                    attributes.push(KeyValue {
                        key: "service.name".into(),
                        value: service,
                        ..Default::default()
                    });
                    Resource {
                        attributes,
                        ..Default::default()
                    }
                },
            ),
        );
        let scope_spans = proptest::collection::vec(span(), 0..5).prop_map(|spans| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "scope".into(),
                ..Default::default()
            }),
            spans,
            schema_url: "s".into(),
        });
        proptest::collection::vec(
            (resource, proptest::collection::vec(scope_spans, 0..3)).prop_map(
                |(resource, scope_spans)| ResourceSpans {
                    resource,
                    scope_spans,
                    schema_url: String::new(),
                },
            ),
            0..3,
        )
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The receivers decode protobuf with their own wire decoder; OTLP/JSON
    /// and files go through OTLP messages. Both must give the same spans and
    /// the same rejections.
    #[test]
    fn the_wire_decoder_agrees_with_decoding_the_messages(request in otlp::request()) {
        use crate::decode::{Interner, SpanLimits, decode, decode_protobuf};
        use prost::Message;

        // Small limits, so that every rejection reason comes up.
        let limits = SpanLimits {
            max_name_bytes: 16,
            max_attributes: 6,
            max_links: 2,
            max_business_value_bytes: 8,
            // Both keep each span as sent, byte for byte the same.
            keep_as_sent: true,
        };
        let config = crate::config::Config::from_toml(
            "rules.toml",
            "[[rules]]\nattributes = { \"http.route\" = \"/pay\" }\nstage = \"payment.create\"\nflow = \"checkout\"\n",
        )
        .expect("valid rules");
        let body = request.encode_to_vec();
        let wire = decode_protobuf(&body, &limits, &config.rules, &mut Interner::default())
            .expect("a prost-encoded request is valid");
        let messages = decode(&request, &limits, &config.rules, &mut Interner::default());
        prop_assert_eq!(wire, messages);
    }

    /// Whatever the bytes, the wire decoder answers without panicking, and
    /// where `prost` accepts them as a request, with the same spans.
    #[test]
    fn the_wire_decoder_survives_damaged_bytes(
        request in otlp::request(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use crate::config::StageRules;
        use crate::decode::{Interner, SpanLimits, decode, decode_protobuf};
        use prost::Message;

        let mut body = request.encode_to_vec();
        if !body.is_empty() {
            let at = flip.0.index(body.len());
            body[at] ^= flip.1;
            body.truncate(cut.index(body.len() + 1));
        }
        let (limits, rules) = (SpanLimits::default(), StageRules::default());
        let wire = decode_protobuf(&body, &limits, &rules, &mut Interner::default());
        if let Ok(request) = ExportTraceServiceRequest::decode(&body[..]) {
            let messages = decode(&request, &limits, &rules, &mut Interner::default());
            prop_assert_eq!(wire, Ok(messages));
        }
    }
}
