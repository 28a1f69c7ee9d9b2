//! The deployment example is valid for the real Prometheus. The
//! Alertmanager configuration lives with the rules (`alerts/`) and is tested
//! there.

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
