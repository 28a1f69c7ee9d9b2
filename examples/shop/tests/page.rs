//! The aggregator's page in a real headless Chromium, driven over WebDriver
//! (chromedriver): with the demo under `channel-slow`, the slow channel's bar
//! is dominated by `channel.request`, a slow instance opens as a waterfall
//! with its critical path and the callback hop marked, injected TCC anomalies
//! are listed, and the URL restores the view. With no traffic the page says
//! so; when the aggregator goes away and comes back, the error goes too.
//! Screenshots land in `target/tmp/paytrace-page-*.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`.

mod monitoring;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use monitoring::Killed;
use paytrace_aggregator::server::{Running, ServeConfig, start};
use paytrace_testkit::free_port;
use serde_json::{Value, json};

/// A chromedriver and a headless Chromium session.
struct Browser {
    client: Client,
    _driver: Killed,
    _profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        // Chromium and its helpers run in chromedriver's process group:
        // dropping `driver` stops them all.
        let driver = Killed::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "apt-get install chromium chromium-driver",
        );
        let profile =
            std::env::temp_dir().join(format!("paytrace-chromium-{}-{port}", std::process::id()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // chromedriver speaks plain HTTP on loopback: no TLS needed.
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body that returns a value) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy; returns it.
    async fn wait_for(&self, what: &str, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(script).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting for {what}; last value {v}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Clicks the element `css` selects. The page redraws every few
    /// seconds, so an element found just before a redraw may be gone by the
    /// click: find it again and retry.
    async fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..10 {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.click().await {
                    Ok(()) => return,
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot click {css}: {last}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("paytrace-page-{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        eprintln!("screenshot: {}", path.display());
    }

    async fn close(self) {
        let _ = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_where_a_slow_channel_spends_checkout_time() {
    const BASE: u16 = 7300;
    let _demo = Killed::spawn(
        Command::new(env!("CARGO_BIN_EXE_paytrace-demo"))
            .args([
                "--duration",
                "240s",
                "--rps",
                "10",
                "--port-base",
                &BASE.to_string(),
            ])
            .args([
                "--chaos",
                "channel-slow,cancel-after-confirm",
                "--chaos-channel",
                "wechat_pay",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "cargo build -p paytrace-demo",
    );
    let api = format!("http://127.0.0.1:{}", BASE + 80);
    // Wait for enough complete checkouts of every method: with 60 of the
    // slow channel, its answer (mean ~0.9 s) outweighs the wait for its
    // callback (~0.6 s) by several standard errors of either mean.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = match http
            .get(format!(
                "{api}/api/v1/breakdown?flow=checkout&window=5m&payment_method=wechat_pay"
            ))
            .send()
            .await
        {
            Ok(r) => {
                r.json::<Value>()
                    .await
                    .ok()
                    .and_then(|b| b["traces"].as_u64())
                    .unwrap_or(0)
                    >= 60
            }
            Err(_) => false,
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo produced no wechat_pay checkouts"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("{api}/?flow=checkout&window=5m"))
        .await
        .expect("the page loads");
    browser
        .wait_for(
            "the flows table",
            r#"return !!document.querySelector('#flows tr[data-flow="checkout"]');"#,
            Duration::from_secs(20),
        )
        .await;

    // The slow channel's bar: channel.request is its largest segment, and
    // far larger than in alipay's bar.
    let shares = browser
        .wait_for(
            "the wechat_pay bar",
            r#"const share = (g) => Object.fromEntries([...document.querySelectorAll(`.bar[data-group="${g}"] .seg`)].map(s => [s.dataset.stage, parseFloat(s.dataset.share)]));
               const w = share("wechat_pay"), a = share("alipay");
               return Object.keys(w).length && Object.keys(a).length ? { wechat_pay: w, alipay: a } : null;"#,
            Duration::from_secs(20),
        )
        .await;
    let wechat = shares["wechat_pay"].as_object().expect("segments");
    let (top, top_share) = wechat
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .fold((String::new(), 0.0), |m, x| if x.1 > m.1 { x } else { m });
    assert_eq!(top, "channel.request", "wechat_pay's bar: {wechat:?}");
    let alipay_request = shares["alipay"]["channel.request"].as_f64().unwrap_or(0.0);
    assert!(
        top_share > 2.0 * alipay_request,
        "wechat_pay {top_share} vs alipay {alipay_request}"
    );
    browser.screenshot("breakdown").await;

    // Click the slow segment: the slowest instances by channel.request; open
    // the first: a waterfall with the critical path and the callback wait.
    browser
        .click(r#".bar[data-group="wechat_pay"] .seg[data-stage="channel.request"]"#)
        .await;
    browser
        .wait_for(
            "slow instances by stage",
            r#"return location.search.includes("stage=channel.request") && document.querySelector('#slow tbody tr[data-instance]');"#,
            Duration::from_secs(20),
        )
        .await;
    browser.click("#slow tbody tr[data-instance]").await;
    let waterfall = browser
        .wait_for(
            "the waterfall",
            r#"const svg = document.querySelector('#waterfall-svg');
               if (!svg) return null;
               return {
                 spans: svg.querySelectorAll('rect.span').length,
                 critical: [...svg.querySelectorAll('rect.span.critical')].map(r => r.dataset.stage),
                 waits: [...svg.querySelectorAll('rect.async-wait')].map(r => r.dataset.stage),
                 band: svg.querySelectorAll('rect.cp-band').length,
                 url: location.search,
               };"#,
            Duration::from_secs(20),
        )
        .await;
    assert!(
        waterfall["spans"].as_u64().unwrap_or(0) >= 10,
        "{waterfall}"
    );
    let critical: Vec<&str> = waterfall["critical"]
        .as_array()
        .expect("critical")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        critical.contains(&"channel.request"),
        "channel.request is on the critical path: {critical:?}"
    );
    let waits: Vec<&str> = waterfall["waits"]
        .as_array()
        .expect("waits")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        waits.contains(&"async:channel.callback"),
        "the callback hop is drawn: {waits:?}"
    );
    let url = waterfall["url"].as_str().expect("url").to_owned();
    assert!(
        url.contains("flow=checkout") && url.contains("trace="),
        "{url}"
    );
    browser
        .client
        .execute(
            "document.querySelector('#waterfall').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll");
    browser.screenshot("waterfall").await;

    // The URL is the view: loading it again opens the same waterfall.
    browser
        .client
        .goto(&format!("{api}/{url}"))
        .await
        .expect("reload");
    browser
        .wait_for(
            "the same view after a reload",
            r#"return document.querySelector('#waterfall-svg rect.span.critical') && location.search.includes("stage=channel.request");"#,
            Duration::from_secs(20),
        )
        .await;

    // The injected late Cancels are listed, with their traces.
    let kinds = browser
        .wait_for(
            "cancel_after_confirm in the anomaly list",
            r#"const rows = [...document.querySelectorAll('#anomalies tbody tr[data-kind]')];
               return rows.some(r => r.dataset.kind === "cancel_after_confirm") ? rows.map(r => r.dataset.kind) : null;"#,
            Duration::from_secs(60),
        )
        .await;
    assert!(kinds.as_array().is_some_and(|k| !k.is_empty()), "{kinds}");
    browser
        .client
        .execute(
            "document.querySelector('#tcc-section').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll");
    browser.screenshot("tcc").await;
    browser.close().await;
}

fn addresses() -> ServeConfig {
    let mut config = ServeConfig::on_free_loopback_ports();
    config.otlp_grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.otlp_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.pipeline.assembler.trace_idle = Duration::from_millis(100);
    config.pipeline.flows.flow_idle = Duration::from_millis(100);
    config.pipeline.flows.terminal_stages.clear();
    config.page = config
        .page
        .trace_url_template("http://jaeger.example:16686/trace/{trace_id}")
        .expect("a template with {trace_id}");
    config
}

async fn send_checkout(running: &Running) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let s = |v: &str| json!({ "stringValue": v });
    let body = json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "service.name", "value": s("gateway") }] },
        "scopeSpans": [{ "spans": [{
            "traceId": "5b".repeat(16), "spanId": "01".repeat(8), "name": "POST /checkout", "kind": 2,
            "startTimeUnixNano": (now - 300_000_000).to_string(), "endTimeUnixNano": now.to_string(),
            "attributes": [
                { "key": "paytrace.flow", "value": s("checkout") },
                { "key": "payment.method", "value": s("alipay") },
            ],
        }]}],
    }]});
    paytrace_testkit::post_otlp_json(running.otlp_http, &body).await;
}

