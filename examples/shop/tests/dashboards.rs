//! The Grafana dashboards (`dashboards/*.json`): generated from
//! `scripts/dashboards.py` and unchanged since; importable (valid JSON,
//! unique panel ids, a grid without overlaps, the `datasource` variable on
//! every query); every panel titled, described and with a unit; every rate
//! over `$__rate_interval`; every expression parses; stage panels link to
//! the aggregator's page; and the rules of Grafana's dashboard-linter,
//! written out here (the linter itself is not packaged): datasource,
//! cluster, namespace, job and instance variables that reload on time
//! change, every selector scoped by them, counters only under a rate, SLO
//! thresholds and deploy annotations.

mod monitoring;

use std::process::Command;

use monitoring::*;
use serde_json::Value;

fn dashboards() -> Vec<(String, Value)> {
    files("dashboards", ".json")
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            let doc =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
            (name, doc)
        })
        .collect()
}

fn panels(doc: &Value) -> Vec<&Value> {
    doc["panels"].as_array().expect("panels").iter().collect()
}

fn exprs(panel: &Value) -> Vec<String> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_dashboards_are_what_the_script_writes() {
    let out = Command::new("python3")
        .arg(repo().join("scripts/dashboards.py"))
        .arg("--check")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install it with `apt-get install python3`")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_is_importable() {
    let all = dashboards();
    assert_eq!(
        all.len(),
        5,
        "checkout overview, stage breakdown, TCC, USE, aggregator"
    );
    let mut uids = std::collections::BTreeSet::new();
    for (name, doc) in &all {
        assert!(
            uids.insert(doc["uid"].as_str().expect("uid").to_owned()),
            "{name}: uid reused"
        );
        assert!(
            doc["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let vars = doc["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no prometheus `datasource` variable"
        );
        let mut ids = std::collections::BTreeSet::new();
        let mut cells = std::collections::BTreeMap::new();
        for p in panels(doc) {
            let id = p["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{name}: panel id {id} twice");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().expect("x"),
                g["y"].as_u64().expect("y"),
                g["w"].as_u64().expect("w"),
                g["h"].as_u64().expect("h"),
            );
            assert!(
                w > 0 && h > 0 && x + w <= 24,
                "{name}: panel {id} is off the grid: {g}"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), id) {
                        panic!("{name}: panels {other} and {id} overlap at ({cx}, {cy})");
                    }
                }
            }
        }
    }
}

