//! [`ToolCallRecord`]: what one tool call did, for replies, logs and run records.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// One tool call of a run: what was asked, how long it took, how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The model's call id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them.
    pub arguments: String,
    /// Whether the tool returned a result (rather than an error).
    pub ok: bool,
    /// Wall time of the call.
    #[serde(
        rename = "duration_ms",
        serialize_with = "as_millis",
        deserialize_with = "from_millis"
    )]
    pub duration: Duration,
    /// The error sent back to the model, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ToolCallRecord {
    /// What a failed call sends back to the model and records: `error ({code}): {message}`.
    pub(crate) fn error_text(error: &Error) -> String {
        format!("error ({}): {}", error.code(), error.message())
    }
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn from_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = f64::deserialize(d)?;
    Ok(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
}