/// Three checkouts sampled at 10%, as paytrace's sampler (or any SDK with
/// consistent probability sampling) marks them: `ot=th:e666`.
async fn send_sampled_checkouts(running: &Running) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let s = |v: &str| json!({ "stringValue": v });
    let spans: Vec<_> = (1..=3)
        .map(|i| {
            json!({
                "traceId": format!("{i:02x}").repeat(16), "spanId": "01".repeat(8),
                "traceState": "ot=th:e666", "name": "POST /checkout", "kind": 2,
                "startTimeUnixNano": (now - 300_000_000).to_string(), "endTimeUnixNano": now.to_string(),
                "attributes": [{ "key": "paytrace.flow", "value": s("checkout") }],
            })
        })
        .collect();
    let body = json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "service.name", "value": s("gateway") }] },
        "scopeSpans": [{ "spans": spans }],
    }]});
    paytrace_testkit::post_otlp_json(running.otlp_http, &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_flows_show_the_instances_seen_and_the_flows_estimated() {
    let running = start(addresses()).await.expect("starts");
    send_sampled_checkouts(&running).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("http://{}/", running.listen))
        .await
        .expect("the page loads");
    // Each instance sampled at 10% stands for ten: 3 seen, about 30 flows.
    let cells = browser
        .wait_for(
            "the checkout row with its estimate",
            r#"const row = document.querySelector('#flows tr[data-flow="checkout"]');
               return row && [...row.children].map((td) => td.textContent).join('|');"#,
            Duration::from_secs(30),
        )
        .await;
    let cells: Vec<&str> = cells.as_str().expect("text").split('|').collect();
    assert_eq!(&cells[..3], ["checkout", "3", "≈30"], "{cells:?}");
    let title = browser
        .wait_for(
            "the breakdown title",
            r#"const t = document.querySelector('#breakdown-title').textContent;
               return t.includes('instances') && t;"#,
            Duration::from_secs(20),
        )
        .await;
    assert!(
        title
            .as_str()
            .is_some_and(|t| t.contains("3 instances (≈30 flows, sampled)")),
        "{title}"
    );
    browser.screenshot("sampled").await;
    running.shutdown().await;
}

