//! The cardinality guard: a bounded set of values per label.
//!
//! Every label whose values are not fixed by paytrace itself (routes, stages,
//! payment methods taken from baggage, downstream hosts, resource names) passes
//! through a [`LabelGuard`]. The first `limit` distinct values are admitted;
//! every later new value becomes [`OVERFLOW_LABEL_VALUE`] and the caller counts
//! it in `paytrace_series_overflow_total`. A misbehaving client that puts a user
//! id into `payment.method` baggage therefore costs one series, not millions.
//! HTTP methods are bounded by the conventions instead ([`method_label`]).

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::RwLock;

use paytrace_semconv::{OVERFLOW_LABEL_VALUE, label};

/// The `http.request.method` value: the method if it is one of the standard
/// ones, `_OTHER` otherwise (OpenTelemetry HTTP semantic conventions), so a
/// client cannot mint new label values.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// How many distinct values each guarded label may take.
///
/// Values in an allow-list are always admitted and do not count towards the
/// limit's budget of *new* values: they are admitted up front.
///
/// ```
/// use paytrace::LabelLimits;
/// use paytrace::semconv::{label, payment};
///
/// let limits = LabelLimits::default()
///     .limit(label::HTTP_ROUTE, 500)
///     .allow(label::PAYMENT_METHOD, payment::METHODS);
/// assert_eq!(limits.limit_for(label::HTTP_ROUTE), 500);
/// ```
#[derive(Debug, Clone)]
pub struct LabelLimits {
    default_limit: usize,
    limits: HashMap<&'static str, usize>,
    allowed: HashMap<&'static str, Vec<String>>,
}

impl Default for LabelLimits {
    fn default() -> Self {
        Self {
            default_limit: 100,
            limits: HashMap::new(),
            allowed: HashMap::new(),
        }
    }
}

impl LabelLimits {
    /// The limit of every label not given its own.
    pub fn default_limit(mut self, limit: usize) -> Self {
        self.default_limit = limit;
        self
    }

    /// The limit of one label (a name from [`paytrace_semconv::label`]).
    pub fn limit(mut self, label: &'static str, limit: usize) -> Self {
        self.limits.insert(label, limit);
        self
    }

    /// Values of `label` that are always admitted.
    pub fn allow<I, S>(mut self, label: &'static str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allowed
            .entry(label)
            .or_default()
            .extend(values.into_iter().map(|v| v.as_ref().to_owned()));
        self
    }

    /// The limit in force for `label`.
    pub fn limit_for(&self, label: &str) -> usize {
        self.limits
            .get(label)
            .copied()
            .unwrap_or(self.default_limit)
    }

    pub(crate) fn guard(&self, label: &'static str) -> LabelGuard {
        let allowed = self.allowed.get(label).map(Vec::as_slice).unwrap_or(&[]);
        LabelGuard::new(label, self.limit_for(label), allowed)
    }
}

/// Admits at most `limit` distinct values of one label, plus its allow-list.
#[derive(Debug)]
pub(crate) struct LabelGuard {
    name: &'static str,
    limit: usize,
    seen: RwLock<HashSet<Box<str>, RandomState>>,
}

impl LabelGuard {
    fn new(name: &'static str, limit: usize, allowed: &[String]) -> Self {
        let seen = allowed.iter().map(|v| v.as_str().into()).collect();
        Self {
            name,
            limit: limit + allowed.len(),
            seen: RwLock::new(seen),
        }
    }

    /// The label this guard protects.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// `value` if it is admitted, `None` if it overflowed (the caller uses
    /// [`OVERFLOW_LABEL_VALUE`] and counts the overflow).
    pub(crate) fn admit<'a>(&self, value: &'a str) -> Option<&'a str> {
        {
            let seen = crate::sync::read(&self.seen);
            if seen.contains(value) {
                return Some(value);
            }
            if seen.len() >= self.limit {
                return None;
            }
        }
        let mut seen = crate::sync::write(&self.seen);
        if seen.contains(value) {
            return Some(value);
        }
        if seen.len() >= self.limit {
            return None;
        }
        seen.insert(value.into());
        Some(value)
    }
}

/// The guards of every label the middleware does not fix itself.
#[derive(Debug)]
pub(crate) struct Guards {
    pub(crate) route: LabelGuard,
    pub(crate) server_address: LabelGuard,
    pub(crate) rpc_method: LabelGuard,
    pub(crate) flow: LabelGuard,
    pub(crate) stage: LabelGuard,
    pub(crate) payment_method: LabelGuard,
    pub(crate) payment_channel: LabelGuard,
    pub(crate) resource: LabelGuard,
    pub(crate) queue: LabelGuard,
    pub(crate) kind: LabelGuard,
    pub(crate) destination: LabelGuard,
    pub(crate) consumer_group: LabelGuard,
}

impl Guards {
    /// Calls `f` with every guard.
    pub(crate) fn each(&self, mut f: impl FnMut(&LabelGuard)) {
        for g in [
            &self.route,
            &self.server_address,
            &self.rpc_method,
            &self.flow,
            &self.stage,
            &self.payment_method,
            &self.payment_channel,
            &self.resource,
            &self.queue,
            &self.kind,
            &self.destination,
            &self.consumer_group,
        ] {
            f(g);
        }
    }

    pub(crate) fn new(limits: &LabelLimits) -> Self {
        Self {
            route: limits.guard(label::HTTP_ROUTE),
            server_address: limits.guard(label::SERVER_ADDRESS),
            rpc_method: limits.guard(label::RPC_METHOD),
            flow: limits.guard(label::FLOW),
            stage: limits.guard(label::STAGE),
            payment_method: limits.guard(label::PAYMENT_METHOD),
            payment_channel: limits.guard(label::PAYMENT_CHANNEL),
            resource: limits.guard(label::RESOURCE),
            queue: limits.guard(label::QUEUE),
            kind: limits.guard(label::KIND),
            destination: limits.guard(label::MESSAGING_DESTINATION_NAME),
            consumer_group: limits.guard(label::MESSAGING_CONSUMER_GROUP_NAME),
        }
    }
}

/// The value a guard turns an overflowing value into.
pub(crate) const OTHER: &str = OVERFLOW_LABEL_VALUE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_folds() {
        let guard = LabelLimits::default()
            .limit(label::FLOW, 2)
            .guard(label::FLOW);
        assert_eq!(guard.admit("a"), Some("a"));
        assert_eq!(guard.admit("b"), Some("b"));
        assert_eq!(guard.admit("c"), None);
        // Values seen before the limit stay admitted.
        assert_eq!(guard.admit("a"), Some("a"));
        assert_eq!(guard.admit("d"), None);
    }

    #[test]
    fn allowed_values_do_not_use_the_budget() {
        let guard = LabelLimits::default()
            .limit(label::PAYMENT_METHOD, 1)
            .allow(label::PAYMENT_METHOD, ["alipay", "card"])
            .guard(label::PAYMENT_METHOD);
        assert_eq!(guard.admit("card"), Some("card"));
        assert_eq!(guard.admit("new"), Some("new"));
        assert_eq!(guard.admit("newer"), None);
        assert_eq!(guard.admit("alipay"), Some("alipay"));
    }
}