#[test]
fn every_panel_is_described_and_queries_the_datasource_variable() {
    let mut problems = Vec::new();
    for (name, doc) in dashboards() {
        for p in panels(&doc).into_iter().filter(|p| p["type"] != "row") {
            let at = format!("{name}: {:?}", p["title"]);
            if p["title"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no title"));
            }
            if p["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no description"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: no unit"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{at}: panel datasource is not ${{datasource}}"));
            }
            let targets = p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}: no query"));
            }
            for t in targets {
                if t["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{at}: target datasource is not ${{datasource}}"));
                }
            }
            for e in exprs(p) {
                for f in ["rate(", "irate("] {
                    for (i, _) in e.match_indices(f) {
                        let call = &e[i..];
                        let close = call.find(']').map(|j| &call[..j]).unwrap_or(call);
                        if !close.contains("[$__rate_interval") {
                            problems.push(format!("{at}: {f} without $__rate_interval: {e}"));
                        }
                    }
                }
                if let Err(err) = metric_names(&grafana_substituted(&e)) {
                    problems.push(format!("{at}: does not parse ({err}): {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn stage_panels_link_to_the_aggregator_page_and_histograms_have_heatmaps() {
    let all = dashboards();
    let (_, stages) = all
        .iter()
        .find(|(n, _)| n == "stage-breakdown.json")
        .expect("the stage breakdown dashboard");
    let mut linked = 0;
    for p in panels(stages).into_iter().filter(|p| p["type"] != "row") {
        let by_stage = exprs(p).iter().any(|e| {
            e.contains("by (stage") || e.contains("stage=\"$stage\"") || e.contains(", stage)")
        });
        if !by_stage {
            continue;
        }
        let links = p["fieldConfig"]["defaults"]["links"].as_array();
        let url = links
            .and_then(|l| l.first())
            .and_then(|l| l["url"].as_str())
            .unwrap_or_else(|| panic!("stage panel {:?} has no data link", p["title"]));
        assert!(
            url.starts_with("${aggregator}/?flow=${flow}&stage="),
            "{:?}: {url}",
            p["title"]
        );
        linked += 1;
    }
    assert!(linked >= 5, "only {linked} stage panels");
    let heatmaps = panels(stages)
        .iter()
        .filter(|p| p["type"] == "heatmap")
        .count();
    assert!(heatmaps >= 3, "stage and end-to-end histograms as heatmaps");
}

/// Grafana's dashboard-linter rules, in the repository's own words:
/// template-datasource-rule, template-job-rule, template-instance-rule and
/// template-on-time-change-reload-rule (the variables), target-job-rule and
/// target-instance-rule (every selector filtered by them, here with cluster
/// and namespace too), target-counter-agg-rule (a counter only under a
/// rate), target-rate-interval-rule (rates over `$__rate_interval`);
/// and what an SRE expects besides: deploy annotations and SLO thresholds.
#[test]
fn every_dashboard_follows_the_dashboard_linter_rules() {
    let scope = [
        r#"cluster=~"$cluster""#,
        r#"namespace=~"$namespace""#,
        r#"job=~"$job""#,
        r#"instance=~"$instance""#,
    ];
    let mut problems = Vec::new();
    for (name, doc) in dashboards() {
        let vars = doc["templating"]["list"].as_array().expect("variables");
        for wanted in ["datasource", "cluster", "namespace", "job", "instance"] {
            if !vars.iter().any(|v| v["name"] == wanted) {
                problems.push(format!("{name}: no {wanted} variable"));
            }
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            if v["refresh"] != 2 {
                problems.push(format!(
                    "{name}: variable {} does not reload on time change",
                    v["name"]
                ));
            }
        }
        let annotations = doc["annotations"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !annotations.iter().any(|a| {
            a["expr"]
                .as_str()
                .is_some_and(|e| e.contains("paytrace_build_info"))
        }) {
            problems.push(format!(
                "{name}: no deploy annotation from paytrace_build_info"
            ));
        }
        let mut queries: Vec<(String, String)> = annotations
            .iter()
            .filter_map(|a| {
                Some((
                    format!("annotation {}", a["name"]),
                    a["expr"].as_str()?.to_owned(),
                ))
            })
            .collect();
        for p in panels(&doc) {
            queries.extend(
                exprs(p)
                    .into_iter()
                    .map(|e| (format!("panel {}", p["title"]), e)),
            );
        }
        for (at, expr) in queries {
            if expr.contains("rate(") && !expr.contains("$__rate_interval") {
                problems.push(format!("{name} {at}: a rate not over $__rate_interval"));
            }
            let parsed = selectors(&expr.replace("$__rate_interval", "5m"));
            for Selector {
                metric,
                matchers,
                in_rate,
                ..
            } in parsed
            {
                for s in scope {
                    if !matchers.iter().any(|m| m == s) {
                        problems.push(format!("{name} {at}: {metric} is not filtered by {s}"));
                    }
                }
                let counter = ["_total", "_count", "_sum", "_bucket"]
                    .iter()
                    .any(|x| metric.ends_with(x));
                if counter && !in_rate {
                    problems.push(format!(
                        "{name} {at}: the counter {metric} is read without a rate"
                    ));
                }
            }
        }
    }
    // The SLO panels show their objective, and the budget turns red when spent.
    let (_, overview) = dashboards()
        .into_iter()
        .find(|(n, _)| n == "checkout-overview.json")
        .expect("the checkout overview");
    let panel = |title: &str| {
        panels(&overview)
            .into_iter()
            .find(|p| p["title"] == title)
            .cloned()
            .unwrap_or_else(|| panic!("no panel {title}"))
    };
    let steps = |p: &Value| {
        p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let budget = steps(&panel("Error budget remaining"));
    assert!(
        budget.first().is_some_and(|s| s["color"] == "red")
            && budget.iter().any(|s| s["value"] == 0),
        "the error budget is red below 0: {budget:?}"
    );
    let availability = steps(&panel("Checkout availability"));
    assert!(
        availability.iter().any(|s| s["value"] == 0.999),
        "the 99.9% line: {availability:?}"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
