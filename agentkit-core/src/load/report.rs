//! What a load run did, and the bounds it is checked against.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles of the invocations that ended, in milliseconds (within 1.6%).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest, exact.
    pub max_ms: f64,
    /// The mean, exact.
    pub mean_ms: f64,
}

/// What a load run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// From the first start to the last answer (`elapsed_s` in JSON, in seconds).
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Open loop: starts the schedule had; closed loop: invocations started.
    pub scheduled: u64,
    /// Invocations that answered.
    pub succeeded: u64,
    /// Invocations that failed (by code in `errors`).
    pub failed: u64,
    /// Open loop: starts skipped because `max_in_flight` invocations were running.
    pub missed: u64,
    /// Failures by error code (`timeout`, `rate_limited`, `unavailable`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Answers a second over the run (`throughput_per_s` in JSON).
    #[serde(rename = "throughput_per_s")]
    pub throughput: f64,
    /// Of every invocation that ended, answered or failed.
    pub latency: Latency,
    /// Streaming runs: from each start (as due) to the first piece of the answer's text, of
    /// the invocations that sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token: Option<Latency>,
    /// Tokens the answers spent.
    pub tokens: u64,
    /// What the answers cost, in US dollars.
    pub cost_usd: f64,
}

fn seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// Bounds a load run must stay within, for a staging gate.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct LoadLimits {
    max_error_rate: Option<f64>,
    max_p99: Option<Duration>,
    max_missed_rate: Option<f64>,
}

impl LoadLimits {
    /// No bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this share of the invocations that ended may fail (0.01: one in a hundred).
    pub fn max_error_rate(mut self, share: f64) -> Self {
        self.max_error_rate = Some(share);
        self
    }

    /// The 99th percentile latency at most this.
    pub fn max_p99(mut self, latency: Duration) -> Self {
        self.max_p99 = Some(latency);
        self
    }

    /// Open loop: at most this share of the scheduled starts may be missed.
    pub fn max_missed_rate(mut self, share: f64) -> Self {
        self.max_missed_rate = Some(share);
        self
    }
}

impl LoadReport {
    /// The share of the invocations that ended that failed (0 when none ended).
    pub fn error_rate(&self) -> f64 {
        ratio(self.failed, self.succeeded + self.failed)
    }

    /// The share of the scheduled starts that were missed.
    pub fn missed_rate(&self) -> f64 {
        ratio(self.missed, self.scheduled)
    }

    /// What breaks `limits`, one line each; empty when the run stayed within them. A run in
    /// which nothing ended breaks every limit that is set.
    pub fn check(&self, limits: &LoadLimits) -> Vec<String> {
        let mut broken = Vec::new();
        let ended = self.succeeded + self.failed;
        if let Some(max) = limits.max_error_rate
            && (ended == 0 || self.error_rate() > max)
        {
            broken.push(format!(
                "error rate {:.4} above {max} ({} of {ended} failed: {:?})",
                self.error_rate(),
                self.failed,
                self.errors
            ));
        }
        if let Some(max) = limits.max_p99 {
            let max_ms = max.as_secs_f64() * 1000.0;
            if ended == 0 || self.latency.p99_ms > max_ms {
                broken.push(format!(
                    "p99 latency {:.1} ms above {max_ms:.1} ms",
                    self.latency.p99_ms
                ));
            }
        }
        if let Some(max) = limits.max_missed_rate
            && (self.scheduled == 0 || self.missed_rate() > max)
        {
            broken.push(format!(
                "{} of {} scheduled starts missed ({:.4}, above {max}): the service did not keep up",
                self.missed,
                self.scheduled,
                self.missed_rate()
            ));
        }
        broken
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_what_broke() {
        let report = LoadReport {
            scheduled: 100,
            succeeded: 90,
            failed: 8,
            missed: 2,
            errors: BTreeMap::from([("timeout".to_owned(), 8)]),
            latency: Latency {
                p99_ms: 250.0,
                ..Latency::default()
            },
            ..LoadReport::default()
        };
        assert!(report.check(&LoadLimits::new()).is_empty());
        let loose = LoadLimits::new()
            .max_error_rate(0.1)
            .max_p99(Duration::from_millis(300))
            .max_missed_rate(0.05);
        assert!(
            report.check(&loose).is_empty(),
            "{:?}",
            report.check(&loose)
        );
        let tight = LoadLimits::new()
            .max_error_rate(0.05)
            .max_p99(Duration::from_millis(200))
            .max_missed_rate(0.01);
        let broken = report.check(&tight);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].contains("8 of 98 failed") && broken[0].contains("timeout"));
        assert!(broken[1].starts_with("p99 latency 250.0 ms above 200.0 ms"));
        assert!(broken[2].starts_with("2 of 100 scheduled starts missed"));
        let nothing = LoadReport::default();
        assert_eq!(
            nothing.check(&loose).len(),
            3,
            "a run where nothing ended passes nothing"
        );
    }
}
