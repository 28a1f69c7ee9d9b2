//! The shipped alerting rules (`alerts/`): they load in the real promtool,
//! their unit tests pass, every alert has a firing and a quiet test and a
//! runbook, every expression parses, and the generated SLO rules are what
//! `alerts/slos.yaml` generates. promtool: `apt-get install prometheus`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} files in {dir}");
    out
}

fn rule_files() -> Vec<PathBuf> {
    files("alerts", ".rules.yml")
}

fn test_files() -> Vec<PathBuf> {
    files("alerts/tests", ".test.yml")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(args: &[&str], files: &[PathBuf]) {
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
fn rules() -> Vec<(PathBuf, Value)> {
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

fn alerts() -> Vec<(PathBuf, Value)> {
    rules()
        .into_iter()
        .filter(|(_, r)| r.get("alert").is_some())
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().map(str::to_owned).unwrap_or_default()
}

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
        if !quiet.contains(&name) {
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

#[test]
fn the_generate_command_checks_and_writes() {
    let exe = env!("CARGO_BIN_EXE_paytrace-aggregator");
    let spec = repo().join("alerts/slos.yaml");
    let out = Command::new(exe)
        .args(["slo", "generate"])
        .arg(&spec)
        .args(["--check", "--output"])
        .arg(repo().join("alerts/slo.rules.yml"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stale = std::env::temp_dir().join(format!("paytrace-stale-{}.yml", std::process::id()));
    std::fs::write(&stale, "groups: []\n").expect("temp file");
    let out = Command::new(exe)
        .args(["slo", "generate"])
        .arg(&spec)
        .args(["--check", "--output"])
        .arg(&stale)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of date"));

    let out = Command::new(exe)
        .args(["slo", "generate"])
        .arg(&spec)
        .args(["--output"])
        .arg(&stale)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let written = std::fs::read_to_string(&stale).expect("written");
    let _ = std::fs::remove_file(&stale);
    assert!(written.contains("alert: PaymentSuccessBurnRateFast"));

    let bad = std::env::temp_dir().join(format!("paytrace-bad-slo-{}.yaml", std::process::id()));
    std::fs::write(&bad, "slos:\n  - name: Bad Name\n").expect("temp file");
    let out = Command::new(exe)
        .args(["slo", "generate"])
        .arg(&bad)
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field"), "{err}");
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
        let expected = match (severity.as_str(), layer.as_str()) {
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
