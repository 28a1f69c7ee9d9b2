//! Two aggregator replicas give the same alerts as one.
//!
//! Replicas behind a Collector that routes by flow id each export their
//! share of the families about flows (`paytrace_semconv::metric::SPLIT_ACROSS_REPLICAS`).
//! First every rule and dashboard query is read: each selector of such a
//! family sits in an aggregation that drops the target labels, `max` for
//! the oldest-age gauge and `sum`/`count` for the rest. Then a real
//! Prometheus, with the shipped rules (every `for:` shortened), scrapes one
//! aggregator that receives every checkout as `cluster="single"` and two
//! replicas that split the same checkouts by flow id as
//! `cluster="replicated"`: the same alerts fire in both, and every
//! recording rule gives the same series with the same value.
//!
//! Needs `prometheus` (Debian package).

mod monitoring;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monitoring::*;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_semconv::metric;
use paytrace_testkit::checkout::{CheckoutFlow, METHODS, replica_for};
use serde_json::Value;

/// Every selector of a family split across replicas, in `expr`, that is
/// not read through an aggregation adding up the replicas.
fn replica_problems(at: &str, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for s in selectors(expr) {
        let family = metric::SPLIT_ACROSS_REPLICAS.iter().find(|f| {
            s.metric
                .strip_prefix(**f)
                .is_some_and(|rest| ["", "_bucket", "_count", "_sum"].contains(&rest))
        });
        let Some(family) = family else { continue };
        let allowed: &[&str] = if family.ends_with("_oldest_seconds") {
            &["max", "count"]
        } else {
            &["sum", "count"]
        };
        match &s.aggregation {
            None => problems.push(format!("{at}: {} is read per replica", s.metric)),
            Some((op, labels)) => {
                if !allowed.contains(&op.as_str()) {
                    problems.push(format!(
                        "{at}: {} is aggregated with {op}, not {allowed:?}",
                        s.metric
                    ));
                }
                let keeps_target = labels.iter().any(|l| l == "instance" || l == "pod");
                let drops_target = labels.iter().any(|l| l == "!instance");
                let without = labels.iter().any(|l| l.starts_with('!'));
                if keeps_target || (without && !drops_target) {
                    problems.push(format!(
                        "{at}: {} is grouped by {labels:?}, which keeps the replicas apart",
                        s.metric
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn every_query_of_a_flow_family_adds_up_the_replicas() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, rule) in rules() {
        let name = rule
            .get("alert")
            .or_else(|| rule.get("record"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let expr = text(&rule, "expr");
        checked += selectors(&expr).len();
        problems.extend(replica_problems(
            &format!("{} {name}", path.display()),
            &expr,
        ));
    }
    for path in files("dashboards", ".json") {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
            .expect("JSON");
        for p in doc["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let expr = grafana_substituted(e);
                    checked += selectors(&expr).len();
                    problems.extend(replica_problems(
                        &format!("{} panel {}", path.display(), p["title"]),
                        &expr,
                    ));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} selectors read");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check itself finds what it must.
    for bad in [
        "rate(paytrace_flows_incomplete_total[5m]) > 0",
        "sum by (instance, flow) (rate(paytrace_flow_duration_seconds_count[5m]))",
        "sum without (flow) (rate(paytrace_flow_duration_seconds_count[5m]))",
        "max(paytrace_tcc_transactions_unfinished)",
        "sum(paytrace_tcc_unfinished_oldest_seconds)",
    ] {
        assert!(
            !replica_problems("case", bad).is_empty(),
            "not found wrong: {bad}"
        );
    }
}

const REPLICAS: usize = 2;

/// The checkouts of one batch: as many flows as it takes for each replica
/// to get `per_replica`, each replica's share cycling through the shapes
/// (so every replica holds every shape and payment method), `next` the
/// first index.
fn batch(next: &mut u64, per_replica: usize, t0: u64) -> Vec<(usize, CheckoutFlow)> {
    let mut counts = [0usize; REPLICAS];
    let mut out = Vec::new();
    while counts.iter().any(|c| *c < per_replica) {
        let mut flow = CheckoutFlow::new(*next, t0);
        *next += 1;
        let to = replica_for(&flow.flow_id(), REPLICAS);
        let n = counts[to];
        counts[to] += 1;
        flow.method = METHODS[n % 3];
        match n % 10 {
            // Slower than the 2.5 s checkout objective: 20% burns the budget.
            0 | 1 => flow.request_ms = 3_000,
            // The channel never calls back: 10% incomplete.
            2 => flow.callback_after_ms = None,
            3 => flow.undecided_try = true,
            4 => flow.decision_violated = true,
            _ => {}
        }
        out.push((to, flow));
    }
    out
}

fn prometheus_config(
    dir: &std::path::Path,
    rules: &[String],
    single: &str,
    replicas: &[String],
) -> String {
    let jobs = [
        Job {
            name: "aggregator-single",
            cluster: Some("single"),
            targets: vec![single.to_owned()],
        },
        Job {
            name: "aggregator-replicated",
            cluster: Some("replicated"),
            targets: replicas.to_vec(),
        },
    ];
    write_prometheus_config(dir, rules, &jobs)
}

fn config() -> ServeConfig {
    let mut config = ServeConfig::on_free_loopback_ports();
    config
        .pipeline
        .flows
        .terminal_stages
        .insert("checkout".into(), "channel.callback".into());
    config.pipeline.assembler.trace_idle = Duration::from_millis(300);
    config.pipeline.flows.flow_idle = Duration::from_millis(300);
    config.pipeline.flows.flow_timeout = Duration::from_millis(600);
    config.pipeline.tcc.timeout = Duration::from_secs(2);
    config
}

/// Per cluster, the value of `promql` (a `sum by (cluster)`).
async fn by_cluster(client: &reqwest::Client, port: u16, promql: &str) -> BTreeMap<String, f64> {
    query(client, port, promql)
        .await
        .iter()
        .filter_map(|s| {
            let cluster = s["metric"]["cluster"].as_str()?.to_owned();
            let value = s["value"][1].as_str()?.parse().ok()?;
            Some((cluster, value))
        })
        .collect()
}

/// Waits until Prometheus holds, for both clusters, `expected` of every
/// query; panics with what it holds after `within`.
async fn until_scraped(
    client: &reqwest::Client,
    port: u16,
    expected: &[(&str, f64)],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut held = Vec::new();
        for (promql, want) in expected {
            let got = by_cluster(client, port, promql).await;
            let ok = ["single", "replicated"]
                .iter()
                .all(|c| got.get(*c) == Some(want));
            held.push((ok, format!("{promql}: want {want} in both, hold {got:?}")));
        }
        if held.iter().all(|(ok, _)| *ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never held the checkouts sent:\n{}",
            held.into_iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn send(single: &Running, replicas: &[Running], flows: &[(usize, CheckoutFlow)]) {
    for (to, flow) in flows {
        let body = flow.otlp_json();
        paytrace_testkit::post_otlp_json(replicas[*to].otlp_http, &body).await;
        paytrace_testkit::post_otlp_json(single.otlp_http, &body).await;
    }
}

/// How many of `flows` complete, and how many stay incomplete.
fn complete_and_incomplete(flows: &[(usize, CheckoutFlow)]) -> (f64, f64) {
    let missing = flows
        .iter()
        .filter(|(_, f)| f.callback_after_ms.is_none())
        .count();
    ((flows.len() - missing) as f64, missing as f64)
}

#[test]
fn two_replicas_fire_the_same_alerts_as_one_aggregator() {
    let dir = std::env::temp_dir().join(format!("paytrace-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("prometheus")).expect("temp dir");
    let rules = drill_rules(&dir);
    // Every group evaluated each second, as the global interval (the SLO
    // groups take 30 s and 5 min), so the burn alerts follow in seconds.
    for path in &rules {
        let mut doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("rules")).expect("YAML");
        for group in doc["groups"].as_sequence_mut().into_iter().flatten() {
            if let Some(map) = group.as_mapping_mut() {
                map.remove("interval");
            }
        }
        std::fs::write(path, serde_yaml_ng::to_string(&doc).expect("YAML")).expect("write rules");
    }
    let port = paytrace_testkit::free_port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (alerts, problems, with_data) = rt.block_on(async {
        let single = start(config()).await.expect("the single aggregator starts");
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            replicas.push(start(config()).await.expect("a replica starts"));
        }
        let targets: Vec<String> = replicas.iter().map(|r| r.listen.to_string()).collect();
        let config = prometheus_config(&dir, &rules, &single.listen.to_string(), &targets);
        let _prometheus = spawn_prometheus(&config, &dir, port);
        let client = reqwest::Client::new();
        let t0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            - 60_000_000_000;

        // The first batch makes every series on every replica; Prometheus
        // must have seen them before the second batch counts, or a rate
        // would miss a series' first increase in one cluster only.
        let mut next = 0;
        let first = batch(&mut next, 30, t0);
        send(&single, &replicas, &first).await;
        let (complete, incomplete) = complete_and_incomplete(&first);
        let settled = [
            (
                "sum by (cluster) (paytrace_flow_duration_seconds_count)",
                complete,
            ),
            (
                "sum by (cluster) (paytrace_flows_incomplete_total)",
                incomplete,
            ),
        ];
        until_scraped(&client, port, &settled, Duration::from_secs(60)).await;
        let second = batch(&mut next, 300, t0);
        send(&single, &replicas, &second).await;
        let (more, more_incomplete) = complete_and_incomplete(&second);
        let settled = [
            (
                "sum by (cluster) (paytrace_flow_duration_seconds_count)",
                complete + more,
            ),
            (
                "sum by (cluster) (paytrace_flows_incomplete_total)",
                incomplete + more_incomplete,
            ),
        ];
        until_scraped(&client, port, &settled, Duration::from_secs(60)).await;

        // Each cluster's series are scraped and evaluated on their own
        // schedule: compare until the two agree, for up to 30 s.
        // Recording rules that read a metric (not constants such as an
        // SLO's objective, the same for every cluster).
        let recorded: BTreeSet<String> = monitoring::rules()
            .iter()
            .filter(|(_, r)| {
                !metric_names(&text(r, "expr"))
                    .unwrap_or_default()
                    .is_empty()
            })
            .filter_map(|(_, r)| r.get("record").and_then(|r| r.as_str()).map(str::to_owned))
            .collect();
        let expected = [
            "CheckoutLatencyBurnRateFast",
            "PaymentCallbacksMissing",
            "TccDecisionViolated",
            "TccTransactionsUnfinished",
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alerts: Vec<Value> = firing(&client, port)
                .await
                .into_iter()
                .filter(|a| a["labels"]["alertname"] != "Watchdog")
                .collect();
            let names: BTreeSet<String> = alerts
                .iter()
                .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
                .collect();
            let mut problems = apart(
                "alerts",
                ["single", "replicated"],
                &alerts,
                |a| &a["labels"],
            );
            for name in expected {
                if !names.contains(name) {
                    problems.push(format!("{name} does not fire"));
                }
            }
            let mut with_data = BTreeSet::new();
            for name in &recorded {
                let series = query(&client, port, name).await;
                problems.extend(apart(
                    name,
                    ["single", "replicated"],
                    &series,
                    |s| &s["metric"],
                ));
                if !series.is_empty() {
                    with_data.insert(name.clone());
                }
                problems.extend(values_differ(name, &series));
            }
            if problems.is_empty() || Instant::now() > deadline {
                for r in replicas {
                    r.shutdown().await;
                }
                single.shutdown().await;
                return (names, problems, with_data);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        problems.is_empty(),
        "two replicas and one aggregator disagree:\n{}\nfiring: {alerts:?}",
        problems.join("\n")
    );
    let from_flows = recorded_from_flows();
    assert!(
        from_flows.is_subset(&with_data),
        "recording rules over the flow families without data: {:?}",
        from_flows.difference(&with_data).collect::<Vec<_>>()
    );
}

/// The recording rules that read a family split across replicas, directly
/// or through another such rule.
fn recorded_from_flows() -> BTreeSet<String> {
    let rules: Vec<(String, BTreeSet<String>)> = monitoring::rules()
        .iter()
        .filter_map(|(_, r)| {
            let name = r.get("record")?.as_str()?.to_owned();
            Some((name, metric_names(&text(r, "expr")).unwrap_or_default()))
        })
        .collect();
    let mut found: BTreeSet<String> = BTreeSet::new();
    loop {
        let before = found.len();
        for (name, reads) in &rules {
            let from_flows = reads.iter().any(|m| {
                found.contains(m)
                    || metric::SPLIT_ACROSS_REPLICAS
                        .iter()
                        .any(|f| m.starts_with(f))
            });
            if from_flows {
                found.insert(name.clone());
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Twins (same labels but the cluster's) whose values differ by more than
/// 5%: each cluster's series are scraped and evaluated at their own
/// instants, so a rate's extrapolation, and an average over the rates
/// recorded since the checkouts came, differ a little. A rule that kept
/// the replicas apart, or took one replica's share, differs by half.
fn values_differ(name: &str, series: &[Value]) -> Vec<String> {
    let mut by_key: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in series {
        if let Some(v) = s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) {
            by_key.entry(twin_key(&s["metric"])).or_default().push(v);
        }
    }
    by_key
        .into_iter()
        .filter_map(|(key, values)| match values[..] {
            [a, b] if (a - b).abs() > 0.05 * a.abs().max(b.abs()) => {
                Some(format!("{name} {key}: {a} and {b}"))
            }
            _ => None,
        })
        .collect()
}
