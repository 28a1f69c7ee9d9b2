//! The services' `/metrics`, as the demo's own checks read them: what
//! saturated during the load (`saturation.rs`), whether the shop finished
//! its work (`settle.rs`), and the fences' and the chaos' counts
//! (`demo.rs`). One reader of the Prometheus text format for the three.

use crate::plan::{Plan, Role};

/// One sample line of the text format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The series' name (`http_server_active_requests`, `…_count`).
    pub family: &'a str,
    /// Its label set as written, `{a="b",…}`; empty when it has none.
    pub labels: &'a str,
    /// Its value.
    pub value: f64,
}

/// The samples of an exposition, in order; comments and lines that are not
/// samples are passed over.
///
/// ```ignore
/// let s: Vec<_> = samples("# HELP x\nx{a=\"b\"} 2\n").collect();
/// assert_eq!((s[0].family, s[0].labels, s[0].value), ("x", "{a=\"b\"}", 2.0));
/// ```
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (family, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            Some(Sample {
                family,
                labels,
                value,
            })
        })
}

/// The value of `name` in a `{a="b",…}` label set, if it has one.
pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    labels
        .split(key.as_str())
        .nth(1)
        .and_then(|rest| rest.split('"').next())
}

/// The exposition of `role`'s `/metrics`; an error when it does not answer
/// (a body that cannot be read is empty).
pub async fn scrape(
    client: &reqwest::Client,
    plan: Plan,
    role: Role,
) -> Result<String, reqwest::Error> {
    let response = client
        .get(format!("{}/metrics", plan.url(role)))
        .send()
        .await?;
    Ok(response.text().await.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_split_into_family_labels_and_value_and_the_rest_is_passed_over() {
        let text = "# TYPE q gauge\nq{queue=\"a\",service=\"p\"} 3\nup 1\nnot a sample\nx{a=\"b c\"} NaN\n";
        let found: Vec<_> = samples(text).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            (found[0].family, found[0].labels, found[0].value),
            ("q", "{queue=\"a\",service=\"p\"}", 3.0)
        );
        assert_eq!((found[1].family, found[1].labels), ("up", ""));
        assert_eq!(label(found[0].labels, "queue"), Some("a"));
        assert_eq!(label(found[0].labels, "service"), Some("p"));
        assert_eq!(label(found[0].labels, "kind"), None);
    }
}
