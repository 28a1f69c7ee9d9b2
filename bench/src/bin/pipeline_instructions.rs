//! Instructions per span of each part of the aggregator, counted by
//! callgrind: repeatable where wall-clock time on a shared VM is not.
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin pipeline_instructions
//! for mode in setup decode convert wire full full-prost wire-kept full-kept; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/pipeline_instructions $mode 100 2>&1 | grep Collected
//! done
//! ```
//!
//! `setup` only builds the encoded requests; `decode` adds `prost` decoding
//! into OTLP messages (the floor of a consumer that decodes them);
//! `convert` adds their conversion into paytrace's spans; `wire` is
//! paytrace's own decoder from bytes to spans instead; `full` adds to `wire`
//! assembly, stitching, analysis, sketches and Prometheus histograms, and
//! `full-prost` the same to `convert`; `wire-kept` and `full-kept` are
//! `wire` and `full` keeping each span as sent, as `serve --forward-otlp`
//! does (the cost of forwarding before anything is sent). Subtract `setup`
//! from the others and
//! divide by the spans (`N` requests of 1,000 spans).

use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Decoded, Interner, SpanLimits, decode, decode_protobuf};
use paytrace_aggregator::pipeline::{Pipeline, PipelineConfig, Protocol};
use paytrace_bench::otlp::checkout_request;
use prost::Message;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: u64 = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let modes = [
        "setup",
        "decode",
        "convert",
        "wire",
        "full",
        "full-prost",
        "wire-kept",
        "full-kept",
    ];
    if !modes.contains(&mode.as_str()) {
        eprintln!(
            "usage: pipeline_instructions {} [REQUESTS]",
            modes.join("|")
        );
        std::process::exit(2);
    }
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| checkout_request(i * TRACES, TRACES).encode_to_vec())
        .collect();
    let pipeline = Pipeline::new(PipelineConfig::default());
    let mut limits = SpanLimits::default();
    limits.keep_as_sent = mode.ends_with("-kept");
    let rules = StageRules::default();
    let mut interner = Interner::default();
    let mut spans = 0usize;
    for payload in &payloads {
        if mode == "setup" {
            std::hint::black_box(payload);
            continue;
        }
        let (decoded, into_pipeline): (Decoded, bool) = match mode.as_str() {
            "decode" => {
                let request = prost_decode(payload);
                spans += std::hint::black_box(&request).resource_spans.len();
                continue;
            }
            "convert" | "full-prost" => (
                decode(&prost_decode(payload), &limits, &rules, &mut interner),
                mode == "full-prost",
            ),
            _ => match decode_protobuf(payload, &limits, &rules, &mut interner) {
                Ok(decoded) => (decoded, mode == "full" || mode == "full-kept"),
                Err(e) => {
                    eprintln!("a generated request does not decode: {e}");
                    std::process::exit(1);
                }
            },
        };
        spans += decoded.spans.len();
        if into_pipeline {
            pipeline.ingest(Protocol::Grpc, decoded, Instant::now());
            pipeline.flush(paytrace_aggregator::pipeline::Now::at(
                std::time::Instant::now(),
                std::time::UNIX_EPOCH,
            ));
        }
    }
    println!("{mode}: {n} requests, {spans}");
}

fn prost_decode(payload: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(payload).unwrap_or_else(|e| {
        eprintln!("a generated request does not decode: {e}");
        std::process::exit(1);
    })
}
