//! OpenTelemetry consistent probability sampling, as paytrace's middleware
//! decides it and its aggregator reads it back.
//!
//! The specification ("TraceState: Probability Sampling") gives every trace
//! a 56-bit *randomness* `R` and every sampler a 56-bit *rejection threshold*
//! `T`: a span is sampled when `R >= T`, so its probability is
//! `1 - T / 2^56`. Both travel in the `ot` entry of the W3C `tracestate`:
//! `th` the threshold (hex, trailing zeros dropped), `rv` the randomness when
//! it is not the trace id's last 56 bits. Any SDK that implements the
//! specification makes the same decision from the same entry, and whoever
//! receives a span knows how many it stands for.
//!
//! paytrace adds one rule on top, so that every trace of one flow (the
//! checkout's request, its channel callback, its queue consumer) gets the
//! same decision: a new trace takes its randomness from the span it links to
//! (that span's `rv`, else its trace id), else from the flow id in its
//! baggage ([`flow_randomness`]), else from its own trace id.
//!
//! ```
//! use paytrace_sampling::{OtState, Threshold};
//!
//! let ten_percent = Threshold::from_probability(0.1);
//! assert_eq!(ten_percent.to_string(), "e666");
//! let state = OtState::parse("th:e666;rv:ffffffffffffff");
//! assert_eq!(state.threshold, Some(ten_percent));
//! assert!(ten_percent.samples(state.randomness.unwrap()));
//! assert!((ten_percent.probability() - 0.1).abs() < 1e-4);
//! ```

use std::fmt;

/// The `tracestate` key of OpenTelemetry's entry.
pub const TRACESTATE_KEY: &str = "ot";

/// `2^56`: randomness and thresholds are 56-bit numbers.
pub const MAX: u64 = 1 << 56;

/// Significant hex digits a threshold keeps when written (the specification
/// recommends limiting precision; four digits keep the probability within
/// 0.01% of the one asked for at 10% and within 1% at 0.01%).
pub const PRECISION: usize = 4;

/// A rejection threshold: spans whose randomness is below it are dropped.
///
/// ```
/// use paytrace_sampling::Threshold;
/// assert_eq!(Threshold::ALWAYS.to_string(), "0");
/// assert_eq!(Threshold::from_probability(0.5).to_string(), "8");
/// assert_eq!(Threshold::from_probability(0.25).to_string(), "c");
/// assert_eq!("c".parse::<Threshold>(), Ok(Threshold::from_probability(0.25)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    /// Samples everything (`th:0`).
    pub const ALWAYS: Threshold = Threshold(0);

    /// The threshold of `probability` (clamped to `[2^-56, 1]`), rounded to
    /// [`PRECISION`] significant hex digits as it is written.
    pub fn from_probability(probability: f64) -> Self {
        let p = if probability.is_nan() {
            1.0
        } else {
            probability.clamp(1.0 / MAX as f64, 1.0)
        };
        let exact = ((1.0 - p) * MAX as f64).round() as u64;
        Self(round_to_precision(exact.min(MAX - 1)))
    }

    /// The threshold as a 56-bit number.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The probability that a span is sampled: `1 - T / 2^56`.
    pub fn probability(self) -> f64 {
        (MAX - self.0) as f64 / MAX as f64
    }

    /// How many spans one sampled span stands for: `1 / probability`.
    pub fn adjusted_count(self) -> f64 {
        1.0 / self.probability()
    }

    /// Whether a span with `randomness` is sampled.
    pub fn samples(self, randomness: Randomness) -> bool {
        randomness.0 >= self.0
    }
}

/// `value` rounded to [`PRECISION`] significant hex digits of 14 (ties away
/// from zero), saturating below `2^56`.
fn round_to_precision(value: u64) -> u64 {
    let digits = 14 - (value.leading_zeros() as usize - 8) / 4;
    if value == 0 || digits <= PRECISION {
        return value;
    }
    let drop = 4 * (digits - PRECISION) as u32;
    let unit = 1u64 << drop;
    let rounded = (value + unit / 2) >> drop << drop;
    rounded.min((MAX - 1) >> drop << drop)
}

