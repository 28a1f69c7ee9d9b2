//! paytrace-slo: SLOs and the whole Prometheus rule set as code, the way
//! Sloth and the monitoring mixins ship theirs.
//!
//! ```
//! let spec = paytrace_slo::parse(r#"
//! slos:
//!   - name: checkout_availability
//!     alert: CheckoutAvailability
//!     objective: 0.999
//!     summary: Checkout requests fail
//!     sli:
//!       errors:
//!         metric: http_server_request_duration_seconds_count
//!         selector: 'http_route="/checkout"'
//!         bad: 'http_response_status_code=~"5.."'
//! "#).unwrap();
//! let rules = paytrace_slo::generate(&spec).unwrap();
//! assert!(rules.contains("alert: CheckoutAvailabilityBurnRateFast"));
//! ```
//!
//! Where to start:
//! - [`spec`]: the SLO spec (YAML) and [`generate`], multi-window
//!   multi-burn-rate recording and alerting rules from it, every aggregation
//!   kept per cluster, namespace and job, long windows from recorded rates;
//! - [`render`]: rule templates rendered with the spec's `selector` and
//!   `runbook_base`, and the whole set as one Prometheus Operator
//!   `PrometheusRule` ([`render::render_set`] is what the `render` command
//!   writes).
//!
//! The `paytrace-slo` binary: `paytrace-slo generate SPEC [--output FILE
//! [--check]]` and `paytrace-slo render SPEC --templates DIR --out-dir DIR
//! [--prometheus-rule FILE] [--check]`.

pub mod render;
pub mod spec;

pub use spec::{HEADER, KEPT_LABELS, Sli, Slo, Spec, SpecError, alert_names, generate, parse};
