//! Latencies in fixed memory.

use std::time::Duration;

use super::Latency;

/// Sub-buckets per power of two: a value is placed within 1/64 (1.6%) of itself.
const SUB_BUCKETS: u64 = 64;
/// Powers of two of microseconds covered: up to about 2^40 µs, 12 days.
const OCTAVES: u64 = 41;

/// Latencies in fixed memory (log-linear buckets of microseconds, as HdrHistogram keeps
/// them), so a long run does not keep every sample.
pub(super) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: f64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; (SUB_BUCKETS * OCTAVES) as usize],
            total: 0,
            sum_us: 0.0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < SUB_BUCKETS {
            return us as usize;
        }
        // The octave above the first, and the top six bits below the leading one.
        let octave = u64::from(63 - us.leading_zeros()) - 5;
        let sub = (us >> (octave - 1)) - SUB_BUCKETS;
        ((octave * SUB_BUCKETS + sub) as usize).min((SUB_BUCKETS * OCTAVES) as usize - 1)
    }

    /// The middle of a bucket, in microseconds.
    fn value(bucket: usize) -> f64 {
        let bucket = bucket as u64;
        if bucket < SUB_BUCKETS {
            return bucket as f64;
        }
        let (octave, sub) = (bucket / SUB_BUCKETS, bucket % SUB_BUCKETS);
        let width = 1u64 << (octave - 1);
        ((SUB_BUCKETS + sub) * width) as f64 + (width as f64 - 1.0) / 2.0
    }

    pub(super) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.sum_us += us as f64;
        self.max_us = self.max_us.max(us);
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::value(bucket).min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    pub(super) fn summary(&self) -> Latency {
        let ms = |us: f64| us / 1000.0;
        Latency {
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max_us as f64),
            mean_ms: if self.total == 0 {
                0.0
            } else {
                ms(self.sum_us / self.total as f64)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_two_percent_and_the_max_exact() {
        let mut histogram = Histogram::default();
        for ms in 1..=1000u64 {
            histogram.record(Duration::from_millis(ms));
        }
        let latency = histogram.summary();
        for (got, want) in [
            (latency.p50_ms, 500.0),
            (latency.p90_ms, 900.0),
            (latency.p99_ms, 990.0),
        ] {
            assert!((got - want).abs() / want < 0.02, "{got} against {want}");
        }
        assert_eq!(latency.max_ms, 1000.0);
        assert!((latency.mean_ms - 500.5).abs() < 1e-9);
    }

    #[test]
    fn every_bucket_holds_the_values_placed_in_it() {
        for us in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let bucket = Histogram::bucket(us);
            let middle = Histogram::value(bucket);
            if us < 1 << 40 {
                assert!(
                    (middle - us as f64).abs() <= (us as f64 / 64.0).max(0.5),
                    "{us} µs placed at {middle}"
                );
            }
            if us > 0 {
                assert!(
                    bucket >= Histogram::bucket(us - 1),
                    "buckets rise with values"
                );
            }
        }
    }
}
