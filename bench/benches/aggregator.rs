//! Aggregator throughput, in spans per second on one core, all in one run:
//! - `decode_only`: `prost` decoding of an OTLP request into OTLP messages,
//!   the floor any OTLP consumer that decodes the messages pays;
//! - `decode_convert`: plus validation into paytrace's span model (the
//!   OTLP/JSON path);
//! - `decode_wire`: paytrace's decoder from protobuf bytes straight into its
//!   span model, what the receivers use;
//! - `full_pipeline`: `decode_wire` plus trace assembly, flow stitching,
//!   critical-path analysis and the rolling-window sketches;
//! - `full_pipeline_prost`: the same pipeline behind `decode_convert`;
//! - `grpc_loopback`: the full pipeline behind the OTLP/gRPC receiver, fed
//!   over loopback by a lean `h2` client sending bytes encoded beforehand
//!   ([`LeanGrpcClient`]), the server's pipeline flushed after each
//!   response as `full_pipeline` flushes after each request;
//! - `grpc_loopback_client_encodes`: the same with a `tonic` client that
//!   encodes each request, as an SDK does.
//!
//! The whole bench runs on one core ([`pin_to_one_core`]): the gRPC steps'
//! threads (client, the server's connection task, its blocking pool) share
//! it as the in-process steps use one, so every step's figure is spans per
//! second of one core, client included.
//!
//! `cargo bench -p paytrace-bench --bench aggregator`

use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use paytrace_aggregator::config::StageRules;
use paytrace_aggregator::decode::{Interner, SpanLimits, decode, decode_protobuf};
use paytrace_aggregator::pipeline::{Pipeline, PipelineConfig, Protocol};
use paytrace_aggregator::server::{ServeConfig, start};
use paytrace_bench::affinity::pin_to_one_core;
use paytrace_bench::grpc::LeanGrpcClient;
use paytrace_bench::otlp::checkout_request;
use prost::Message;
use prost::bytes::Bytes;

// The allocator the `paytrace-aggregator` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRACES: u64 = 100;
const SPANS: u64 = TRACES * 10;
/// Requests built at a time, with the clock stopped: 64 of 150 KB. Building
/// a sample's whole count at once (hundreds) churned over 100 MB of fresh
/// pages per sample, and the page faults and the allocator's state after
/// them moved the measured steps more than the code did.
const CHUNK: u64 = 64;

/// What one measured step does with a request's bytes.
#[derive(Clone, Copy)]
enum Step {
    DecodeOnly,
    DecodeConvert,
    DecodeWire,
    FullPipeline,
    FullPipelineProst,
}