impl fmt::Display for Threshold {
    /// 14 hex digits with the trailing zeros dropped; `0` for always.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let full = format!("{:014x}", self.0);
        f.write_str(full.trim_end_matches('0'))
    }
}

/// Why a `th` or `rv` value was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Not 1 to 14 hex digits (a threshold) or exactly 14 (a randomness).
    Malformed(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(v) => write!(
                f,
                "{v:?} is not a sampling value: a threshold is 1 to 14 lower-case hex digits, a randomness exactly 14"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

fn hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 14 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl std::str::FromStr for Threshold {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if !hex(s) {
            return Err(ParseError::Malformed(s.to_owned()));
        }
        let v = u64::from_str_radix(s, 16).map_err(|_| ParseError::Malformed(s.to_owned()))?;
        Ok(Self(v << (4 * (14 - s.len()))))
    }
}

/// The 56-bit randomness a decision is made from.
///
/// ```
/// use paytrace_sampling::Randomness;
/// let trace_id = [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
///                 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
/// assert_eq!(Randomness::of_trace_id(trace_id).to_string(), "ce929d0e0e4736");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Randomness(u64);

impl Randomness {
    /// The last 56 bits of a trace id: a trace's randomness when its
    /// `tracestate` has no `rv`.
    pub fn of_trace_id(trace_id: [u8; 16]) -> Self {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&trace_id[9..]);
        Self(u64::from_be_bytes(low))
    }

    /// The randomness as a 56-bit number.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Randomness {
    /// Exactly 14 hex digits, as `rv` is written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:014x}", self.0)
    }
}

impl std::str::FromStr for Randomness {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() != 14 || !hex(s) {
            return Err(ParseError::Malformed(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseError::Malformed(s.to_owned()))
    }
}

/// The randomness every trace of the flow `flow_id` shares when none comes
/// from a linked span: FNV-1a (64 bits) of the id's UTF-8 bytes, mixed by the
/// SplitMix64 finalizer, its low 56 bits. Written to `rv` so that other SDKs
/// and the aggregator see it.
///
/// ```
/// use paytrace_sampling::flow_randomness;
/// assert_eq!(flow_randomness("ord_1"), flow_randomness("ord_1"));
/// assert_ne!(flow_randomness("ord_1"), flow_randomness("ord_2"));
/// ```
pub fn flow_randomness(flow_id: &str) -> Randomness {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flow_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    Randomness(h & (MAX - 1))
}

/// The sub-keys of the `ot` entry paytrace reads and writes, with the rest
/// kept as they came.
///
/// ```
/// use paytrace_sampling::{OtState, Randomness, Threshold};
/// let mut state = OtState::parse("p:8;th:c");
/// state.randomness = Some("0123456789abcd".parse().unwrap());
/// assert_eq!(state.to_string(), "th:c;rv:0123456789abcd;p:8");
/// // A malformed value is dropped, never trusted.
/// assert_eq!(OtState::parse("th:xyz").threshold, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtState {
    /// `th`: the threshold the span was sampled with.
    pub threshold: Option<Threshold>,
    /// `rv`: explicit randomness.
    pub randomness: Option<Randomness>,
    /// Other sub-keys (`key:value`), in their order.
    pub other: Vec<String>,
}

