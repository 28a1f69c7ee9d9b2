//! Which service a span belongs to, when one process hosts several.
//!
//! The rule: a span belongs to the service whose instrument opened it
//! (server, client, stage) or, for any other span, to the service of the
//! span it was started under; a span with neither belongs to the process's
//! service, the one [`crate::init`] was given. Each service's spans are
//! exported under a resource of their own (`service.name`,
//! `service.version`), the rest of the process's resource unchanged.
//!
//! How: an instrument of a service other than the process's puts a
//! [`SpanService`] into the OpenTelemetry context it starts its span in;
//! children inherit it with the context. paytrace's span processor copies
//! it onto the span as two attributes ([`tag_span`]), and its exporter
//! takes them off again and exports each service's spans under its own
//! resource ([`Split`]). A process with one service pays nothing: its
//! instruments put nothing into the context.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// The attribute that carries a span's service from start to export; never
/// exported.
const NAME: &str = "paytrace.internal.service.name";
/// The attribute that carries the service's version, beside [`NAME`].
const VERSION: &str = "paytrace.internal.service.version";

/// The service of the process: the `service.name` of the provider paytrace
/// built last.
static PROCESS_SERVICE: RwLock<Option<Arc<str>>> = RwLock::new(None);

/// Records the process's service, whose instruments need no tag.
pub(crate) fn set_process_service(name: &str) {
    if let Ok(mut current) = PROCESS_SERVICE.write() {
        *current = Some(Arc::from(name));
    }
}

/// Whether `name` is the process's service.
fn is_process_service(name: &str) -> bool {
    PROCESS_SERVICE
        .read()
        .ok()
        .is_some_and(|current| current.as_deref() == Some(name))
}

/// The service a context's spans belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpanService {
    name: Arc<str>,
    version: Arc<str>,
}

impl SpanService {
    pub(crate) fn new(name: &str, version: &str) -> Self {
        Self {
            name: Arc::from(name),
            version: Arc::from(version),
        }
    }

    /// `cx` with this service as the one its spans belong to: unchanged
    /// when it is already so, or when this is the process's service and no
    /// other one is set.
    pub(crate) fn tag(&self, cx: Context) -> Context {
        match self.retag(&cx) {
            Some(tagged) => tagged,
            None => cx,
        }
    }

    /// `cx` with this service, when that changes it.
    pub(crate) fn retag(&self, cx: &Context) -> Option<Context> {
        self.retag_beside(cx, || is_process_service(&self.name))
    }

    /// [`SpanService::retag`], told whether this is the process's service.
    fn retag_beside(&self, cx: &Context, is_process: impl FnOnce() -> bool) -> Option<Context> {
        match cx.get::<SpanService>() {
            Some(current) if current == self => None,
            None if is_process() => None,
            _ => Some(cx.with_value(self.clone())),
        }
    }
}

/// Called as a span starts: copies the service of the context it starts in
/// onto it.
pub(crate) fn tag_span(span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
    use opentelemetry::trace::Span as _;
    if let Some(service) = cx.get::<SpanService>() {
        span.set_attribute(KeyValue::new(
            NAME,
            Value::String(service.name.clone().into()),
        ));
        span.set_attribute(KeyValue::new(
            VERSION,
            Value::String(service.version.clone().into()),
        ));
    }
}

/// The exporter's side: the process's resource, and one derived per
/// service met in a batch.
#[derive(Debug, Default)]
pub(crate) struct Split {
    base: Option<Resource>,
    /// The base's `service.name`.
    process: Option<String>,
    derived: HashMap<(Arc<str>, Arc<str>), Resource>,
}

/// The spans of one batch that belong to one service.
pub(crate) struct Part {
    /// The service, or `None` for the process's.
    pub(crate) service: Option<(Arc<str>, Arc<str>)>,
    pub(crate) spans: Vec<SpanData>,
}

impl Split {
    /// Sets the process's resource, the one every derived one starts from.
    pub(crate) fn set_base(&mut self, resource: &Resource) {
        self.base = Some(resource.clone());
        self.process = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.to_string());
        self.derived.clear();
    }

    /// The process's resource, as last set.
    pub(crate) fn base(&self) -> Option<&Resource> {
        self.base.as_ref()
    }

    /// The process's `service.name`.
    pub(crate) fn process_name(&self) -> Option<&str> {
        self.process.as_deref()
    }

    /// The resource of `service`: the process's, with its `service.name`
    /// and `service.version`.
    pub(crate) fn resource(&mut self, service: &(Arc<str>, Arc<str>)) -> &Resource {
        let base = self.base.clone();
        self.derived.entry(service.clone()).or_insert_with(|| {
            let (name, version) = service;
            let mut attributes: Vec<KeyValue> = base
                .iter()
                .flat_map(|r| r.iter())
                .filter(|(k, _)| !matches!(k.as_str(), "service.name" | "service.version"))
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect();
            attributes.push(KeyValue::new("service.version", version.to_string()));
            Resource::builder_empty()
                .with_attributes(attributes)
                .with_service_name(name.to_string())
                .build()
        })
    }
}

