//! Every malformed or hostile OTLP input gets the answer the OTLP
//! specification names, is counted, and panics nothing.

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use paytrace_aggregator::receiver::ReceiverLimits;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use prost::Message;
use serde_json::Value;
use tonic_types::StatusExt;

/// An aggregator on free loopback ports, its receiver's limits the
/// defaults as `set` changes them.
async fn aggregator(set: impl FnOnce(&mut ReceiverLimits)) -> Running {
    let mut config = ServeConfig::on_free_loopback_ports();
    set(&mut config.receiver);
    start(config).await.expect("starts")
}

fn span(trace: u8, id: u8, start: u64, end: u64) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: "op".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn metric(running: &Running, line_prefix: &str) -> f64 {
    paytrace_testkit::scrape_value(&format!("http://{}/metrics", running.listen), line_prefix).await
}

async fn post(
    running: &Running,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", running.otlp_http))
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.expect("the receiver answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spans_are_rejected_through_partial_success() {
    let running = aggregator(|_| {}).await;
    let body = request(vec![
        span(1, 1, 10, 20),
        span(0, 2, 10, 20), // zero trace id
        span(1, 3, 30, 20), // ends before it starts
    ]);

    // HTTP, protobuf.
    let resp = post(
        &running,
        "application/x-protobuf",
        None,
        body.encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let decoded =
        ExportTraceServiceResponse::decode(resp.bytes().await.expect("body")).expect("protobuf");
    let partial = decoded.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial
            .error_message
            .starts_with("resourceSpans[0].scopeSpans[0].spans[1].traceId: is all zeros"),
        "{}",
        partial.error_message
    );

    // HTTP, JSON.
    let json = serde_json::to_vec(&body).expect("serialisable");
    let resp = post(&running, "application/json", None, json).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("JSON");
    // int64 may be a JSON number or a decimal string (protobuf JSON mapping).
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 2 || rejected == "2", "{v}");

    // gRPC.
    let mut client = TraceServiceClient::connect(format!("http://{}", running.otlp_grpc))
        .await
        .expect("connects");
    let resp = client
        .export(body.clone())
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(resp.partial_success.expect("partial").rejected_spans, 2);

    assert_eq!(
        metric(
            &running,
            "paytrace_aggregator_spans_dropped_total{reason=\"invalid\"}"
        )
        .await,
        6.0
    );
    assert_eq!(
        metric(
            &running,
            "paytrace_aggregator_spans_received_total{protocol=\"grpc\"}"
        )
        .await,
        3.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unsupported_and_oversize_bodies_are_refused_and_counted() {
    let running = aggregator(|r| r.max_body_bytes = 64 * 1024).await;

    let resp = post(
        &running,
        "application/x-protobuf",
        None,
        b"\xff\xff\xff garbage".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let status = tonic_types::pb::Status::decode(resp.bytes().await.expect("body"))
        .expect("a google.rpc.Status");
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");

    let resp = post(
        &running,
        "application/json",
        None,
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("JSON status");
    assert!(v["message"].as_str().expect("message").contains("JSON"));

    let resp = post(&running, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(resp.status(), 415);

    let resp = post(
        &running,
        "application/x-protobuf",
        None,
        vec![0u8; 200 * 1024],
    )
    .await;
    assert_eq!(resp.status(), 413);

    // A gzip bomb: small on the wire, over the limit once inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 1024 * 1024]).expect("compress");
    let bomb = gz.finish().expect("compressed");
    assert!(bomb.len() < 64 * 1024);
    let resp = post(&running, "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(resp.status(), 413);

    // Valid gzip is accepted.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&request(vec![span(5, 1, 10, 20)]).encode_to_vec())
        .expect("compress");
    let resp = post(
        &running,
        "application/x-protobuf",
        Some("gzip"),
        gz.finish().expect("gz"),
    )
    .await;
    assert_eq!(resp.status(), 200);

    let refused = |reason: &'static str, protocol: &'static str| {
        format!(
            "paytrace_aggregator_requests_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(
        metric(&running, &refused("malformed", "http_protobuf")).await,
        1.0
    );
    assert_eq!(
        metric(&running, &refused("malformed", "http_json")).await,
        1.0
    );
    assert_eq!(
        metric(
            &running,
            &refused("unsupported_media_type", "http_protobuf")
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&running, &refused("too_large", "http_protobuf")).await,
        2.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_name_the_field_and_long_values_are_cut_not_rejected() {
    let running = aggregator(|_| {}).await;

    // Base64 ids, as some hand-written senders write them (OTLP/JSON wants hex).
    let body = br#"{"resourceSpans":[{"scopeSpans":[{},{"spans":[
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"ok",
         "startTimeUnixNano":"1","endTimeUnixNano":"2"},
        {"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"b64",
         "startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    let resp = post(&running, "application/json", None, body.to_vec()).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("JSON status");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.contains("resourceSpans[0].scopeSpans[1].spans[1].traceId: ")
            && message.contains("hex"),
        "{message}"
    );

    // A root whose flow id is far over the limit is kept, cut and counted;
    // the response warns without rejecting anything.
    let mut root = span(7, 1, 10, 40);
    root.attributes
        .push(opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "paytrace.flow_id".into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        "x".repeat(10_000),
                    ),
                ),
            }),
            ..Default::default()
        });
    let resp = post(
        &running,
        "application/x-protobuf",
        None,
        request(vec![root]).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer =
        ExportTraceServiceResponse::decode(resp.bytes().await.expect("body")).expect("protobuf");
    let warning = answer.partial_success.expect("a warning");
    assert_eq!(warning.rejected_spans, 0);
    assert!(
        warning
            .error_message
            .contains("resourceSpans[0].scopeSpans[0].spans[0].attributes[paytrace.flow_id]"),
        "{}",
        warning.error_message
    );
    assert_eq!(
        metric(
            &running,
            "paytrace_aggregator_spans_truncated_total{reason=\"value_too_long\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &running,
            "paytrace_aggregator_spans_dropped_total{reason=\"invalid\"}"
        )
        .await,
        0.0
    );
    running.shutdown().await;
}

/// A message whose field 1 (`resource_spans`) is a number: valid protobuf,
/// not an OTLP request.
#[derive(Clone, PartialEq, prost::Message)]
struct NotARequest {
    #[prost(uint64, tag = "1")]
    resource_spans: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_malformed_and_oversize_messages_with_the_codes_otlp_names() {
    let running = aggregator(|r| r.max_body_bytes = 64 * 1024).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.otlp_grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connects");

    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let status = raw
        .unary::<_, ExportTraceServiceResponse, _>(
            tonic::Request::new(NotARequest { resource_spans: 7 }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("resource_spans"),
        "{}",
        status.message()
    );

    let mut client = TraceServiceClient::new(channel.clone());
    let big: Vec<Span> = (0..2_000u32)
        .map(|i| span(9, (i % 250 + 1) as u8, 10, 20))
        .collect();
    let big = request(big);
    assert!(big.encoded_len() > 64 * 1024);
    let status = client.export(big.clone()).await.expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Small on the wire, over the limit once decompressed.
    let mut gzip_client =
        TraceServiceClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let status = gzip_client
        .export(big)
        .await
        .expect_err("too large inflated");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // A small valid request on the same connection still goes through.
    client
        .export(request(vec![span(8, 1, 10, 20)]))
        .await
        .expect("accepted");

    let refused = |reason: &str| {
        format!(
            "paytrace_aggregator_requests_refused_total{{protocol=\"grpc\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(metric(&running, &refused("malformed")).await, 1.0);
    assert_eq!(metric(&running, &refused("too_large")).await, 2.0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_retryable_codes_with_a_delay() {
    // No request may be in flight: every request meets an overloaded receiver.
    let running = aggregator(|r| r.max_in_flight = 0).await;
    let body = request(vec![span(1, 1, 10, 20)]);

    let resp = post(
        &running,
        "application/x-protobuf",
        None,
        body.encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    let mut client = TraceServiceClient::connect(format!("http://{}", running.otlp_grpc))
        .await
        .expect("connects");
    let status = client.export(body).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let retry = status.get_details_retry_info().expect("RetryInfo attached");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(1)));

    assert_eq!(
        metric(
            &running,
            "paytrace_aggregator_requests_refused_total{protocol=\"grpc\",reason=\"overloaded\"}"
        )
        .await,
        1.0
    );
    running.shutdown().await;
}

/// With `--otlp-token-file`, a sender without a token, or with a wrong one,
/// is refused (401 / `UNAUTHENTICATED`) and counted, and the aggregator
/// keeps serving the ones that present a token; a token written to the file
/// later is accepted without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_without_a_token_are_refused_and_counted() {
    let file = paytrace_testkit::temp_file("otlp-tokens", "collector-a\n");
    let tokens = paytrace_aggregator::auth::Tokens::load(&file).expect("a token");
    let running = aggregator(|r| r.tokens = Some(std::sync::Arc::new(tokens))).await;
    let body = request(vec![span(7, 1, 10, 20)]).encode_to_vec();
    let send = |token: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/v1/traces", running.otlp_http))
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        async move { req.send().await.expect("the receiver answers") }
    };
    for token in [None, Some("guess")] {
        let refused = send(token).await;
        assert_eq!(refused.status(), 401, "{token:?}");
        assert_eq!(
            refused
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
    assert_eq!(send(Some("collector-a")).await.status(), 200);
    assert_eq!(
        metric(
            &running,
            r#"paytrace_aggregator_requests_refused_total{protocol="http_protobuf",reason="unauthenticated"}"#
        )
        .await,
        2.0
    );

    // gRPC: the same tokens in the `authorization` metadata.
    let mut client = TraceServiceClient::connect(format!("http://{}", running.otlp_grpc))
        .await
        .expect("connects");
    let export = |token: Option<&str>| {
        let mut req = tonic::Request::new(request(vec![span(8, 1, 10, 20)]));
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        req
    };
    let status = client
        .export(export(None))
        .await
        .expect_err("no token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    client
        .export(export(Some("collector-a")))
        .await
        .expect("a token is admitted");
    assert_eq!(
        metric(
            &running,
            r#"paytrace_aggregator_requests_refused_total{protocol="grpc",reason="unauthenticated"}"#
        )
        .await,
        1.0
    );

    // A rotated token: written to the file, accepted once the file is read
    // again (within about a second), without a restart.
    std::fs::write(&file, "collector-a\ncollector-b\n").expect("rotated");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while send(Some("collector-b")).await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// With `--api-token-file`, the JSON API answers 401 (counted) without a
/// token and the data with one; `/metrics` and the probes stay open for
/// Prometheus and the kubelet, which present none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_the_api_need_a_token_but_probes_and_metrics_do_not() {
    let file = paytrace_testkit::temp_file("api-tokens", "oncall-reader\n");
    let tokens = paytrace_aggregator::auth::Tokens::load(&file).expect("a token");
    let mut config = ServeConfig::on_free_loopback_ports();
    config.api_tokens = Some(std::sync::Arc::new(tokens));
    let running = start(config).await.expect("starts");
    let get = |path: &'static str, token: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(format!("http://{}{path}", running.listen));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        async move { req.send().await.expect("the API answers").status() }
    };
    for path in [
        "/api/v1/flows",
        "/api/v1/breakdown?flow=checkout",
        "/api/v1/tcc/unfinished",
    ] {
        assert_eq!(get(path, None).await, 401, "{path}");
        assert_eq!(get(path, Some("guess")).await, 401, "{path}");
        assert_eq!(get(path, Some("oncall-reader")).await, 200, "{path}");
    }
    for path in ["/metrics", "/healthz", "/readyz", "/"] {
        assert_eq!(get(path, None).await, 200, "{path} stays open");
    }
    assert_eq!(
        metric(
            &running,
            r#"paytrace_aggregator_requests_refused_total{protocol="api",reason="unauthenticated"}"#
        )
        .await,
        6.0
    );
}
