//! The names of span attributes, in one table, so a newer version of the OpenTelemetry GenAI
//! semantic conventions can be switched on with `OTEL_SEMCONV_STABILITY_OPT_IN`.

/// Attribute names of one version of the conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    /// `gen_ai.operation.name`.
    pub operation_name: &'static str,
    /// The provider: `gen_ai.provider.name` (before v1.37: `gen_ai.system`).
    pub provider_name: &'static str,
    /// `gen_ai.request.model`.
    pub request_model: &'static str,
    /// `gen_ai.response.model`.
    pub response_model: &'static str,
    /// `gen_ai.response.finish_reasons`.
    pub finish_reasons: &'static str,
    /// `gen_ai.usage.input_tokens` (before v1.27: `gen_ai.usage.prompt_tokens`).
    pub input_tokens: &'static str,
    /// `gen_ai.usage.output_tokens` (before v1.27: `gen_ai.usage.completion_tokens`).
    pub output_tokens: &'static str,
    /// `gen_ai.agent.name`.
    pub agent_name: &'static str,
    /// `gen_ai.conversation.id`.
    pub conversation_id: &'static str,
    /// `gen_ai.tool.name`.
    pub tool_name: &'static str,
    /// `gen_ai.tool.call.id`.
    pub tool_call_id: &'static str,
    /// `error.type`.
    pub error_type: &'static str,
    /// Prompt messages (content capture only).
    pub input_messages: &'static str,
    /// Completion messages (content capture only).
    pub output_messages: &'static str,
}

/// The conventions as of v1.37 (the default).
pub const LATEST: Names = Names {
    operation_name: "gen_ai.operation.name",
    provider_name: "gen_ai.provider.name",
    request_model: "gen_ai.request.model",
    response_model: "gen_ai.response.model",
    finish_reasons: "gen_ai.response.finish_reasons",
    input_tokens: "gen_ai.usage.input_tokens",
    output_tokens: "gen_ai.usage.output_tokens",
    agent_name: "gen_ai.agent.name",
    conversation_id: "gen_ai.conversation.id",
    tool_name: "gen_ai.tool.name",
    tool_call_id: "gen_ai.tool.call.id",
    error_type: "error.type",
    input_messages: "gen_ai.input.messages",
    output_messages: "gen_ai.output.messages",
};

/// The names before v1.37, for backends that still expect them.
pub const LEGACY: Names = Names {
    operation_name: "gen_ai.operation.name",
    provider_name: "gen_ai.system",
    request_model: "gen_ai.request.model",
    response_model: "gen_ai.response.model",
    finish_reasons: "gen_ai.response.finish_reasons",
    input_tokens: "gen_ai.usage.prompt_tokens",
    output_tokens: "gen_ai.usage.completion_tokens",
    agent_name: "gen_ai.agent.name",
    conversation_id: "gen_ai.conversation.id",
    tool_name: "gen_ai.tool.name",
    tool_call_id: "gen_ai.tool.call.id",
    error_type: "error.type",
    input_messages: "gen_ai.prompt",
    output_messages: "gen_ai.completion",
};

/// Which tables to emit, from `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list):
/// `gen_ai_latest_experimental` or nothing → [`LATEST`]; `gen_ai/dup` → both [`LATEST`] and
/// [`LEGACY`] (for migrating dashboards); `gen_ai_legacy` → [`LEGACY`] only.
pub fn from_opt_in(value: Option<&str>) -> &'static [Names] {
    let options: Vec<&str> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    if options.contains(&"gen_ai/dup") {
        &[LATEST, LEGACY]
    } else if options.contains(&"gen_ai_legacy") {
        &[LEGACY]
    } else {
        &[LATEST]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_in_selects_tables() {
        assert_eq!(from_opt_in(None), &[LATEST]);
        assert_eq!(
            from_opt_in(Some("http, gen_ai_latest_experimental")),
            &[LATEST]
        );
        assert_eq!(from_opt_in(Some("gen_ai/dup")).len(), 2);
        assert_eq!(
            from_opt_in(Some("gen_ai_legacy"))[0].provider_name,
            "gen_ai.system"
        );
    }
}
