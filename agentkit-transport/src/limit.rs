//! Per-tenant rate limits (token buckets, via governor).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{Error, ErrorKind, Result};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Requests per second per tenant, with a burst allowance. Buckets of tenants that went quiet
/// are dropped once there are many, so memory stays bounded.
#[derive(Clone)]
pub struct RateLimits {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
    burst: u32,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

/// Beyond this many tracked tenants, idle buckets are pruned.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimits {
    /// `per_second` sustained requests per tenant, up to `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Result<Self> {
        let rate = NonZeroU32::new(per_second)
            .ok_or_else(|| Error::invalid_input("a rate limit must be at least 1/s"))?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
        Ok(Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            per_second: rate.get(),
            burst: burst.get(),
        })
    }

    /// Parses `AGENTKIT_RATE_LIMIT`: `N` (per second, burst N) or `N/B` (burst B).
    pub fn from_spec(spec: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_input(format!(
                "invalid rate limit {spec:?}; expected N or N/BURST"
            ))
        };
        let (rate, burst) = match spec.trim().split_once('/') {
            Some((r, b)) => (
                r.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let r: u32 = spec.trim().parse().map_err(|_| bad())?;
                (r, r)
            }
        };
        Self::new(rate, burst)
    }

    /// Takes one request from `tenant`'s bucket, or says how long to wait.
    pub fn check(&self, tenant: &str) -> Result<()> {
        if self.limiter.len() > PRUNE_ABOVE {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&tenant.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "tenant {tenant} exceeded {} requests per second",
                        self.per_second
                    ),
                )
                .with_retry_after(wait.max(Duration::from_millis(1)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_tenant() {
        let limits = RateLimits::from_spec("1/2").unwrap();
        assert!(limits.check("a").is_ok());
        assert!(limits.check("a").is_ok());
        let error = limits.check("a").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::RateLimited);
        assert!(error.retry_after().unwrap() <= Duration::from_secs(1));
        assert!(
            limits.check("b").is_ok(),
            "another tenant has its own bucket"
        );
        assert!(RateLimits::from_spec("x").is_err());
        assert!(RateLimits::from_spec("0").is_err());
    }
}
