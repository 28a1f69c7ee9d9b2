//! The smallest service that uses paytrace.
//!
//! `GET /orders/{id}` runs one business stage, `order.create`, which calls this
//! same process's `GET /inventory/{id}` over real HTTP, so one request shows a
//! two-hop trace: server span → stage → client span → server span. The
//! inventory handler holds a unit of a pool (a USE resource). `/metrics`
//! shows the RED, stage and USE families.
//!
//! ```text
//! paytrace-minimal --listen 127.0.0.1:8080
//! curl -H 'baggage: paytrace.flow=checkout,payment.method=alipay' localhost:8080/orders/42
//! curl localhost:8080/metrics
//! ```
//! Spans go to the OTLP collector named by `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (default `http://localhost:4317`); with none running they are dropped and
//! counted in `paytrace_spans_dropped_total`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use paytrace::{Client, Pool, ServiceTelemetry};

#[derive(Parser, Debug)]
#[command(version, about = "A minimal axum service instrumented with paytrace")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Clone)]
struct App {
    svc: ServiceTelemetry,
    http: Client,
    self_url: String,
    stock_db: Pool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let _telemetry = paytrace::init("paytrace-minimal")?;

    let svc = ServiceTelemetry::new("minimal", env!("CARGO_PKG_VERSION"));
    svc.monitor_runtime(&tokio::runtime::Handle::current());

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let app = App {
        http: svc.client(reqwest::Client::new()),
        self_url: format!("http://{addr}"),
        stock_db: svc.pool("stock_db", 4),
        svc: svc.clone(),
    };
    let router = Router::new()
        .route("/orders/{id}", get(get_order))
        .route("/inventory/{id}", get(get_inventory))
        .layer(svc.http_layer().timeout(Duration::from_secs(10)))
        .route("/metrics", svc.metrics_route())
        .with_state(app);

    tracing::info!(%addr, "paytrace-minimal listening: try GET /orders/42 and /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// An order and the stock the inventory service reported for it.
#[derive(serde::Serialize)]
struct Order {
    id: String,
    stock: serde_json::Value,
}

async fn get_order(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Order>, (StatusCode, String)> {
    let url = format!("{}/inventory/{id}", app.self_url);
    let stock = app
        .svc
        .stage("order.create")
        .attribute("order.id", &id)
        .run(async {
            let response = app.http.get(&url).send().await?.error_for_status()?;
            response.json::<serde_json::Value>().await
        })
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("inventory call failed: {e}"),
            )
        })?;
    Ok(Json(Order { id, stock }))
}

async fn get_inventory(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let _conn = app
        .stock_db
        .acquire_timeout(Duration::from_secs(1))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(serde_json::json!({ "item": id, "available": 7 })))
}
