//! Queries against ingest: the aggregator's answers while spans pour in,
//! and its intake while answers are asked for (issue 28: queries must not
//! wait on ingest, nor ingest on queries).
//!
//! ```sh
//! cargo run --release -p paytrace-bench --bin query_under_load -- 300000 50 20
//! ```
//!
//! Arguments: spans per second to offer (0: as fast as one thread can),
//! queries per second, seconds to measure. One thread decodes and ingests
//! checkout traces (`paytrace_bench::otlp`, requests of 1,000 spans) paced
//! to the rate; one ticks the pipeline every second (traces idle after
//! 1 s, flows after 2 s, so the windows fill); one asks, in turn, the 5 min
//! breakdown, the 1 h flows overview, the 20 slowest instances and the 1 h
//! series, and times each answer. Ten seconds of the same load come first,
//! unmeasured, so the windows hold minutes of data. It prints the spans
//! ingested per second and the answers' p50, p99 and maximum.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Interner, SpanLimits, decode_protobuf};
use paytrace_aggregator::pipeline::{Now, Pipeline, PipelineConfig, Protocol, Query};
use paytrace_bench::otlp::checkout_request;
use prost::Message;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES_PER_REQUEST: u64 = 100;
const SPANS_PER_REQUEST: u64 = TRACES_PER_REQUEST * 10;
const WARM_UP: Duration = Duration::from_secs(10);

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rate = arg(1, 300_000);
    let queries_per_second = arg(2, 50);
    let seconds = arg(3, 20);

    let mut config = PipelineConfig::default();
    config.assembler.trace_idle = Duration::from_secs(1);
    config.flows.flow_idle = Duration::from_secs(2);
    let pipeline = Arc::new(Pipeline::new(config));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let ingested = Arc::new(AtomicU64::new(0));

    let ingest = {
        let (pipeline, stop, measuring, ingested) = (
            pipeline.clone(),
            stop.clone(),
            measuring.clone(),
            ingested.clone(),
        );
        std::thread::spawn(move || {
            let limits = SpanLimits::default();
            let rules = StageRules::default();
            let mut interner = Interner::default();
            let start = Instant::now();
            let mut sent: u64 = 0;
            let mut next_trace = 0u64;
            // 64 distinct requests, re-encoded with new trace ids as they go.
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                if payloads.len() < 64 {
                    payloads.push(Vec::new());
                }
                let slot = (next_trace / TRACES_PER_REQUEST) as usize % payloads.len();
                payloads[slot] = checkout_request(next_trace, TRACES_PER_REQUEST).encode_to_vec();
                next_trace += TRACES_PER_REQUEST;
                let decoded = match decode_protobuf(&payloads[slot], &limits, &rules, &mut interner)
                {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("a generated request does not decode: {e}");
                        std::process::exit(1);
                    }
                };
                pipeline.ingest(Protocol::Grpc, decoded, Instant::now());
                sent += SPANS_PER_REQUEST;
                if measuring.load(Ordering::Relaxed) {
                    ingested.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
                }
            }
        })
    };
    let ticker = {
        let (pipeline, stop) = (pipeline.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                pipeline.tick(Now::current());
            }
        })
    };

    std::thread::sleep(WARM_UP);
    // The flow the checkout traces make (named by their root).
    let flow = pipeline
        .flows(60, Now::current().minute())
        .into_iter()
        .max_by_key(|f| f.traces)
        .map(|f| f.flow)
        .unwrap_or_default();
    if flow.is_empty() {
        eprintln!("no flow was recorded during the warm-up");
        std::process::exit(1);
    }
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut asked = 0u64;
    while began.elapsed() < Duration::from_secs(seconds) {
        if queries_per_second == 0 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let due = began + Duration::from_secs_f64(asked as f64 / queries_per_second as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let minute = Now::current().minute();
        let t = Instant::now();
        match asked % 4 {
            0 => {
                std::hint::black_box(pipeline.breakdown(&Query::new(&flow, 5, minute)));
            }
            1 => {
                std::hint::black_box(pipeline.flows(60, minute));
            }
            2 => {
                std::hint::black_box(pipeline.slow(&flow, None, 20));
            }
            _ => {
                std::hint::black_box(pipeline.timeseries(&Query::new(&flow, 60, minute)));
            }
        }
        latencies.push(t.elapsed());
        asked += 1;
    }
    let elapsed = began.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = ingest.join();
    let _ = ticker.join();

    let spans_per_second = ingested.load(Ordering::Relaxed) as f64 / elapsed;
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "flow {flow:?}: offered {rate} spans/s, {queries_per_second} queries/s for {seconds} s: \
         ingested {spans_per_second:.0} spans/s; {} answers, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
}