/// Splits `batch` by service, taking the carrying attributes off every
/// span; the process's part (possibly empty) first, with the spans tagged
/// with the process's own name (`process`) in it.
pub(crate) fn partition(batch: Vec<SpanData>, process: Option<&str>) -> Vec<Part> {
    let mut parts = vec![Part {
        service: None,
        spans: Vec::new(),
    }];
    if !batch
        .iter()
        .any(|s| s.attributes.iter().any(|kv| kv.key.as_str() == NAME))
    {
        parts[0].spans = batch;
        return parts;
    }
    for mut span in batch {
        let service = take(&mut span.attributes).filter(|(name, _)| Some(name.as_ref()) != process);
        match parts.iter_mut().find(|p| p.service == service) {
            Some(part) => part.spans.push(span),
            None => parts.push(Part {
                service,
                spans: vec![span],
            }),
        }
    }
    parts
}

/// Removes the carrying attributes from `attributes`; the service they named.
fn take(attributes: &mut Vec<KeyValue>) -> Option<(Arc<str>, Arc<str>)> {
    let mut name = None;
    let mut version = None;
    attributes.retain(|kv| {
        let slot = match kv.key.as_str() {
            NAME => &mut name,
            VERSION => &mut version,
            _ => return true,
        };
        *slot = Some(Arc::<str>::from(kv.value.as_str().as_ref()));
        false
    });
    name.map(|n| (n, version.unwrap_or_else(|| Arc::from(""))))
}

/// Whether `key` is one of the carrying attributes (for tests).
#[cfg(test)]
fn is_carrier(key: &opentelemetry::Key) -> bool {
    matches!(key.as_str(), NAME | VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use std::borrow::Cow;
    use std::time::SystemTime;

    fn span(name: &'static str, attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn tagged(name: &str) -> Vec<KeyValue> {
        vec![
            KeyValue::new("http.route", "/x"),
            KeyValue::new(NAME, name.to_owned()),
            KeyValue::new(VERSION, "2.0.0"),
        ]
    }

    #[test]
    fn a_batch_splits_by_service_and_loses_the_carriers() {
        let batch = vec![
            span("a", vec![KeyValue::new("http.route", "/x")]),
            span("b", tagged("inventory")),
            span("c", tagged("coupon")),
            span("d", tagged("inventory")),
            span("e", tagged("order")),
        ];
        let parts = partition(batch, Some("order"));
        let summary: Vec<(Option<&str>, Vec<&str>)> = parts
            .iter()
            .map(|p| {
                (
                    p.service.as_ref().map(|(n, _)| n.as_ref()),
                    p.spans.iter().map(|s| s.name.as_ref()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (None, vec!["a", "e"]),
                (Some("inventory"), vec!["b", "d"]),
                (Some("coupon"), vec!["c"]),
            ]
        );
        for span in parts.iter().flat_map(|p| &p.spans) {
            assert!(!span.attributes.iter().any(|kv| is_carrier(&kv.key)));
            assert!(
                span.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "http.route")
            );
        }
    }

    #[test]
    fn a_derived_resource_keeps_the_process_attributes_but_its_name_and_version() {
        let mut split = Split::default();
        split.set_base(
            &Resource::builder_empty()
                .with_service_name("order")
                .with_attributes([
                    KeyValue::new("service.version", "1.0.0"),
                    KeyValue::new("service.instance.id", "i-1"),
                ])
                .build(),
        );
        let resource = split
            .resource(&(Arc::from("inventory"), Arc::from("2.0.0")))
            .clone();
        let get = |k: &'static str| {
            resource
                .get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("inventory"));
        assert_eq!(get("service.version").as_deref(), Some("2.0.0"));
        assert_eq!(get("service.instance.id").as_deref(), Some("i-1"));
    }

    #[test]
    fn the_process_service_needs_no_tag_unless_another_is_set() {
        let order = SpanService::new("order", "1");
        let inventory = SpanService::new("inventory", "1");
        let plain = Context::new();
        assert!(order.retag_beside(&plain, || true).is_none());
        let in_inventory = inventory
            .retag_beside(&plain, || false)
            .expect("another service than the process's is tagged");
        assert_eq!(in_inventory.get::<SpanService>(), Some(&inventory));
        assert!(inventory.retag_beside(&in_inventory, || false).is_none());
        // Called from inventory, order's own spans are order's again.
        let back = order
            .retag_beside(&in_inventory, || true)
            .expect("the process's service replaces another's");
        assert_eq!(back.get::<SpanService>(), Some(&order));
    }
}