impl OtState {
    /// Reads the value of an `ot` entry (`th:e666;rv:…`). Malformed `th` or
    /// `rv` values are left out, as the specification asks.
    pub fn parse(value: &str) -> Self {
        let mut state = Self::default();
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some(("th", v)) => state.threshold = v.parse().ok(),
                Some(("rv", v)) => state.randomness = v.parse().ok(),
                _ => state.other.push(part.to_owned()),
            }
        }
        state
    }

    /// Reads the `ot` entry of a whole `tracestate` header value.
    ///
    /// ```
    /// use paytrace_sampling::{OtState, Threshold};
    /// let s = OtState::from_tracestate("vendor=x,ot=th:8");
    /// assert_eq!(s.threshold, Some(Threshold::from_probability(0.5)));
    /// assert_eq!(OtState::from_tracestate("vendor=x"), OtState::default());
    /// ```
    pub fn from_tracestate(tracestate: &str) -> Self {
        tracestate
            .split(',')
            .filter_map(|member| member.trim().split_once('='))
            .find(|(key, _)| key.trim() == TRACESTATE_KEY)
            .map(|(_, value)| Self::parse(value))
            .unwrap_or_default()
    }
}

impl fmt::Display for OtState {
    /// `th` first, then `rv`, then the rest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(th) = self.threshold {
            parts.push(format!("th:{th}"));
        }
        if let Some(rv) = self.randomness {
            parts.push(format!("rv:{rv}"));
        }
        parts.extend(self.other.iter().cloned());
        f.write_str(&parts.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_specifications_thresholds_read_as_documented() {
        // The specification's examples: th:0 keeps all, th:8 half, th:c a
        // quarter, th:fd70a4 about 1% (T = 0.99 x 2^56).
        for (th, p) in [("0", 1.0), ("8", 0.5), ("c", 0.25), ("fd70a4", 0.01)] {
            let t: Threshold = th.parse().expect("a valid threshold");
            assert!(
                (t.probability() - p).abs() < 1e-7,
                "th:{th} is {}",
                t.probability()
            );
        }
        assert_eq!(
            "fd70a4".parse::<Threshold>().map(Threshold::value),
            Ok(0xfd70a4 << 32)
        );
    }

    #[test]
    fn thresholds_are_written_with_four_significant_digits() {
        // T = (1 - p) x 2^56, in 14 hex digits, rounded to four:
        // 0.9 x 2^56 = 0xe6666666666666; 0.99 x 2^56 = 0xfd70a3d70a3d70;
        // 2/3 x 2^56 = 0xaaaaaaaaaaaaaa(b).
        for (p, th) in [
            (1.0, "0"),
            (0.5, "8"),
            (0.25, "c"),
            (0.1, "e666"),
            (0.01, "fd71"),
            (1.0 / 3.0, "aaab"),
        ] {
            assert_eq!(Threshold::from_probability(p).to_string(), th, "p = {p}");
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["", "E666", "0123456789abcde", "x", "-1"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad:?}");
        }
        for bad in ["0123456789abc", "0123456789abcde", "0123456789abcG"] {
            assert!(bad.parse::<Randomness>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_decision_follows_the_threshold() {
        let half = Threshold::from_probability(0.5);
        assert!(!half.samples(Randomness(MAX / 2 - 1)));
        assert!(half.samples(Randomness(MAX / 2)));
        assert!(Threshold::ALWAYS.samples(Randomness(0)));
    }

    proptest! {
        #[test]
        fn a_written_threshold_reads_back(p in 1e-6f64..=1.0) {
            let th = Threshold::from_probability(p);
            prop_assert_eq!(th.to_string().parse::<Threshold>(), Ok(th));
            // Four significant digits: the probability within 0.1% of 1 - p's
            // precision, relative to p for the small ones.
            let error = (th.probability() - p).abs();
            prop_assert!(error <= (1.0 - p).max(p) * 2.0f64.powi(-12) + 1e-12, "p {} got {}", p, th.probability());
        }

        #[test]
        fn flow_randomness_fills_56_bits_evenly(ids in proptest::collection::vec("[a-z0-9_]{4,20}", 400)) {
            // Of 400 distinct ids, about half fall above the middle.
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            prop_assume!(unique.len() > 300);
            let above = unique.iter().filter(|id| flow_randomness(id).value() >= MAX / 2).count();
            let n = unique.len() as f64;
            // Five standard deviations of a fair coin.
            prop_assert!((above as f64 - n / 2.0).abs() < 5.0 * (n / 4.0).sqrt());
        }
    }
}
