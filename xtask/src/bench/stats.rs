//! The few statistics the report needs. Timings on a shared VM are noisy, so every figure
//! is a median with its min–max spread, and tracers are compared by ratio within one run.
use serde_json::{Value, json};

/// Median, min and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for no samples (a condition that could not run).
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        let median = median(samples)?;
        let (min, max) = spread(samples)?;
        Some(Self {
            median,
            min,
            max,
            n: samples.len(),
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max, "n": self.n })
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The middle value; the mean of the two middle values for an even count.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    let v = sorted(samples);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(f64::midpoint(v[n / 2 - 1], v[n / 2])),
    }
}

/// (min, max).
pub(crate) fn spread(samples: &[f64]) -> Option<(f64, f64)> {
    let v = sorted(samples);
    Some((*v.first()?, *v.last()?))
}

/// The `p`-th percentile (0–100), nearest-rank: the smallest sample with at least `p`% of
/// the samples at or below it. With few samples p99 is simply the maximum, which is the
/// honest answer.
pub(crate) fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let v = sorted(samples);
    if v.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "rank of a small sample set, rounded up and clamped to its length"
    )]
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// `value / baseline`; `None` when the baseline is zero or either is missing.
pub(crate) fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => Some(v / b),
        _ => None,
    }
}

/// A latency run's figures: trials, p50, p99 and the spread, in ms.
pub(crate) fn latency_json(latencies_ms: &[f64]) -> Value {
    json!({
        "trials": latencies_ms.len(),
        "p50_ms": percentile(latencies_ms, 50.0),
        "p99_ms": percentile(latencies_ms, 99.0),
        "spread_ms": Summary::of(latencies_ms).map(|s| s.json()),
    })
}

/// Integer counts as `f64` for reporting (counts here stay far below 2^52).
#[expect(
    clippy::cast_precision_loss,
    reason = "event counts and byte sizes far below 2^52"
)]
pub(crate) fn f(n: u64) -> f64 {
    n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        // Non-finite samples (a failed measurement) are ignored, not sorted in.
        assert_eq!(median(&[f64::NAN, 1.0, 3.0]), Some(2.0));
    }

    #[test]
    fn spread_is_min_and_max() {
        assert_eq!(spread(&[2.0, 9.0, -1.0, 4.0]), Some((-1.0, 9.0)));
        assert_eq!(spread(&[]), None);
        let s = Summary::of(&[1.0, 5.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 3));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<f64> = (1..=10).rev().map(f).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 101.0), None);
    }

    #[test]
    fn ratios_need_a_positive_baseline() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }
}
