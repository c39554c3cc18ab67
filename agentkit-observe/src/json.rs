//! [`JsonLines`]: the JSON log format, written straight into the line buffer.
//!
//! tracing-subscriber's own JSON format builds each line through serde maps and costs about
//! as much as a whole scripted agent turn; this one writes the same shape (`timestamp`,
//! `level`, `target`, the event's fields flattened, `message`) field by field: numbers with
//! `itoa` and `ryu` rather than `fmt`, field names (identifiers) without an escaping pass, and
//! the date and time of day formatted once per second per thread.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per event and line: `{"timestamp":"2026-11-27T10:37:21.123456Z",
/// "level":"INFO","target":"agentkit::run","message":"...", ...fields}`.
///
/// [`init`](crate::init) installs it for `AGENTKIT_LOG_FORMAT=json`; to use it in a subscriber
/// of your own:
///
/// ```
/// let subscriber = tracing_subscriber::fmt()
///     .event_format(agentkit_observe::JsonLines)
///     .finish();
/// # let _ = subscriber;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        timestamp(&mut line, SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"target\":");
        string(&mut line, meta.target());
        let plain = plain_names(meta);
        event.record(&mut Fields {
            line: &mut line,
            plain,
        });
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

thread_local! {
    /// The callsite whose field names were last checked on this thread, and whether they are
    /// all identifiers: lines from one callsite (a run's log line) need the check once.
    static PLAIN: Cell<(usize, bool)> = const { Cell::new((0, false)) };
}

/// Whether every field name of `meta`'s callsite can be written without escaping.
fn plain_names(meta: &'static tracing::Metadata<'static>) -> bool {
    let callsite = std::ptr::from_ref(meta) as usize;
    PLAIN.with(|plain| {
        let (last, known) = plain.get();
        if last == callsite {
            return known;
        }
        let known = meta.fields().iter().all(|f| identifier(f.name()));
        plain.set((callsite, known));
        known
    })
}

/// Whether a field name is an identifier (letters, digits, `_`, `.`): nothing to escape.
fn identifier(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Appends each field as `,"name":value`.
struct Fields<'a> {
    line: &'a mut String,
    /// All the callsite's names are identifiers (see [`plain_names`]).
    plain: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        let name = field.name();
        if self.plain || identifier(name) {
            // An identifier, as nearly every field name is: nothing to escape.
            self.line.push_str(",\"");
            self.line.push_str(name);
            self.line.push_str("\":");
        } else {
            self.line.push(',');
            string(self.line, name);
            self.line.push(':');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.line.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.line.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.line.push('"');
        let _ = write!(Escaped(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Appends `text` as a JSON string.
fn string(line: &mut String, text: &str) {
    line.push('"');
    let _ = Escaped(line).write_str(text);
    line.push('"');
}

/// The bytes a JSON string escapes: controls, `"` and `\\`.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Writes into a JSON string's body, escaping as it goes.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if !text.bytes().any(|b| ESCAPED[usize::from(b)]) {
            self.0.push_str(text);
            return Ok(());
        }
        let mut plain = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{byte:04x}");
            } else {
                self.0.push_str(escape);
            }
            plain = i + 1;
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

thread_local! {
    /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends `at` as RFC 3339 UTC with microseconds.
fn timestamp(line: &mut String, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            let (year, month, day) = civil_from_days((secs / 86_400) as i64);
            let of_day = secs % 86_400;
            text.clear();
            let _ = write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60,
            );
            *second = secs;
        }
        line.push_str(text);
    });
    let micros = since.subsec_micros();
    let mut digits = *b".000000Z";
    let mut rest = micros;
    for digit in digits[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.push_str(std::str::from_utf8(&digits).unwrap_or(".000000Z"));
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_and_times_are_rfc3339_utc() {
        let mut line = String::new();
        timestamp(&mut line, UNIX_EPOCH);
        assert_eq!(line, "1970-01-01T00:00:00.000000Z");
        line.clear();
        // 2024-02-29T23:59:58.5Z, a leap day.
        timestamp(
            &mut line,
            UNIX_EPOCH + Duration::from_millis(1_709_251_198_500),
        );
        assert_eq!(line, "2024-02-29T23:59:58.500000Z");
        line.clear();
        timestamp(&mut line, UNIX_EPOCH + Duration::from_secs(4_102_444_800));
        assert_eq!(line, "2100-01-01T00:00:00.000000Z");
        // The same second again (from the per-thread cache), then the next one.
        line.clear();
        timestamp(
            &mut line,
            UNIX_EPOCH + Duration::from_micros(4_102_444_800_012_345),
        );
        assert_eq!(line, "2100-01-01T00:00:00.012345Z");
        line.clear();
        timestamp(
            &mut line,
            UNIX_EPOCH + Duration::from_micros(4_102_444_801_999_999),
        );
        assert_eq!(line, "2100-01-01T00:00:01.999999Z");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_kind_of_field_makes_valid_json() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // A callsite whose names are all identifiers first: the check of names is kept
            // per callsite, and the next one's must still be escaped.
            tracing::info!(target: "agentkit::test", plain = 1u64);
            let absent: Option<&str> = None;
            tracing::warn!(
                target: "agentkit::test",
                text = "quote \" backslash \\ newline \n tab \t bell \u{7} é",
                count = 3u64,
                delta = -2i64,
                ratio = 0.25,
                huge = u64::MAX,
                tiny = 1.5e-7,
                "odd \"name\"" = 1u64,
                nan = f64::NAN,
                ok = true,
                shown = %"display",
                debugged = ?vec!["a"],
                absent,
                "done: {}", 42
            );
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["plain"], 1);
        let line: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "agentkit::test");
        assert_eq!(
            line["text"],
            "quote \" backslash \\ newline \n tab \t bell \u{7} é"
        );
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.25);
        assert_eq!(line["huge"], u64::MAX);
        assert_eq!(line["tiny"], 1.5e-7);
        assert_eq!(line["odd \"name\""], 1);
        assert!(line["nan"].is_null());
        assert_eq!(line["ok"], true);
        assert_eq!(line["shown"], "display");
        assert_eq!(line["debugged"], "[\"a\"]");
        assert!(line.get("absent").is_none());
        assert_eq!(line["message"], "done: 42");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
