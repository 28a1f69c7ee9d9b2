//! Histograms whose observations carry a weight: a sampled flow instance
//! observed once stands for `1/p` instances. The `prometheus` crate's
//! histogram counts one per observation; this one adds the (integer) weight
//! to the bucket, the count and `weight × value` to the sum, so that the
//! exposed series estimate the unsampled population.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Histogram as HistogramProto, LabelPair, Metric, MetricFamily, MetricType,
};

/// One series: per-bucket counts (not cumulative), the count and the sum.
#[derive(Debug)]
pub(crate) struct WeightedHistogram {
    upper_bounds: Arc<[f64]>,
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum's `f64` bits.
    sum: AtomicU64,
}

impl WeightedHistogram {
    fn new(upper_bounds: Arc<[f64]>) -> Self {
        let buckets = upper_bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            upper_bounds,
            buckets,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records `value` `weight` times.
    pub(crate) fn observe(&self, value: f64, weight: u64) {
        if weight == 0 {
            return;
        }
        if let Some(i) = self.upper_bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(weight, Ordering::Relaxed);
        }
        self.count.fetch_add(weight, Ordering::Relaxed);
        let add = value * weight as f64;
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + add).to_bits())
            });
    }

    fn proto(&self) -> HistogramProto {
        let mut h = HistogramProto::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.upper_bounds.len());
        for (bound, count) in self.upper_bounds.iter().zip(self.buckets.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        h.set_bucket(buckets);
        h.set_sample_count(self.count.load(Ordering::Relaxed));
        h.set_sample_sum(f64::from_bits(self.sum.load(Ordering::Relaxed)));
        h
    }
}

/// A family of [`WeightedHistogram`]s by label values, registered like any
/// `prometheus` collector.
#[derive(Clone, Debug)]
pub(crate) struct WeightedHistogramVec {
    desc: Desc,
    upper_bounds: Arc<[f64]>,
    series: Arc<Mutex<HashMap<Vec<String>, Arc<WeightedHistogram>>>>,
}

impl WeightedHistogramVec {
    /// A family `name` with `labels` and the bucket `upper_bounds` (`+Inf`
    /// is implied).
    pub(crate) fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        upper_bounds: &[f64],
    ) -> prometheus::Result<Self> {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
            HashMap::new(),
        )?;
        // The text encoder writes the `+Inf` bucket from the count.
        let bounds: Vec<f64> = upper_bounds
            .iter()
            .copied()
            .filter(|b| b.is_finite())
            .collect();
        Ok(Self {
            desc,
            upper_bounds: bounds.into(),
            series: Arc::default(),
        })
    }

    /// The series of `values` (in the order of the labels), made at first use.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> Arc<WeightedHistogram> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .entry(key)
            .or_insert_with(|| Arc::new(WeightedHistogram::new(self.upper_bounds.clone())))
            .clone()
    }
}

impl Collector for WeightedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut metrics: Vec<Metric> = series
            .iter()
            .map(|(values, h)| {
                let mut m = Metric::default();
                // Sorted by name, as the `prometheus` crate writes its own.
                let mut labels: Vec<LabelPair> = self
                    .desc
                    .variable_labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                m.set_label(labels);
                m.set_histogram(h.proto());
                m
            })
            .collect();
        metrics.sort_by(|a, b| {
            let key = |m: &Metric| {
                m.get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        });
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weighted_observation_counts_as_many() {
        let family =
            WeightedHistogramVec::new("x_seconds", "x", &["flow"], &[0.1, 1.0]).expect("valid");
        let h = family.with_label_values(&["checkout"]);
        h.observe(0.05, 10);
        h.observe(0.5, 1);
        h.observe(5.0, 3);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(family)).expect("registered");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        for line in [
            r#"x_seconds_bucket{flow="checkout",le="0.1"} 10"#,
            r#"x_seconds_bucket{flow="checkout",le="1"} 11"#,
            r#"x_seconds_bucket{flow="checkout",le="+Inf"} 14"#,
            r#"x_seconds_count{flow="checkout"} 14"#,
            r#"x_seconds_sum{flow="checkout"} 16"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
