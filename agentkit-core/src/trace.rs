//! W3C Trace Context (`traceparent`, `tracestate`) without an OpenTelemetry dependency.
//!
//! The edge extracts a [`TraceContext`] from an inbound request or queue message and puts it in
//! the [`Context`](crate::Context); everything that calls out (model providers, remote
//! executors, enqueued jobs) injects the current one. The observe crate turns it into
//! OpenTelemetry spans.

use std::fmt;
use std::sync::Arc;

/// A parsed W3C `traceparent` (version 00) plus the opaque `tracestate`.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    tracestate: Option<Arc<str>>,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` when it is not a valid version-00 value.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let value = traceparent.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !is_lower_hex(trace_id) || !is_lower_hex(span_id) || !is_lower_hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let span_id = u64::from_str_radix(span_id, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
            tracestate: None,
        })
    }

    /// Builds a context from its parts; `None` when either id is zero.
    pub fn from_parts(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags: u8::from(sampled),
            tracestate: None,
        })
    }

    /// A new, sampled root context with random ids.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_id(),
            span_id: fastrand::u64(1..),
            flags: 1,
            tracestate: None,
        }
    }

    /// The same trace with a new random span id (for an outbound call made here).
    #[must_use]
    pub fn new_child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..self.clone()
        }
    }

    /// Attaches the `tracestate` header value (kept opaque).
    #[must_use]
    pub fn with_tracestate(mut self, tracestate: impl Into<Arc<str>>) -> Self {
        let state: Arc<str> = tracestate.into();
        self.tracestate = (!state.trim().is_empty()).then_some(state);
        self
    }

    /// The 128-bit trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The 64-bit id of the parent span.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id.to_be_bytes());
        out
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, &self.span_id.to_be_bytes());
        out
    }

    /// Whether the caller sampled this trace.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `tracestate` value, when one came with the request.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id.to_be_bytes());
        out.push('-');
        push_hex(&mut out, &self.span_id.to_be_bytes());
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }
}

/// Appends `bytes` as lowercase hex (without `format!`: these run once per request and span).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// A random non-zero 128-bit id. Drawn as two halves: a `u128` range draw divides in
/// software (about 190 instructions more an id; a job makes two or three ids).
pub(crate) fn random_id() -> u128 {
    (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(1..))
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_covers_every_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = String::from("x");
        push_hex(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, format!("x{expected}"));
        let mut empty = String::new();
        push_hex(&mut empty, &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let ids: std::collections::HashSet<u128> = (0..1000).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
        assert!(
            ids.iter().any(|id| id >> 64 != 0),
            "the high half is drawn too"
        );
    }

    #[test]
    fn parses_and_prints_the_spec_example() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = TraceContext::parse(header).unwrap();
        assert_eq!(tc.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.span_id_hex(), "00f067aa0ba902b7");
        assert!(tc.is_sampled());
        assert_eq!(tc.traceparent(), header);
        let child = tc.new_child();
        assert_eq!(child.trace_id(), tc.trace_id());
        assert_ne!(child.span_id(), tc.span_id());
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