/// An aggregator that asks for an API token: the page asks for it, and
/// with it shows the flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_api_token_and_then_shows_the_flows() {
    let file = paytrace_testkit::temp_file("page-api-tokens", "oncall-reader\n");
    let mut config = addresses();
    config.api_tokens = Some(std::sync::Arc::new(
        paytrace_aggregator::auth::Tokens::load(&file).expect("a token"),
    ));
    let running = start(config).await.expect("starts");
    send_checkout(&running).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&format!("http://{}/", running.listen))
        .await
        .expect("the page loads");
    browser
        .wait_for(
            "the token form",
            r#"return !document.querySelector('#token-form').hidden
                 && document.querySelector('#status').textContent === 'needs a token';"#,
            Duration::from_secs(20),
        )
        .await;
    let submit = |token: &str| {
        format!(
            "document.querySelector('#token').value = '{token}'; \
             document.querySelector('#token-form').requestSubmit(); return true;"
        )
    };
    // A wrong token is refused and the form stays.
    browser.eval(&submit("guess")).await;
    browser
        .wait_for(
            "the refusal",
            r#"return document.querySelector('#token-error').textContent.includes('refused');"#,
            Duration::from_secs(20),
        )
        .await;
    browser.eval(&submit("oncall-reader")).await;
    browser
        .wait_for(
            "the flows, the form gone",
            r#"return !!document.querySelector('#flows tr[data-flow="checkout"]') && document.querySelector('#token-form').hidden;"#,
            Duration::from_secs(30),
        )
        .await;
    browser.screenshot("token").await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_aggregator_says_so_and_a_restart_leaves_no_stale_error() {
    let config = addresses();
    let running = start(config.clone()).await.expect("starts");
    let page = format!("http://{}/", running.listen);
    let browser = Browser::start().await;
    browser.client.goto(&page).await.expect("the page loads");
    browser
        .wait_for(
            "the empty state",
            r#"const e = document.querySelector('#flows-empty');
               return !e.hidden && e.offsetParent !== null && !document.querySelector('#banner').classList.contains('shown')
                 && document.querySelector('#status').textContent.startsWith('live');"#,
            Duration::from_secs(20),
        )
        .await;
    let text = browser
        .eval("return document.querySelector('#flows-empty').textContent;")
        .await;
    assert!(
        text.as_str().is_some_and(|t| t.contains("No traces yet")),
        "{text}"
    );
    browser.screenshot("empty").await;

    // The aggregator goes away: the page says it cannot reach it.
    running.shutdown().await;
    browser
        .wait_for(
            "the error banner",
            "return document.querySelector('#banner').classList.contains('shown');",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot("disconnected").await;

    // It comes back, on the same addresses, and traffic arrives: the error
    // is gone and the flow is shown.
    let running = start(config).await.expect("restarts on the same ports");
    send_checkout(&running).await;
    browser
        .wait_for(
            "the flow after the restart, without the banner",
            r#"return !!document.querySelector('#flows tr[data-flow="checkout"]') && !document.querySelector('#banner').classList.contains('shown')
                 && document.querySelector('#banner').textContent === '';"#,
            Duration::from_secs(30),
        )
        .await;
    browser.screenshot("restarted").await;
    // Its instance opens, and links its trace to the configured viewer.
    browser.click("#slow tbody tr[data-instance]").await;
    let href = browser
        .wait_for(
            "a link to the trace viewer",
            r#"const a = document.querySelector('#waterfall a[href]'); return a && a.getAttribute('href');"#,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        href,
        json!(format!(
            "http://jaeger.example:16686/trace/{}",
            "5b".repeat(16)
        ))
    );
    browser.close().await;
    running.shutdown().await;
}

/// Checkouts `from..to`, each flushed into the minute of `wall`: wechat_pay's
/// channel answering in `wechat_ms` (about), the others as usual.
async fn checkouts_at(
    running: &Running,
    from: u64,
    to: u64,
    wechat_ms: u64,
    wall: std::time::SystemTime,
) {
    use paytrace_testkit::checkout::CheckoutFlow;
    let t0 = wall
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
        - 5_000_000_000;
    for k in from..to {
        let mut flow = CheckoutFlow::new(k, t0);
        if flow.method == "wechat_pay" {
            flow.request_ms = wechat_ms + (k * 37) % 100;
        }
        paytrace_testkit::post_otlp_json(running.otlp_http, &flow.otlp_json()).await;
    }
    running
        .pipeline
        .flush(paytrace_aggregator::pipeline::Now::at(Instant::now(), wall));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_panel_names_what_changed() {
    // Nothing completes on its own: each batch is flushed into its minute.
    let mut config = addresses();
    config.pipeline.assembler.trace_idle = Duration::from_secs(3600);
    config.pipeline.flows.flow_idle = Duration::from_secs(3600);
    let running = start(config).await.expect("the aggregator starts");
    let now = std::time::SystemTime::now();
    // Twenty minutes ago, 90 ordinary checkouts; now, 90 whose wechat_pay
    // channel takes a second and a half.
    checkouts_at(&running, 0, 90, 120, now - Duration::from_secs(20 * 60)).await;
    checkouts_at(&running, 100, 190, 1_500, now).await;

    let browser = Browser::start().await;
    let api = format!("http://{}", running.listen);
    browser
        .client
        .goto(&format!("{api}/?flow=checkout&window=5m"))
        .await
        .expect("the page loads");
    let findings = browser
        .wait_for(
            "the What changed panel",
            r#"const s = document.querySelector('#changes-section');
               const items = [...document.querySelectorAll('#changes li.finding')].map(li => li.textContent);
               return s && !s.hidden && items.length ? items : null;"#,
            Duration::from_secs(20),
        )
        .await;
    let first = findings[0].as_str().expect("text");
    assert!(
        first.starts_with("wechat_pay channel.request: critical path +"),
        "{findings}"
    );
    // The panel comes before everything else on the page.
    let order = browser
        .eval(r#"return [...document.querySelectorAll('main > section:not([hidden])')].map(s => s.id);"#)
        .await;
    assert_eq!(order[0], "changes-section", "{order}");
    browser.screenshot("changes").await;
    browser.close().await;
    running.shutdown().await;
}
