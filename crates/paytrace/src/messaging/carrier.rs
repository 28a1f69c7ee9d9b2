//! A message's headers, as the propagators read and write them.

use std::collections::{BTreeMap, HashMap};

/// The headers of one message: where trace context and baggage travel.
///
/// Implemented for `HashMap<String, String>` and `BTreeMap<String, String>`;
/// a broker adapter implements it for its own header type (AMQP's field
/// table, a Redis stream entry's fields). Keys are the lower-case W3C names
/// (`traceparent`, `tracestate`, `baggage`).
///
/// ```
/// use paytrace::messaging::Carrier;
///
/// #[derive(Default)]
/// struct Headers(Vec<(String, String)>);
///
/// impl Carrier for Headers {
///     fn get(&self, key: &str) -> Option<&str> {
///         self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
///     }
///     fn set(&mut self, key: &str, value: String) {
///         self.0.retain(|(k, _)| k != key);
///         self.0.push((key.to_owned(), value));
///     }
/// }
///
/// let mut headers = Headers::default();
/// headers.set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
/// assert!(headers.get("traceparent").is_some());
/// ```
pub trait Carrier {
    /// The value of header `key`, if the message has it (and it is text).
    fn get(&self, key: &str) -> Option<&str>;
    /// Sets header `key` to `value`, replacing any value it had.
    fn set(&mut self, key: &str, value: String);
}

impl Carrier for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

impl Carrier for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

/// A [`Carrier`] as OpenTelemetry's propagators read it.
pub(crate) struct Extract<'a, C: ?Sized>(pub(crate) &'a C);

impl<C: Carrier + ?Sized> opentelemetry::propagation::Extractor for Extract<'_, C> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    // The W3C propagators ask for their keys by name; none lists them.
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// A [`Carrier`] as OpenTelemetry's propagators write it.
pub(crate) struct Inject<'a, C: ?Sized>(pub(crate) &'a mut C);

impl<C: Carrier + ?Sized> opentelemetry::propagation::Injector for Inject<'_, C> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}
