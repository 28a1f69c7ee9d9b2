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
        if text(annotations, "runbook_url") != runbook {
            problems.push(format!("{at}: runbook_url must be {runbook}"));
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
fn the_slo_rules_are_what_the_spec_generates() {
    let spec = std::fs::read_to_string(repo().join("alerts/slos.yaml")).expect("alerts/slos.yaml");
    let spec = paytrace_aggregator::slo::parse(&spec).expect("a valid spec");
    let generated = paytrace_aggregator::slo::generate(&spec).expect("rules");
    let shipped =
        std::fs::read_to_string(repo().join("alerts/slo.rules.yml")).expect("alerts/slo.rules.yml");
    assert!(
        generated == shipped,
        "alerts/slo.rules.yml is out of date: run\n  cargo run -p paytrace-aggregator -- slo generate alerts/slos.yaml --output alerts/slo.rules.yml"
    );
    let shipped_alerts: Vec<String> = alerts()
        .into_iter()
        .filter(|(p, _)| p.ends_with("slo.rules.yml"))
        .map(|(_, a)| text(&a, "alert"))
        .collect();
    assert_eq!(shipped_alerts, paytrace_aggregator::slo::alert_names(&spec));
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
