//! Shared by the monitoring tests: the shipped rules, promtool tests and
//! dashboards, and the metric names their PromQL reads.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use promql_parser::parser::Expr;
use serde_yaml_ng::Value;

/// A child process (with every process it started) that is killed, and
/// reaped, when dropped.
pub(crate) use paytrace_testkit::Process as Killed;

/// Runs the demo binary with `args` (its sampler from `env` only: the
/// test's own `OTEL_TRACES_SAMPLER*` are not passed on) until it stops, and
/// returns the report it writes.
pub(crate) fn demo_report(name: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let report =
        std::env::temp_dir().join(format!("paytrace-demo-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_paytrace-demo"))
        .args(args)
        .arg("--report")
        .arg(&report)
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .envs(env.iter().copied())
        .output()
        .expect("the demo runs");
    assert!(
        out.status.success(),
        "demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written"))
            .expect("report is JSON");
    // Figures from an overloaded demo describe the overload: a queue or pool
    // that saturated without the chaos asking for it fails the test here,
    // with what the demo saw.
    let saturated: Vec<&str> = report["saturation"]
        .as_array()
        .expect("the report says what saturated")
        .iter()
        .filter(|s| s["injected"] != true)
        .filter_map(|s| s["message"].as_str())
        .collect();
    assert!(
        saturated.is_empty(),
        "the demo {name} ran saturated; its figures are not the design's:\n{}",
        saturated.join("\n")
    );
    report
}

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} files in {dir}");
    out
}

pub(crate) fn rule_files() -> Vec<PathBuf> {
    files("alerts", ".rules.yml")
}

pub(crate) fn test_files() -> Vec<PathBuf> {
    files("alerts/tests", ".test.yml")
}

pub(crate) fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn promtool(args: &[&str], files: &[PathBuf]) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let out = Command::new(&promtool)
        .args(args)
        .args(files)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {promtool} ({e}): install it with `apt-get install prometheus`")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every rule of every rule file, with the file it is in.
pub(crate) fn rules() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = yaml(&path);
        for group in doc["groups"].as_sequence().expect("groups") {
            assert!(
                group.get("labels").is_none() && group.get("query_offset").is_none(),
                "{}: group {:?} uses a field Prometheus 2.42 rejects",
                path.display(),
                group["name"]
            );
            for rule in group["rules"].as_sequence().expect("rules") {
                out.push((path.clone(), rule.clone()));
            }
        }
    }
    out
}

pub(crate) fn alerts() -> Vec<(PathBuf, Value)> {
    rules()
        .into_iter()
        .filter(|(_, r)| r.get("alert").is_some())
        .collect()
}

pub(crate) fn text(v: &Value, key: &str) -> String {
    v[key].as_str().map(str::to_owned).unwrap_or_default()
}

/// The metric names `expr` reads (recording rules' names included).
pub(crate) fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    fn walk(e: &Expr, out: &mut BTreeSet<String>) {
        match e {
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(p) = &a.param {
                    walk(p, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::VectorSelector(v) => {
                if let Some(n) = &v.name {
                    out.insert(n.clone());
                }
            }
            Expr::MatrixSelector(m) => {
                if let Some(n) = &m.vs.name {
                    out.insert(n.clone());
                }
            }
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let parsed = promql_parser::parser::parse(expr)?;
    let mut out = BTreeSet::new();
    walk(&parsed, &mut out);
    Ok(out)
}

/// A Grafana query with its variables replaced by values PromQL accepts:
/// `$__rate_interval` by `5m`, any other `$name` or `${name}` by `value`.
pub(crate) fn grafana_substituted(expr: &str) -> String {
    let expr = expr.replace("$__rate_interval", "5m");
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        while chars
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            chars.next();
        }
        if braced {
            chars.next();
        }
        out.push_str("value");
    }
    out
}

/// Starts `program`, killed when dropped; a missing program says which
/// Debian package installs it.
pub(crate) fn spawn(program: &str, args: &[String], package: &str) -> Killed {
    Killed::spawn(
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        &format!("apt-get install {package}"),
    )
}

/// The shipped rule files with every `for:` shortened to `3s`.
pub(crate) fn drill_rules(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for path in rule_files() {
        let mut doc = yaml(&path);
        for group in doc["groups"].as_sequence_mut().into_iter().flatten() {
            for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
                if let Some(map) = rule.as_mapping_mut()
                    && map.contains_key("for")
                {
                    map.insert("for".into(), "3s".into());
                }
            }
        }
        let name = path.file_name().expect("a file name");
        let copy = dir.join(name);
        std::fs::write(&copy, serde_yaml_ng::to_string(&doc).expect("YAML")).expect("write rules");
        out.push(copy.to_string_lossy().into_owned());
    }
    out
}

