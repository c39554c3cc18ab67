//! Exponential backoff with full jitter, shared by every retry layer.

use std::time::Duration;

use tokio::time::Instant;

use crate::{Context, Error, Result};

/// When and how long to wait before trying again.
///
/// The wait before retry *n* is a uniformly random duration in `[0, min(max_delay, base·2ⁿ⁻¹)]`
/// ("full jitter"), unless the error carries a `Retry-After`, which is honoured as given. A retry
/// whose wait would end past the deadline is not attempted: the error is returned at once
/// instead of sleeping into a timeout.
///
/// ```
/// use std::time::Duration;
/// use agentkit_core::{Backoff, Error};
///
/// let backoff = Backoff::new().max_attempts(3).base(Duration::from_millis(100));
/// let busy = Error::unavailable("provider overloaded");
/// assert!(backoff.next_delay(1, &busy, None).unwrap() <= Duration::from_millis(100));
/// assert!(backoff.next_delay(3, &busy, None).is_none()); // attempts used up
/// assert!(backoff.next_delay(1, &Error::invalid_input("bad"), None).is_none()); // not retryable
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    max_attempts: u32,
    base: Duration,
    max_delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Three attempts in all, 200 ms base, 10 s cap.
    pub const fn new() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }

    /// Attempts in all, the first included (at least one).
    #[must_use]
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// The cap of the first wait; each later cap doubles.
    #[must_use]
    pub const fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest wait between two attempts (a `Retry-After` may still ask for more).
    #[must_use]
    pub const fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// The configured number of attempts.
    pub const fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long to wait after failed attempt number `attempt` (1-based) before the next, or
    /// `None` when the error is final: not retryable, attempts used up, or the wait would end
    /// past `deadline`.
    pub fn next_delay(
        &self,
        attempt: u32,
        error: &Error,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        if !error.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        let delay = match error.retry_after() {
            Some(after) => after,
            None => {
                let exp = attempt.saturating_sub(1).min(30);
                let cap = self.base.saturating_mul(1 << exp).min(self.max_delay);
                cap.mul_f64(fastrand::f64())
            }
        };
        match deadline {
            Some(deadline) if Instant::now() + delay >= deadline => None,
            _ => Some(delay),
        }
    }
}

/// Waits `delay` unless `cx` is cancelled first.
pub(crate) async fn pause(delay: Duration, cx: &Context) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cx.cancellation().cancelled() => Err(Error::cancelled()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn jitter_stays_under_the_doubling_cap() {
        let backoff = Backoff::new()
            .max_attempts(10)
            .base(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        let error = Error::unavailable("down");
        for _ in 0..200 {
            assert!(backoff.next_delay(1, &error, None).unwrap() <= Duration::from_millis(10));
            assert!(backoff.next_delay(2, &error, None).unwrap() <= Duration::from_millis(20));
            assert!(backoff.next_delay(9, &error, None).unwrap() <= Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured_but_never_past_the_deadline() {
        let backoff = Backoff::new();
        let limited = Error::new(ErrorKind::RateLimited, "slow down")
            .with_retry_after(Duration::from_secs(2));
        assert_eq!(
            backoff.next_delay(1, &limited, None),
            Some(Duration::from_secs(2))
        );
        let soon = Instant::now() + Duration::from_secs(1);
        assert_eq!(backoff.next_delay(1, &limited, Some(soon)), None);
    }
}
