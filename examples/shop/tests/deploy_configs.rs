//! The deployment examples are valid for the real tools.

use std::path::Path;
use std::process::Command;

#[test]
fn the_prometheus_config_passes_promtool() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus.yml");
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {promtool} ({e}): install it with `apt-get install prometheus`")
        });
    assert!(
        out.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn amtool(args: &[&str]) -> std::process::Output {
    let amtool = std::env::var("AMTOOL").unwrap_or_else(|_| "amtool".to_owned());
    Command::new(&amtool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {amtool} ({e}): install it with `apt-get install prometheus-alertmanager`")
    })
}

#[test]
fn the_alertmanager_config_passes_amtool_and_routes_by_severity() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager.yml");
    let config = config.to_str().expect("a UTF-8 path");
    let out = amtool(&["check-config", config]);
    assert!(
        out.status.success(),
        "amtool check-config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let route = |labels: &[&str]| {
        let mut args = vec!["config", "routes", "test", "--config.file", config];
        args.extend_from_slice(labels);
        let out = amtool(&args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        route(&["severity=critical", "layer=infra", "service=inventory"]),
        "pager"
    );
    assert_eq!(route(&["severity=warning", "layer=business"]), "tickets");
    assert_eq!(route(&["severity=info"]), "blackhole");
}