fn throughput(c: &mut Criterion) {
    // Before any thread is started, so that every thread inherits it.
    let core = pin_to_one_core().expect("the aggregator bench runs on one core");
    eprintln!("aggregator bench: every thread on core {core}");
    let limits = SpanLimits::default();
    let rules = StageRules::default();
    let mut group = c.benchmark_group("aggregator");
    group.throughput(Throughput::Elements(SPANS));

    // Every step reads the same kind of input: a fresh request per
    // iteration, built while the clock is stopped (CHUNK at a time), as a
    // receiver gets them.
    // (Decoding one request over and over would keep its 150 KB in cache
    // and flatter the decode-only steps.)
    for (name, step) in [
        ("decode_only", Step::DecodeOnly),
        ("decode_convert", Step::DecodeConvert),
        ("decode_wire", Step::DecodeWire),
        ("full_pipeline", Step::FullPipeline),
        ("full_pipeline_prost", Step::FullPipelineProst),
    ] {
        group.bench_function(name, |b| {
            let pipeline = Pipeline::new(PipelineConfig::default());
            let mut interner = Interner::default();
            let mut next = 0u64;
            let mut run = |payloads: &[Vec<u8>]| {
                for payload in payloads {
                    let prost = || ExportTraceServiceRequest::decode(&payload[..]).expect("valid");
                    let decoded = match step {
                        Step::DecodeOnly => {
                            std::hint::black_box(prost());
                            continue;
                        }
                        Step::DecodeConvert | Step::FullPipelineProst => {
                            decode(&prost(), &limits, &rules, &mut interner)
                        }
                        Step::DecodeWire | Step::FullPipeline => {
                            decode_protobuf(payload, &limits, &rules, &mut interner).expect("valid")
                        }
                    };
                    if matches!(step, Step::DecodeConvert | Step::DecodeWire) {
                        std::hint::black_box(decoded);
                        continue;
                    }
                    pipeline.ingest(Protocol::Grpc, decoded, Instant::now());
                    pipeline.flush(paytrace_aggregator::pipeline::Now::at(
                        std::time::Instant::now(),
                        std::time::UNIX_EPOCH,
                    ));
                }
            };
            b.iter_custom(|iters| {
                timed_in_chunks(
                    iters,
                    &mut next,
                    |first| checkout_request(first, TRACES).encode_to_vec(),
                    |payloads| run(&payloads),
                )
            })
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let running = rt.block_on(async {
        start(ServeConfig::on_free_loopback_ports())
            .await
            .expect("aggregator starts")
    });
    let mut client = rt
        .block_on(TraceServiceClient::connect(format!(
            "http://{}",
            running.otlp_grpc
        )))
        .expect("connects");
    let mut next = 1_000_000u64;
    // The receiver's own cost: the client sends bytes encoded before the
    // clock starts, as an SDK in another process would (its encoding is
    // that process's work, not the receiver's).
    // The lean client and its connection task run on this thread.
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut lean = client_runtime
        .block_on(LeanGrpcClient::connect(running.otlp_grpc))
        .expect("connects");
    // Each response is followed by a flush of the server's pipeline, as the
    // in-process steps flush after every request: the two then do the same
    // analysis, and the difference is the receiver's own cost. (Without it
    // the server ticks once a second with a 15 s trace idle time, its
    // assembler fills its 100,000 traces in two seconds and evicts one for
    // every new one: a server in overflow, touching fresh pages for every
    // trace, not the receiver's cost.) The flush runs on the server's
    // blocking pool, where the server runs its own once-a-second tick and
    // where the request's spans were decoded. (On this thread instead, the
    // ratio measured the same within the VM's noise: 0.64, 0.63, 0.55×
    // against 0.56, 0.62, 0.74×, alternating.)
    let pipeline = running.pipeline.clone();
    let server = rt.handle().clone();
    let flush = move || {
        let pipeline = pipeline.clone();
        server.spawn_blocking(move || {
            pipeline.flush(paytrace_aggregator::pipeline::Now::at(
                Instant::now(),
                std::time::UNIX_EPOCH,
            ))
        })
    };
    group.bench_function("grpc_loopback", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                &mut next,
                |first| Bytes::from(checkout_request(first, TRACES).encode_to_vec()),
                |payloads| {
                    client_runtime.block_on(async {
                        for payload in payloads {
                            lean.export(payload).await.expect("accepted");
                            flush().await.expect("flushed");
                        }
                    })
                },
            )
        })
    });
    // The same, with the client's prost encoding inside the measurement
    // (both ends in this process, on the one core the bench is pinned to).
    group.bench_function("grpc_loopback_client_encodes", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                &mut next,
                |first| checkout_request(first, TRACES),
                |requests| {
                    rt.block_on(async {
                        for r in requests {
                            client.export(r).await.expect("accepted");
                            flush().await.expect("flushed");
                        }
                    })
                },
            )
        })
    });
    group.finish();
}

/// Times `run` over `iters` requests, built [`CHUNK`] at a time with the
/// clock stopped by `build` (given the first trace number of each, from
/// `next` on: fresh trace ids every time, so no span is "late").
fn timed_in_chunks<T>(
    iters: u64,
    next: &mut u64,
    build: impl Fn(u64) -> T,
    mut run: impl FnMut(Vec<T>),
) -> std::time::Duration {
    let mut elapsed = std::time::Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let requests: Vec<T> = (0..n).map(|i| build((*next + i) * TRACES)).collect();
        *next += n;
        let start = Instant::now();
        run(requests);
        elapsed += start.elapsed();
    }
    elapsed
}

criterion_group!(benches, throughput);
criterion_main!(benches);
