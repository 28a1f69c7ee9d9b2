//! `paytrace-demo`: an e-commerce checkout across nine services, traced with
//! paytrace, broken down live by the in-process aggregator.
//!
//! `cargo run --release -p paytrace-demo` starts everything on
//! `127.0.0.1:7100..` and drives checkouts until Ctrl-C.

// A binary: its modules' `pub` items are visible to the crate only.
#![allow(unreachable_pub)]

mod broker;
mod channel;
mod chaos;
mod demo;
mod exposition;
mod gateway;
mod load;
mod order;
mod participant;
mod payment;
mod plan;
mod saturation;
mod service;
mod settle;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::chaos::{Chaos, ChaosChannel, Fault};
use crate::plan::{DEFAULT_PORT_BASE, Plan, Role};

/// A TCC participant of the shop, as `--without-fence` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Participant {
    /// Stock.
    Inventory,
    /// Coupons.
    Coupon,
    /// Loyalty points.
    Points,
}

impl Participant {
    fn role(self) -> Role {
        match self {
            Self::Inventory => Role::Inventory,
            Self::Coupon => Role::Coupon,
            Self::Points => Role::Points,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "paytrace-demo",
    version,
    about = "A traced e-commerce checkout: gateway, order, inventory, payment, points, coupon and mock payment channels, each its own process",
    long_about = "A traced e-commerce checkout: gateway, order, inventory, payment, points, coupon and mock payment channels (alipay, wechat_pay, card), each its own process on 127.0.0.1. The aggregator runs in this process. Ports: gateway BASE, order BASE+1, inventory BASE+2, payment BASE+3, points BASE+4, coupon BASE+5, alipay BASE+6, wechat_pay BASE+7, card BASE+8; aggregator OTLP/gRPC BASE+17, OTLP/HTTP BASE+18, API BASE+80.\n\nSampling: the standard variables, read here and passed to every service. OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1 keeps 10% of checkouts, every trace of a kept checkout (request, channel callback, queue consumer) alike; the aggregator reads each span's threshold (tracestate ot=th:...) and reports estimated_flows for the whole population."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// First port; every other port is an offset from it.
    #[arg(long, env = "PAYTRACE_DEMO_PORT_BASE", default_value_t = DEFAULT_PORT_BASE)]
    port_base: u16,
    /// Checkouts per second.
    #[arg(long, env = "PAYTRACE_DEMO_RPS", default_value_t = 10.0)]
    rps: f64,
    /// Stop after this long (`90s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, env = "PAYTRACE_DEMO_DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write the final report (JSON) here.
    #[arg(long, env = "PAYTRACE_DEMO_REPORT")]
    report: Option<PathBuf>,
    /// Send OTLP to this endpoint (`http://host:4317`) instead of the
    /// in-process aggregator.
    #[arg(long, env = "PAYTRACE_DEMO_AGGREGATOR")]
    aggregator: Option<String>,
    /// Start the faults of `--chaos` only this long after the start
    /// (`40s`), so that a run has a before and an after; the report then
    /// compares the minutes since with those before (`changes`).
    #[arg(long, env = "PAYTRACE_DEMO_CHAOS_AFTER", value_parser = humantime::parse_duration)]
    chaos_after: Option<Duration>,
    /// The Prometheus that scrapes the services (`http://127.0.0.1:9090`):
    /// the aggregator's `/api/v1/changes` and the report then name the USE
    /// signals that moved with each change.
    #[arg(long, env = "PAYTRACE_DEMO_PROMETHEUS")]
    prometheus: Option<String>,
    /// Start the services only: no load, no live view.
    #[arg(long, env = "PAYTRACE_DEMO_SERVICES_ONLY")]
    services_only: bool,
    #[command(flatten)]
    services: ServiceOptions,
}

/// How the services behave: shared by the demo and each service process.
#[derive(clap::Args, Debug, Clone)]
struct ServiceOptions {
    /// Faults to inject (repeat or separate with commas).
    #[arg(long, env = "PAYTRACE_DEMO_CHAOS", value_enum, value_delimiter = ',')]
    chaos: Vec<Fault>,
    /// The channel that channel faults hit.
    #[arg(long, env = "PAYTRACE_DEMO_CHAOS_CHANNEL", value_enum, default_value_t = ChaosChannel::Alipay)]
    chaos_channel: ChaosChannel,
    /// Participants (`inventory`, `coupon`, `points`) that run their phases
    /// without the TCC fence, as a team that has not adopted it does: the
    /// aggregator's shadow fence report (`/api/v1/tcc/shadow`) shows what
    /// the fence would have prevented there.
    #[arg(
        long,
        env = "PAYTRACE_DEMO_WITHOUT_FENCE",
        value_enum,
        value_delimiter = ','
    )]
    without_fence: Vec<Participant>,
    /// Keep inventory stock in this Redis (`redis://127.0.0.1:6379/`),
    /// reserved atomically with Lua, instead of in memory.
    #[arg(long, env = "PAYTRACE_DEMO_REDIS")]
    redis: Option<String>,
    /// Keep the participants' ledgers (inventory, coupon, points, payment)
    /// and their TCC fences in this database (`postgres://user@host/db`,
    /// or `sqlite://PATH` for one shared file) instead of an SQLite file
    /// each in the temporary directory.
    #[arg(long, env = "PAYTRACE_DEMO_DATABASE_URL")]
    database_url: Option<String>,
    /// Carry the payment's notifications to the order service through this
    /// message broker instead of an HTTP call: Redis Streams
    /// (`redis://127.0.0.1:6379/`) or RabbitMQ
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`, optionally
    /// `#http://127.0.0.1:15672` for its management API), written to an
    /// outbox with the payment's Confirm and applied once through the
    /// order's inbox.
    #[arg(long, env = "PAYTRACE_DEMO_BROKER")]
    broker: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one service (the demo starts each this way).
    #[command(hide = true)]
    Service {
        /// Which service.
        #[arg(long, value_enum)]
        role: Role,
        /// First port.
        #[arg(long, default_value_t = DEFAULT_PORT_BASE)]
        port_base: u16,
        #[command(flatten)]
        services: ServiceOptions,
        /// Stop when standard input closes (the demo that started us is gone).
        #[arg(long)]
        exit_with_parent: bool,
        /// The faults start at this Unix time, in milliseconds (the demo
        /// turns `--chaos-after` into it).
        #[arg(long)]
        chaos_at_unix_ms: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Service {
                role,
                port_base,
                services,
                exit_with_parent,
                chaos_at_unix_ms,
            }) => {
                let from =
                    chaos_at_unix_ms.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
                service::run(
                    role,
                    Plan { base: port_base },
                    Chaos::new(&services.chaos, services.chaos_channel.role()).starting_at(from),
                    services.without_fence.iter().any(|p| p.role() == role),
                    service::Backends {
                        redis: services.redis,
                        database: services.database_url,
                        broker: services.broker,
                    },
                    exit_with_parent,
                )
                .await
            }
            None => {
                let d = cli.demo;
                demo::run(demo::Options {
                    plan: Plan { base: d.port_base },
                    rps: d.rps,
                    duration: d.duration,
                    report: d.report,
                    aggregator: d.aggregator,
                    services_only: d.services_only,
                    chaos: d.services.chaos,
                    chaos_after: d.chaos_after,
                    prometheus: d.prometheus,
                    chaos_channel: d.services.chaos_channel.role(),
                    without_fence: d.services.without_fence.iter().map(|p| p.role()).collect(),
                    redis: d.services.redis,
                    database_url: d.services.database_url,
                    broker: d.services.broker,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
