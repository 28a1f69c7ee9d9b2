//! Instructions per span of each part of the aggregator, counted by
//! callgrind: repeatable where wall-clock time on a shared VM is not.
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin pipeline_instructions
//! for mode in setup decode full; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/pipeline_instructions $mode 100 2>&1 | grep Collected
//! done
//! ```
//!
//! `setup` only builds the encoded requests; `decode` adds protobuf decoding
//! (the floor any OTLP consumer pays); `full` adds conversion, assembly,
//! stitching, analysis, sketches and Prometheus histograms. Subtract `setup`
//! from the others and divide by the spans (`N` requests of 1,000 spans).

use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Interner, SpanLimits, decode};
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
    if !["setup", "decode", "full"].contains(&mode.as_str()) {
        eprintln!("usage: pipeline_instructions setup|decode|full [REQUESTS]");
        std::process::exit(2);
    }
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| checkout_request(i * TRACES, TRACES).encode_to_vec())
        .collect();
    let pipeline = Pipeline::new(PipelineConfig::default());
    let limits = SpanLimits::default();
    let rules = StageRules::default();
    let mut interner = Interner::default();
    let mut spans = 0usize;
    for payload in &payloads {
        if mode == "setup" {
            std::hint::black_box(payload);
            continue;
        }
        let Ok(request) = ExportTraceServiceRequest::decode(&payload[..]) else {
            eprintln!("a generated request does not decode");
            std::process::exit(1);
        };
        match mode.as_str() {
            "decode" => {
                spans += std::hint::black_box(&request).resource_spans.len();
            }
            "full" => {
                let decoded = decode(request, &limits, &rules, &mut interner);
                spans += decoded.spans.len();
                pipeline.ingest(Protocol::Grpc, decoded, Instant::now());
                pipeline.flush(0);
            }
            _ => {}
        }
    }
    println!("{mode}: {n} requests, {spans}");
}
