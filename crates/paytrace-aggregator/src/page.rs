//! The web page at `/`: where a flow's time goes, its slowest instances as
//! waterfalls with the critical path marked, and TCC anomalies.
//!
//! One HTML file with its CSS and JavaScript inline (`page/index.html`),
//! compiled into the binary: no CDN, no fonts, nothing fetched but the
//! aggregator's own JSON API. The view (flow, window, method, channel split,
//! stage, open trace) lives in the URL's query, so a link reproduces it:
//! `/?flow=checkout&window=5m&method=alipay&stage=channel.request`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The page, as served.
pub(crate) const INDEX_HTML: &str = include_str!("page/index.html");

/// A trace URL template without `{trace_id}` to replace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--trace-url-template {template:?} has no {{trace_id}} to replace, e.g. 'http://jaeger:16686/trace/{{trace_id}}'"
)]
#[non_exhaustive]
pub struct TemplateError {
    /// The template given.
    pub template: String,
}

/// What the page needs from the command line.
#[derive(Clone, Debug, Default)]
pub struct PageConfig {
    trace_url_template: Option<String>,
}

impl PageConfig {
    /// Links traces to a trace viewer: `template` with `{trace_id}` replaced,
    /// e.g. `http://jaeger:16686/trace/{trace_id}`. Refused without `{trace_id}`.
    ///
    /// ```
    /// use paytrace_aggregator::server::PageConfig;
    /// let page = PageConfig::default().trace_url_template("http://jaeger:16686/trace/{trace_id}").unwrap();
    /// assert_eq!(page.trace_url("4bf9").as_deref(), Some("http://jaeger:16686/trace/4bf9"));
    /// assert!(PageConfig::default().trace_url_template("http://jaeger:16686/").is_err());
    /// ```
    pub fn trace_url_template(mut self, template: &str) -> Result<Self, TemplateError> {
        if !template.contains("{trace_id}") {
            return Err(TemplateError {
                template: template.to_owned(),
            });
        }
        self.trace_url_template = Some(template.to_owned());
        Ok(self)
    }

    /// The viewer's URL of `trace_id`, if a template is set.
    pub fn trace_url(&self, trace_id: &str) -> Option<String> {
        self.trace_url_template
            .as_ref()
            .map(|t| t.replace("{trace_id}", trace_id))
    }
}

/// `GET /` and `GET /api/v1/config`.
pub(crate) fn router(config: PageConfig) -> Router {
    let template = config.trace_url_template.clone();
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    INDEX_HTML,
                )
                    .into_response()
            }),
        )
        .route(
            "/api/v1/config",
            get(move || {
                let template = template.clone();
                async move { axum::Json(serde_json::json!({ "trace_url_template": template })) }
            }),
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_url_template_fills_the_trace_id() {
        use crate::page::PageConfig;
        let config = PageConfig::default()
            .trace_url_template("http://jaeger:16686/trace/{trace_id}")
            .expect("a valid template");
        assert_eq!(
            config.trace_url("4bf9"),
            Some("http://jaeger:16686/trace/4bf9".to_owned())
        );
    }
}
