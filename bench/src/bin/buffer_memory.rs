//! Bytes of memory per span buffered in the aggregator's assembler, measured
//! as the growth of the process's resident set (Linux `/proc/self/statm`)
//! while 500,000 decoded spans (50,000 ten-span traces) wait for completion.
//!
//! `cargo run --release -p paytrace-bench --bin buffer_memory [--kept]`
//!
//! `--kept` keeps each span as sent, as `serve --forward-otlp` does.

use std::time::Instant;

use paytrace_aggregator::assembler::{Assembler, AssemblerLimits};
use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Interner, SpanLimits, decode, decode_protobuf};
use paytrace_bench::otlp::checkout_request;
use prost::Message;

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    const TRACES_PER_REQUEST: u64 = 100;
    const REQUESTS: u64 = 500;
    let spans = TRACES_PER_REQUEST * REQUESTS * 10;
    let mut assembler = Assembler::new(AssemblerLimits::default());
    let mut interner = Interner::default();
    let mut limits = SpanLimits::default();
    limits.keep_as_sent = std::env::args().any(|a| a == "--kept");
    let rules = StageRules::default();
    // Decode outside the measured growth: requests are built and dropped one
    // at a time, only the spans stay.
    let now = Instant::now();
    let warm = decode(
        &checkout_request(u64::MAX / 2, 1),
        &limits,
        &rules,
        &mut interner,
    );
    drop(warm);
    let Some(before) = resident_bytes() else {
        eprintln!("error: /proc/self/statm is not readable; this measurement needs Linux");
        std::process::exit(1);
    };
    for r in 0..REQUESTS {
        // As the receivers do: protobuf bytes, one interner per request.
        let body = checkout_request(r * TRACES_PER_REQUEST, TRACES_PER_REQUEST).encode_to_vec();
        let Ok(decoded) = decode_protobuf(&body, &limits, &rules, &mut Interner::default()) else {
            eprintln!("error: a generated request does not decode");
            std::process::exit(1);
        };
        assembler.add(decoded.spans, now);
    }
    let after = resident_bytes().unwrap_or(before);
    let grown = after.saturating_sub(before);
    println!(
        "{spans} spans buffered in {} traces: resident set grew {} bytes = {:.0} bytes/span (assembler's own estimate {:.0} bytes/span)",
        assembler.live_traces(),
        grown,
        grown as f64 / spans as f64,
        assembler.bytes() as f64 / spans as f64,
    );
}
