//! The deployment example is valid for the real Prometheus: its
//! configuration, and the rule files it loads from `alerts/`. The
//! Alertmanager configuration lives with the rules and is tested there.

mod monitoring;

use monitoring::{promtool, repo};

#[test]
fn the_prometheus_config_passes_promtool() {
    promtool(
        &["check", "config"],
        &[repo().join("examples/deploy/prometheus.yml")],
    );
}
