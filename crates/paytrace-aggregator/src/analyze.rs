//! The offline `analyze` command: OTLP JSON files in, breakdowns out.
//!
//! Input is what the OpenTelemetry Collector's file exporter writes (one
//! `ExportTraceServiceRequest` per line), or one such request as a single
//! (possibly pretty-printed) JSON document. The spans go through the same
//! analysis core as `serve` (assembly, stitching, label bounding, analysis),
//! with its memory limits lifted, and are flushed at the end of the input:
//! `serve` and `analyze` give the same answer for the same spans.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::breakdown::{Breakdown, Groups};
use crate::config::Config;
use crate::decode::{Interner, SpanLimits, decode};
use paytrace_analysis::core::{Core, Now, PipelineConfig};

/// Why a file could not be analysed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not an OTLP JSON `ExportTraceServiceRequest`.
    #[error(
        "{path}:{line}: not an OTLP JSON ExportTraceServiceRequest: {source} \
         (expected the OpenTelemetry Collector file exporter's format: one request per line)"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: crate::decode::JsonError,
    },
}

/// What `analyze` found in its input.
#[derive(Debug, Default)]
pub struct Report {
    /// Breakdowns accumulated per group.
    pub(crate) groups: Groups,
    /// Spans read.
    pub spans: u64,
    /// Spans rejected as invalid.
    pub rejected: u64,
    /// The first rejection's reason.
    pub first_rejection: Option<String>,
    /// Traces read.
    pub traces: u64,
    /// Flow instances (traces stitched together count once).
    pub flows: u64,
}

impl Report {
    /// One breakdown per flow and per (flow, payment method), whole input.
    pub fn breakdowns(&self) -> Vec<Breakdown> {
        self.groups.report(None)
    }
}

/// Reads, decodes and analyses `paths`, showing a progress bar on a terminal.
pub fn analyze_files(paths: &[PathBuf], config: &Config) -> Result<Report, AnalyzeError> {
    let total: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = Report::default();
    let mut core = Core::new(&offline_config(config));
    let mut interner = Interner::default();
    let limits = SpanLimits::default();
    let mut traces = std::collections::HashSet::new();
    let now = std::time::Instant::now();
    for path in paths {
        progress.set_message(format!("reading {}", path.display()));
        for request in read_requests(path, &mut |bytes| progress.inc(bytes))? {
            let decoded = decode(&request, &limits, &config.rules, &mut interner);
            report.spans += decoded.spans.len() as u64;
            report.rejected += decoded.rejected;
            if report.first_rejection.is_none() {
                report.first_rejection = decoded.first_error.clone();
            }
            traces.extend(decoded.spans.iter().map(|s| s.trace_id));
            core.ingest(decoded, now, &mut ());
        }
    }
    progress.finish_and_clear();
    // The input has no clock: the flush runs at the epoch, its minute 0.
    let at = Now::at(now, std::time::UNIX_EPOCH);
    core.flush(at, &mut ());
    report.traces = traces.len() as u64;
    report.groups = core.view(at).groups(1, at.minute());
    report.flows = report.groups.instances();
    Ok(report)
}

/// The analysis settings of `config`, with no limit that would analyse
/// part of the input early: a file is read whole, then flushed.
fn offline_config(config: &Config) -> PipelineConfig {
    let mut settings = PipelineConfig::default();
    settings.flows.max_pending = usize::MAX;
    settings
        .flows
        .terminal_stages
        .extend(config.terminal_stages.clone());
    settings.assembler.max_traces = usize::MAX;
    settings.assembler.max_bytes = usize::MAX;
    settings.assembler.max_spans_per_trace = usize::MAX;
    settings.clock_tolerance = Some(config.clock_tolerance);
    settings.buckets = Some(config.buckets.clone());
    settings.default_sampling_probability = config.default_sampling_probability;
    settings
}

/// The requests in one file (one OTLP/JSON request, or one per line as the
/// Collector's file exporter writes them); `read` hears how many bytes
/// were read so far, for a progress bar.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("paytrace-doc-read-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("traces.jsonl");
/// std::fs::write(&path, "{\"resourceSpans\":[]}\n{\"resourceSpans\":[]}\n").unwrap();
/// let mut bytes = 0;
/// let requests = paytrace_aggregator::analyze::read_requests(&path, &mut |n| bytes += n).unwrap();
/// assert_eq!((requests.len(), bytes), (2, 42));
/// ```
pub fn read_requests(
    path: &Path,
    read: &mut dyn FnMut(u64),
) -> Result<Vec<ExportTraceServiceRequest>, AnalyzeError> {
    let text = std::fs::read_to_string(path).map_err(|source| AnalyzeError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(one) = serde_json::from_str::<ExportTraceServiceRequest>(&text) {
        read(text.len() as u64);
        return Ok(vec![one]);
    }
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        read(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let request =
            crate::decode::parse_json(line.as_bytes()).map_err(|source| AnalyzeError::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })?;
        requests.push(request);
    }
    Ok(requests)
}

/// Seconds as a short human duration: `850µs`, `12.3ms`, `1.25s`.
pub fn human(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 1e-3 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{:.0}µs", seconds * 1e6)
    }
}

/// The breakdowns as aligned text tables.
pub fn render_table(breakdowns: &[Breakdown]) -> String {
    let mut out = String::new();
    for b in breakdowns {
        let mut title = format!("flow {}", b.flow);
        if let Some(m) = &b.payment_method {
            let _ = write!(title, ", payment method {m}");
        }
        if let Some(c) = &b.payment_channel {
            let _ = write!(title, ", channel {c}");
        }
        let e = &b.end_to_end;
        let _ = writeln!(
            out,
            "{title}: {} flows, end to end p50 {} p90 {} p99 {}",
            b.traces,
            human(e.p50),
            human(e.p90),
            human(e.p99)
        );
        let header = [
            "stage",
            "count",
            "p50",
            "p99",
            "self p50",
            "crit. mean",
            "share",
        ];
        let rows: Vec<[String; 7]> = b
            .stages
            .iter()
            .map(|s| {
                [
                    s.stage.clone(),
                    s.count.to_string(),
                    human(s.duration.p50),
                    human(s.duration.p99),
                    human(s.self_time.p50),
                    human(s.critical_path.mean),
                    format!("{:.1}%", s.critical_path.share * 100.0),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            let mut l = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c == 0 {
                    let _ = write!(l, "  {cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(l, "  {cell:>w$}", w = widths[c]);
                }
            }
            l.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(&header));
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{}", line(&cells));
        }
        out.push('\n');
    }
    out
}
