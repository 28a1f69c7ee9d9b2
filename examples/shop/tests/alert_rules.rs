//! The shipped alerting rules (`alerts/`): they load in the real promtool,
//! their unit tests pass, every alert has a firing and a quiet test and a
//! runbook, every expression parses, the generated SLO rules are what
//! `alerts/slos.yaml` generates, and Alertmanager routes every alert.
//! promtool and amtool: `apt-get install prometheus prometheus-alertmanager`.

mod monitoring;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use monitoring::*;
use serde_yaml_ng::Value;

#[test]
fn rules_pass_promtool_check() {
    promtool(&["check", "rules"], &rule_files());
}

#[test]
fn promtool_unit_tests_pass() {
    promtool(&["test", "rules"], &test_files());
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test() {
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    for path in test_files() {
        let doc = yaml(&path);
        for test in doc["tests"].as_sequence().expect("tests") {
            assert!(
                test.get("interval").is_some(),
                "{}: test {:?} sets no interval",
                path.display(),
                test["name"]
            );
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = text(case, "alertname");
                let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected == 0 {
                    quiet.insert(name);
                } else {
                    fires.insert(name);
                }
            }
        }
    }
    let mut missing = Vec::new();
    for (_, alert) in alerts() {
        let name = text(&alert, "alert");
        if !fires.contains(&name) {
            missing.push(format!("{name}: no test where it fires"));
        }
        // An alert on a constant (the Watchdog) cannot be quiet: that is its job.
        let constant = metric_names(&text(&alert, "expr")).is_ok_and(|m| m.is_empty());
        if !quiet.contains(&name) && !constant {
            missing.push(format!("{name}: no test where it stays quiet"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_alert_is_labelled_annotated_and_has_a_runbook() {
    let mut names = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, alert) in alerts() {
        let name = text(&alert, "alert");
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let at = format!("{name} ({})", file.unwrap_or_default());
        if !names.insert(name.clone()) {
            problems.push(format!("{at}: defined twice"));
        }
        let camel = name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !camel {
            problems.push(format!("{at}: not CamelCase"));
        }
        let labels = &alert["labels"];
        if !["critical", "warning", "info"].contains(&text(labels, "severity").as_str()) {
            problems.push(format!("{at}: severity must be critical, warning or info"));
        }
        if !["infra", "service", "business"].contains(&text(labels, "layer").as_str()) {
            problems.push(format!("{at}: layer must be infra, service or business"));
        }
        let annotations = &alert["annotations"];
        for key in ["summary", "description"] {
            if text(annotations, key).trim().is_empty() {
                problems.push(format!("{at}: no {key}"));
            }
        }
        let runbook = format!("docs/runbooks/{name}.md");
        let url = format!("{}{name}.md", spec().runbook_base);
        if text(annotations, "runbook_url") != url || !url.starts_with("https://") {
            problems.push(format!(
                "{at}: runbook_url must be the absolute {url} (runbook_base of alerts/slos.yaml)"
            ));
        }
        match std::fs::read_to_string(repo().join(&runbook)) {
            Err(_) => problems.push(format!("{at}: {runbook} is missing")),
            Ok(doc) => {
                for section in ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"] {
                    if !doc.contains(section) {
                        problems.push(format!("{runbook}: no {section} section"));
                    }
                }
            }
        }
    }
    // And no runbook for an alert that no longer exists.
    for path in files("docs/runbooks", ".md") {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem != "README" && !names.contains(&stem) {
            problems.push(format!("{}: no alert of this name", path.display()));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The gRPC failure codes the rules and the dashboards count are the ones
/// `paytrace_semconv::grpc_status::SERVER_FAILURES` names, wherever a
/// selector matches `rpc_response_status_code` by regex.
#[test]
fn grpc_failures_are_counted_by_the_codes_semconv_names() {
    let expected: BTreeSet<String> = paytrace_semconv::grpc_status::SERVER_FAILURES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let mut exprs: Vec<String> = rules().iter().map(|(_, r)| text(r, "expr")).collect();
    for path in files("dashboards", ".json") {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .expect("JSON");
        for p in doc["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push(grafana_substituted(e));
                }
            }
        }
    }
    let mut found = 0;
    for expr in &exprs {
        for Selector { matchers, .. } in selectors(expr) {
            for m in matchers {
                let Some(codes) = m.strip_prefix("rpc_response_status_code=~") else {
                    continue;
                };
                found += 1;
                let codes: BTreeSet<String> = codes
                    .trim_matches('"')
                    .split('|')
                    .map(str::to_owned)
                    .collect();
                assert_eq!(codes, expected, "in {expr}");
            }
        }
    }
    assert!(found >= 4, "only {found} gRPC failure selectors found");
}

#[test]
fn every_expression_parses() {
    let mut bad = BTreeMap::new();
    for (_, rule) in rules() {
        let expr = text(&rule, "expr");
        if let Err(e) = promql_parser::parser::parse(&expr) {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            bad.insert(name, format!("{e}: {expr}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_rule_files_are_what_the_templates_and_the_spec_render() {
    let spec = spec();
    let outputs = paytrace_slo::render::render_set(
        &repo().join("alerts/slos.yaml"),
        &repo().join("alerts/src"),
        &repo().join("alerts"),
        Some(&repo().join("alerts/prometheusrule.yaml")),
    )
    .expect("the rule set renders");
    assert_eq!(
        outputs.len(),
        rule_files().len() + 1,
        "every rule file and the manifest"
    );
    for (path, rendered) in &outputs {
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            *rendered == shipped,
            "{} is out of date: run\n  cargo run -p paytrace-slo -- render alerts/slos.yaml --templates alerts/src --out-dir alerts --prometheus-rule alerts/prometheusrule.yaml",
            path.display()
        );
    }
    let shipped_alerts: Vec<String> = alerts()
        .into_iter()
        .filter(|(p, _)| p.ends_with("slo.rules.yml"))
        .map(|(_, a)| text(&a, "alert"))
        .collect();
    assert_eq!(shipped_alerts, paytrace_slo::alert_names(&spec));
}

fn spec() -> paytrace_slo::Spec {
    let text = std::fs::read_to_string(repo().join("alerts/slos.yaml")).expect("alerts/slos.yaml");
    paytrace_slo::parse(&text).expect("a valid spec")
}

#[test]
fn the_spec_selector_reaches_every_metric_selector_of_every_rule() {
    let dir = std::env::temp_dir().join(format!("paytrace-selector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spec_text = std::fs::read_to_string(repo().join("alerts/slos.yaml"))
        .expect("alerts/slos.yaml")
        .replace("selector: ''", "selector: 'job=~\"payments-.*\"'");
    let spec_path = dir.join("slos.yaml");
    std::fs::write(&spec_path, spec_text).expect("spec written");
    let outputs =
        paytrace_slo::render::render_set(&spec_path, &repo().join("alerts/src"), &dir, None)
            .expect("renders");
    let _ = std::fs::remove_dir_all(&dir);
    let mut checked = 0;
    for (path, text) in outputs {
        let doc: Value = serde_yaml_ng::from_str(&text).expect("YAML");
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                let expr = text_of(rule, "expr");
                for Selector { matchers, .. } in selectors(&expr) {
                    checked += 1;
                    assert!(
                        matchers.iter().any(|m| m == r#"job=~"payments-.*""#),
                        "{}: a selector without the spec's matcher in {expr}: {matchers:?}",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} selectors checked");
}

fn text_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The manifest as the PrometheusRule custom resource's schema
/// (monitoring.coreos.com/v1) has it: the fields, their types, one of
/// `record` and `alert` per rule, durations where it asks for them.
#[test]
fn the_prometheus_rule_manifest_follows_the_crd_schema() {
    let doc = yaml(&repo().join("alerts/prometheusrule.yaml"));
    assert_eq!(text_of(&doc, "apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(text_of(&doc, "kind"), "PrometheusRule");
    let name = text_of(&doc["metadata"], "name");
    let dns1123 = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    assert!(dns1123, "metadata.name {name:?}");
    let duration = |v: &str| {
        !v.is_empty()
            && v.split_inclusive(|c: char| c.is_ascii_alphabetic())
                .all(|part| {
                    let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    let unit = &part[digits.len()..];
                    !digits.is_empty()
                        && digits.chars().all(|c| c.is_ascii_digit())
                        && ["ms", "s", "m", "h", "d", "w", "y"].contains(&unit)
                })
    };
    let strings = |v: &Value| {
        v.as_mapping()
            .is_none_or(|m| m.iter().all(|(k, v)| k.is_string() && v.is_string()))
    };
    let mut rules = 0;
    let mut problems = Vec::new();
    for group in doc["spec"]["groups"].as_sequence().expect("spec.groups") {
        let map = group.as_mapping().expect("a group is an object");
        for key in map.keys().filter_map(|k| k.as_str()) {
            if ![
                "name",
                "interval",
                "rules",
                "partial_response_strategy",
                "limit",
                "query_offset",
            ]
            .contains(&key)
            {
                problems.push(format!("group field {key} is not in the schema"));
            }
        }
        if text_of(group, "name").is_empty() {
            problems.push("a group without a name".into());
        }
        if let Some(i) = group.get("interval").and_then(|i| i.as_str())
            && !duration(i)
        {
            problems.push(format!("interval {i:?} is not a duration"));
        }
        for rule in group["rules"].as_sequence().expect("rules") {
            rules += 1;
            let map = rule.as_mapping().expect("a rule is an object");
            for key in map.keys().filter_map(|k| k.as_str()) {
                if ![
                    "record",
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ]
                .contains(&key)
                {
                    problems.push(format!("rule field {key} is not in the schema"));
                }
            }
            if rule.get("record").is_some() == rule.get("alert").is_some() {
                problems.push(format!("exactly one of record and alert: {rule:?}"));
            }
            if text_of(rule, "expr").is_empty() {
                problems.push(format!("no expr: {rule:?}"));
            }
            if let Some(f) = rule.get("for").and_then(|f| f.as_str())
                && !duration(f)
            {
                problems.push(format!("for {f:?} is not a duration"));
            }
            if !strings(&rule["labels"]) || !strings(&rule["annotations"]) {
                problems.push(format!(
                    "labels and annotations map strings to strings: {rule:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let shipped: usize = rules_count();
    assert_eq!(rules, shipped, "every shipped rule is in the manifest");
}

fn rules_count() -> usize {
    monitoring::rules().len()
}

fn amtool(args: &[&str]) -> std::process::Output {
    let amtool = std::env::var("AMTOOL").unwrap_or_else(|_| "amtool".to_owned());
    Command::new(&amtool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {amtool} ({e}): install it with `apt-get install prometheus-alertmanager`")
        })
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_every_alert() {
    let out = amtool(&["check-config", "alerts/alertmanager.yml"]);
    assert!(
        out.status.success(),
        "amtool check-config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let route = |labels: &[String]| {
        let mut args = vec![
            "config",
            "routes",
            "test",
            "--config.file",
            "alerts/alertmanager.yml",
        ];
        args.extend(labels.iter().map(String::as_str));
        let out = amtool(&args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Each shipped alert, with its own labels, reaches the receiver its
    // severity and layer call for.
    for (_, alert) in alerts() {
        let labels = &alert["labels"];
        let severity = text(labels, "severity");
        let layer = text(labels, "layer");
        let name = text(&alert, "alert");
        let expected = match (severity.as_str(), layer.as_str()) {
            _ if name == "Watchdog" => "deadmansswitch",
            ("critical", _) => "pager",
            ("info", _) => "blackhole",
            (_, "infra") => "sre-tickets",
            _ => "payments-tickets",
        };
        let mut args = vec![format!("alertname={}", text(&alert, "alert"))];
        if let Some(map) = labels.as_mapping() {
            for (k, v) in map {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    args.push(format!("{k}={v}"));
                }
            }
        }
        assert_eq!(route(&args), expected, "{args:?}");
    }
    // An unlabelled alert from someone else's rules still reaches a person.
    assert_eq!(route(&["alertname=Other".to_owned()]), "payments-tickets");
}
