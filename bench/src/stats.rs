//! Percentiles and medians of latency samples (pure).
//!
//! Percentiles use the nearest-rank method: the p-th percentile of n sorted samples is the
//! sample of rank `ceil(p / 100 * n)` (1-based). It is always one of the measured values,
//! never an interpolation: with 200 samples p99 is the 198th smallest, so the two slowest
//! samples are above it.

/// The nearest-rank percentile `p` (0 < p <= 100) of `samples`; `None` when empty.
#[must_use]
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // rank = ceil(p/100 * n), computed in integers where possible to dodge 0.99*200=197.99999.
    let exact = p * n as f64 / 100.0;
    let rounded = exact.round();
    let rank = if (exact - rounded).abs() < 1e-9 {
        rounded as usize
    } else {
        exact.ceil() as usize
    };
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The median (the nearest-rank 50th percentile: the lower middle of an even count).
#[must_use]
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// The sample summary the tables show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dist {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Dist {
    /// Summarises `samples`; `None` when empty.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Dist> {
        Some(Dist {
            n: samples.len(),
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            p50: percentile(samples, 50.0)?,
            p90: percentile(samples, 90.0)?,
            p99: percentile(samples, 99.0)?,
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `a / b`, or `None` when `b` is not a positive number.
#[must_use]
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_measured_values() {
        let one_to_hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let two_hundred: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let cases: &[(&[f64], f64, Option<f64>)] = &[
            (&[], 50.0, None),
            (&[7.0], 50.0, Some(7.0)),
            (&[7.0], 99.0, Some(7.0)),
            (&[1.0, 2.0], 50.0, Some(1.0)),
            (&[3.0, 1.0, 2.0], 50.0, Some(2.0)),
            (&one_to_hundred, 50.0, Some(50.0)),
            (&one_to_hundred, 99.0, Some(99.0)),
            (&one_to_hundred, 100.0, Some(100.0)),
            (&one_to_hundred, 1.0, Some(1.0)),
            (&two_hundred, 99.0, Some(198.0)),
            (&two_hundred, 50.0, Some(100.0)),
            (&[5.0, 1.0], 0.0, None),
            (&[5.0, 1.0], 101.0, None),
        ];
        for (samples, p, want) in cases {
            assert_eq!(percentile(samples, *p), *want, "p{p} of {samples:?}");
        }
    }

    #[test]
    fn ten_samples_p99_is_the_largest_and_p90_the_ninth() {
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&s, 99.0), Some(10.0));
        assert_eq!(percentile(&s, 90.0), Some(9.0));
    }

    #[test]
    fn nan_samples_are_ignored() {
        assert_eq!(median(&[f64::NAN, 4.0, 2.0]), Some(2.0));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn dist_and_ratio() {
        let d = Dist::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((d.n, d.min, d.p50, d.p99, d.max), (4, 1.0, 2.0, 4.0, 4.0));
        assert_eq!(Dist::of(&[]), None);
        assert_eq!(ratio(6.0, 2.0), Some(3.0));
        assert_eq!(ratio(6.0, 0.0), None);
        assert_eq!(ratio(6.0, -1.0), None);
    }
}
