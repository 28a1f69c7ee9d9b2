//! Checkouts as an instrumented shop exports them, in OTLP/JSON, for tests
//! that need many flows of a known shape: a request trace and the payment
//! channel's callback as a second trace, tied by `paytrace.flow_id`.

use serde_json::{Value, json};

/// One checkout: the request trace (`POST /checkout` with `order.create`
/// and `channel.request` under it) and, unless left out, the channel's
/// callback (`channel.callback`) as a second trace that links to the
/// channel request. Optional TCC spans under the request make a frozen Try
/// or a branch that ran against the coordinator's decision.
///
/// ```
/// use paytrace_testkit::checkout::CheckoutFlow;
///
/// let mut slow = CheckoutFlow::new(7, 1_700_000_000_000_000_000);
/// slow.request_ms = 3_000;
/// slow.callback_after_ms = None; // the channel never calls back
/// assert_eq!(slow.flow_id(), "ord_7");
/// let body = slow.otlp_json();
/// assert_eq!(body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().map(Vec::len), Some(3));
/// ```
#[derive(Clone, Debug)]
pub struct CheckoutFlow {
    /// Numbers the flow: its id, trace ids and span ids derive from it.
    pub index: u64,
    /// When the request began, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// `payment.method` and `payment.channel` of the request.
    pub method: &'static str,
    /// How long the request took, milliseconds.
    pub request_ms: u64,
    /// When the callback arrived after the request ended; `None`: never.
    pub callback_after_ms: Option<u64>,
    /// A Try of the `points` branch that nothing confirms or cancels.
    pub undecided_try: bool,
    /// The coordinator decides Confirm, yet the `inventory` branch cancels.
    pub decision_violated: bool,
    /// The request's root span ends in error.
    pub failed: bool,
}

/// The payment methods [`CheckoutFlow::new`] cycles through.
pub const METHODS: [&str; 3] = ["alipay", "wechat_pay", "card"];

impl CheckoutFlow {
    /// Checkout `index` beginning at `start_unix_ns`, its method and
    /// durations varied with the index (40–339 ms of request, the callback
    /// 100–999 ms later), without TCC spans.
    ///
    /// ```
    /// let flow = paytrace_testkit::checkout::CheckoutFlow::new(1, 0);
    /// assert_eq!(flow.method, "wechat_pay");
    /// ```
    pub fn new(index: u64, start_unix_ns: u64) -> Self {
        Self {
            index,
            start_unix_ns,
            method: METHODS[(index % 3) as usize],
            request_ms: 40 + (index * 37) % 300,
            callback_after_ms: Some(100 + (index * 53) % 900),
            undecided_try: false,
            decision_violated: false,
            failed: false,
        }
    }

    /// The flow id (`ord_<index>`), also the TCC transaction id.
    pub fn flow_id(&self) -> String {
        format!("ord_{}", self.index)
    }

    /// The whole flow as one OTLP/JSON `ExportTraceServiceRequest` of
    /// service `shop`.
    pub fn otlp_json(&self) -> Value {
        let flow_id = self.flow_id();
        let k = self.index;
        let request_ms = self.request_ms;
        let t0 = self.start_unix_ns;
        let ms = |m: u64| (t0 + m * 1_000_000).to_string();
        let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
        let request = format!("{:032x}", 0x1000 + k);
        let id = |n: u64| format!("{:016x}", k * 16 + n + 1);
        let span = |trace: &str, n: u64, parent: Option<u64>, name: &str, from, to, attrs| {
            let mut s = json!({
                "traceId": trace, "spanId": id(n), "name": name, "kind": 2,
                "startTimeUnixNano": ms(from), "endTimeUnixNano": ms(to), "attributes": attrs,
            });
            if let Some(p) = parent {
                s["parentSpanId"] = json!(id(p));
            }
            s
        };
        let with_flow = |mut attrs: Vec<Value>| {
            attrs.push(attr("paytrace.flow_id", &flow_id));
            attrs
        };
        let mut spans = vec![
            span(
                &request,
                0,
                None,
                "POST /checkout",
                0,
                request_ms,
                with_flow(vec![
                    attr("paytrace.flow", "checkout"),
                    attr("payment.method", self.method),
                    attr("payment.channel", self.method),
                ]),
            ),
            span(
                &request,
                1,
                Some(0),
                "order.create",
                2,
                request_ms / 3,
                with_flow(vec![attr("paytrace.stage", "order.create")]),
            ),
            span(
                &request,
                2,
                Some(0),
                "channel.request",
                request_ms / 3,
                request_ms - 2,
                with_flow(vec![attr("paytrace.stage", "channel.request")]),
            ),
        ];
        if let Some(gap) = self.callback_after_ms {
            let callback = format!("{:032x}", 0x9000_0000 + k);
            let mut s = span(
                &callback,
                3,
                None,
                "POST /callbacks",
                request_ms + gap,
                request_ms + gap + 30,
                with_flow(vec![attr("paytrace.stage", "channel.callback")]),
            );
            // The callback links to the channel request that caused it.
            s["links"] = json!([{"traceId": request, "spanId": id(2)}]);
            spans.push(s);
        }
        let tcc = |resource: &str, phase: &str| {
            with_flow(vec![
                attr("tcc.xid", &flow_id),
                attr("tcc.resource", resource),
                attr("tcc.phase", phase),
            ])
        };
        if self.undecided_try {
            spans.push(span(
                &request,
                4,
                Some(0),
                "POST /points/try",
                3,
                9,
                tcc("points", "try"),
            ));
        }
        if self.decision_violated {
            spans.push(span(
                &request,
                5,
                Some(0),
                "POST /inventory/try",
                3,
                6,
                tcc("inventory", "try"),
            ));
            let decision = with_flow(vec![
                attr("tcc.xid", &flow_id),
                attr("tcc.decision", "confirm"),
            ]);
            spans.push(span(&request, 6, Some(0), "tcc decide", 7, 8, decision));
            // No fence: the Cancel runs and succeeds against the decision.
            spans.push(span(
                &request,
                7,
                Some(0),
                "POST /inventory/cancel",
                9,
                10,
                tcc("inventory", "cancel"),
            ));
        }
        if self.failed {
            spans[0]["status"] = json!({"code": 2, "message": "the channel refused"});
        }
        json!({"resourceSpans": [{
            "resource": {"attributes": [attr("service.name", "shop")]},
            "scopeSpans": [{"spans": spans}],
        }]})
    }
}

/// The replica, of `replicas`, that a Collector routing on
/// `paytrace.flow_id` sends `flow_id` to: FNV-1a of the id, so always the
/// same one.
///
/// ```
/// use paytrace_testkit::checkout::replica_for;
/// assert_eq!(replica_for("ord_1", 3), replica_for("ord_1", 3));
/// assert!(replica_for("ord_2", 3) < 3);
/// ```
pub fn replica_for(flow_id: &str, replicas: usize) -> usize {
    let hash = flow_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % replicas as u64) as usize
}
