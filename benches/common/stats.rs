//! The one percentile estimator of the benches, and a latency summary.
//!
//! **Nearest rank**: the p-th percentile of n sorted samples is the sample of rank
//! `ceil(p / 100 × n)` (1-based, clamped to 1..n): the smallest sample that at least p % of
//! the samples are less than or equal to. No interpolation, so it is always a latency that
//! was measured; p100 is the maximum, p0 the minimum.

/// Nearest-rank percentile of `sorted` (ascending), `p` in 0..=100; `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `v` sorted ascending (total order: a NaN sorts last), for [`percentile`] of durations
/// kept as seconds.
pub fn sorted_f64(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Latencies (µs) summarised: count, p50/p90/p99, max and mean.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub n: u64,
    pub p50: Option<u32>,
    pub p90: Option<u32>,
    pub p99: Option<u32>,
    pub max: Option<u32>,
    pub mean: Option<f64>,
}

impl Summary {
    /// Sorts `samples` in place and summarises them.
    pub fn of(samples: &mut [u32]) -> Summary {
        samples.sort_unstable();
        let n = samples.len() as u64;
        Summary {
            n,
            p50: percentile(samples, 50.0),
            p90: percentile(samples, 90.0),
            p99: percentile(samples, 99.0),
            max: samples.last().copied(),
            mean: (n > 0).then(|| samples.iter().map(|&x| x as f64).sum::<f64>() / n as f64),
        }
    }
}

pub(super) fn self_check() {
    let v: Vec<u32> = (1..=100).collect();
    assert_eq!(percentile(&v, 50.0), Some(50));
    assert_eq!(percentile(&v, 99.0), Some(99));
    assert_eq!(percentile(&v, 100.0), Some(100));
    assert_eq!(percentile(&v, 0.0), Some(1));
    assert_eq!(percentile(&[7], 99.0), Some(7));
    assert_eq!(percentile::<u32>(&[], 50.0), None);
    // 10 samples: p99 is the largest (rank ceil(9.9) = 10), p50 the 5th
    let ten: Vec<u32> = (10..20).collect();
    assert_eq!(
        (percentile(&ten, 50.0), percentile(&ten, 99.0)),
        (Some(14), Some(19))
    );
    let secs = sorted_f64(vec![2.5, 0.5, 1.5, 9.0]);
    assert_eq!(
        (percentile(&secs, 50.0), percentile(&secs, 99.0)),
        (Some(1.5), Some(9.0))
    );
    let s = Summary::of(&mut [3, 1, 2]);
    assert_eq!(
        (s.n, s.p50, s.max, s.mean),
        (3, Some(2), Some(3), Some(2.0))
    );
}