/// A vector selector of a PromQL expression, with where it sits.
pub(crate) struct Selector {
    /// The metric name.
    pub(crate) metric: String,
    /// The matchers, as `name op "value"`.
    pub(crate) matchers: Vec<String>,
    /// Inside a function that turns a counter into a rate (`rate`,
    /// `irate`, `increase`, `resets`, `changes`).
    pub(crate) in_rate: bool,
    /// The nearest aggregation around it: its operator and the labels it
    /// keeps (`by`) or the labels it drops (`without`, as `!label`).
    pub(crate) aggregation: Option<(String, Vec<String>)>,
}

/// Every vector selector in the PromQL `expr`.
pub(crate) fn selectors(expr: &str) -> Vec<Selector> {
    use promql_parser::parser::{Expr, LabelModifier, parse};
    type Aggregation = Option<(String, Vec<String>)>;
    fn walk(e: &Expr, in_rate: bool, around: &Aggregation, out: &mut Vec<Selector>) {
        match e {
            Expr::VectorSelector(v) => out.push(Selector {
                metric: v.name.clone().unwrap_or_default(),
                matchers: v.matchers.matchers.iter().map(|m| m.to_string()).collect(),
                in_rate,
                aggregation: around.clone(),
            }),
            Expr::MatrixSelector(m) => {
                walk(&Expr::VectorSelector(m.vs.clone()), in_rate, around, out);
            }
            Expr::Aggregate(a) => {
                let labels = match &a.modifier {
                    Some(LabelModifier::Include(l)) => l.labels.clone(),
                    Some(LabelModifier::Exclude(l)) => {
                        l.labels.iter().map(|l| format!("!{l}")).collect()
                    }
                    None => Vec::new(),
                };
                let this = Some((a.op.to_string(), labels));
                walk(&a.expr, in_rate, &this, out);
                if let Some(p) = &a.param {
                    walk(p, in_rate, around, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, in_rate, around, out),
            Expr::Binary(b) => {
                walk(&b.lhs, in_rate, around, out);
                walk(&b.rhs, in_rate, around, out);
            }
            Expr::Paren(p) => walk(&p.expr, in_rate, around, out),
            Expr::Subquery(s) => walk(&s.expr, in_rate, around, out),
            Expr::Call(c) => {
                let rates =
                    ["rate", "irate", "increase", "resets", "changes"].contains(&c.func.name);
                c.args
                    .args
                    .iter()
                    .for_each(|a| walk(a, in_rate || rates, around, out));
            }
            Expr::Extension(_) | Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")),
        false,
        &None,
        &mut out,
    );
    out
}

/// `data` of a Prometheus HTTP API answer at `http://127.0.0.1:{port}/api/v1/{path}`
/// (`alerts`, `query?query=...`), `Null` while Prometheus does not answer.
pub(crate) async fn prometheus_api(
    client: &reqwest::Client,
    port: u16,
    path: &str,
) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/api/v1/{path}");
    match client.get(url).send().await {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .map(|v| v["data"].clone())
            .unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The result of the instant query `promql` at the Prometheus on `port`
/// (empty while it does not answer).
pub(crate) async fn query(
    client: &reqwest::Client,
    port: u16,
    promql: &str,
) -> Vec<serde_json::Value> {
    let path = format!("query?query={}", url_encoded(promql));
    let data = prometheus_api(client, port, &path).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// The alerts firing at the Prometheus on `port`.
pub(crate) async fn firing(client: &reqwest::Client, port: u16) -> Vec<serde_json::Value> {
    let data = prometheus_api(client, port, "alerts").await;
    let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
    alerts
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect()
}

/// A series' labels without `cluster` and `job` (which name the cluster in
/// the multi-cluster tests): what its twin in the other cluster must have.
pub(crate) fn twin_key(labels: &serde_json::Value) -> String {
    let mut map: std::collections::BTreeMap<String, String> =
        serde_json::from_value(labels.clone()).unwrap_or_default();
    map.remove("cluster");
    map.remove("job");
    format!("{map:?}")
}

/// What is wrong with `series` (a query result or alerts) scraped from the
/// two `clusters`: series without one of them as `cluster`, and series of
/// one cluster without a twin in the other.
pub(crate) fn apart(
    what: &str,
    clusters: [&str; 2],
    series: &[serde_json::Value],
    labels_of: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_cluster: std::collections::BTreeMap<&str, BTreeSet<String>> =
        clusters.iter().map(|c| (*c, BTreeSet::new())).collect();
    for s in series {
        let labels = labels_of(s);
        match labels["cluster"]
            .as_str()
            .and_then(|c| by_cluster.get_mut(c))
        {
            Some(keys) => {
                keys.insert(twin_key(labels));
            }
            None => problems.push(format!("{what}: no cluster of {clusters:?} in {labels}")),
        }
    }
    let (a, b) = (&by_cluster[clusters[0]], &by_cluster[clusters[1]]);
    for only in a.symmetric_difference(b) {
        problems.push(format!("{what}: only in one cluster: {only}"));
    }
    problems
}

/// `s` percent-encoded for a URL query.
pub(crate) fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One scrape job of [`write_prometheus_config`]: its name, the `cluster`
/// label of its targets (if any), and the targets (`host:port`).
pub(crate) struct Job<'a> {
    pub(crate) name: &'a str,
    pub(crate) cluster: Option<&'a str>,
    pub(crate) targets: Vec<String>,
}

/// `dir/prometheus.yml`: every job scraped and `rules` evaluated each
/// second; returns its path.
pub(crate) fn write_prometheus_config(dir: &Path, rules: &[String], jobs: &[Job<'_>]) -> String {
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n",
        quoted(rules)
    );
    for job in jobs {
        config.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            job.name,
            quoted(&job.targets)
        ));
        if let Some(cluster) = job.cluster {
            config.push_str(&format!("        labels: {{cluster: {cluster}}}\n"));
        }
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write prometheus.yml");
    path.to_string_lossy().into_owned()
}

/// A real Prometheus with `config`, its data in `dir/prometheus`, on `port`.
pub(crate) fn spawn_prometheus(config: &str, dir: &Path, port: u16) -> Killed {
    spawn(
        "prometheus",
        &[
            format!("--config.file={config}"),
            format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        "prometheus",
    )
}

/// The demo on ports from `port_base` for `seconds`, at `rps` checkouts a
/// second, with the card channel down, inventory's pool exhausted and
/// Cancels after Confirm.
pub(crate) fn spawn_faulty_demo(port_base: u16, rps: u32, seconds: u32) -> Killed {
    spawn(
        env!("CARGO_BIN_EXE_paytrace-demo"),
        &[
            "--duration".into(),
            format!("{seconds}s"),
            "--rps".into(),
            rps.to_string(),
            "--port-base".into(),
            port_base.to_string(),
            "--chaos".into(),
            "channel-down,pool-exhausted,cancel-after-confirm".into(),
            "--chaos-channel".into(),
            "card".into(),
        ],
        "the demo (cargo build)",
    )
}
