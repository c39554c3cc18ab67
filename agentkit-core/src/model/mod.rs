//! The [`Model`] contract and the layers every model can wear.
//!
//! A model takes one [`ModelRequest`] and answers with a [`ModelResponse`], or streams
//! [`ModelEvent`]s that a [`ResponseBuilder`] folds back into the same response. Providers live
//! in submodules; retry and fallback are wrappers ([`RetryModel`], [`Fallback`]), not code
//! inside each provider.

mod accumulate;
mod embed;
mod fallback;
#[cfg(feature = "openai")]
pub mod openai;
mod retry;
mod scripted;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::message::{Message, StopReason, Usage};
use crate::tool::ToolSpec;
use crate::{Context, Result};

pub use accumulate::ResponseBuilder;
pub use embed::Embedder;
pub use fallback::Fallback;
pub use retry::RetryModel;
pub use scripted::{ScriptedCall, ScriptedModel, ScriptedModelBuilder, ScriptedTurn};

/// A stream of [`ModelEvent`]s; the last item is a [`ModelEvent::Finish`] or an error.
pub type ModelStream = BoxStream<'static, Result<ModelEvent>>;

/// Whether and how the model may call tools.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must not call tools.
    None,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

/// A JSON Schema the final answer must follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// A short name for the schema (providers require one).
    pub name: String,
    /// The JSON Schema.
    pub schema: Arc<serde_json::Value>,
}

/// One request to a model, borrowing the conversation so a step costs no copy of the history.
#[derive(Clone, Debug)]
pub struct ModelRequest<'a> {
    /// System instructions, sent before the messages.
    pub system: Option<&'a str>,
    /// The conversation so far.
    pub messages: &'a [Message],
    /// The tools the model may call.
    pub tools: &'a [ToolSpec],
    /// Whether and how tools may be called.
    pub tool_choice: ToolChoice,
    /// A schema the final answer must follow.
    pub response_format: Option<&'a ResponseFormat>,
    /// Upper bound on output tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

impl<'a> ModelRequest<'a> {
    /// A request for `messages` with no tools and default options.
    pub fn new(messages: &'a [Message]) -> Self {
        Self {
            system: None,
            messages,
            tools: &[],
            tool_choice: ToolChoice::Auto,
            response_format: None,
            max_tokens: None,
            temperature: None,
        }
    }

    /// The last message, if any.
    pub fn last_message(&self) -> Option<&'a Message> {
        self.messages.last()
    }
}

/// A model's complete answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelResponse {
    /// The assistant message: text and/or tool calls.
    pub message: Message,
    /// Tokens spent.
    pub usage: Usage,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// The model that answered, as the provider named it, when it said.
    pub model: Option<String>,
}

/// One increment of a streamed answer.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum ModelEvent {
    /// A piece of the answer's text.
    TextDelta(String),
    /// A piece of a tool call; `index` groups the pieces of one call.
    ToolCallDelta {
        /// Position of the call in the answer.
        index: usize,
        /// The call id, in the first piece.
        id: Option<String>,
        /// The tool name, in the first piece.
        name: Option<String>,
        /// The next bytes of the JSON arguments.
        arguments: String,
    },
    /// Tokens spent (usually once, near the end).
    Usage(Usage),
    /// The end of the answer.
    Finish {
        /// Why generation stopped.
        stop_reason: StopReason,
        /// The model that answered, when the provider said.
        model: Option<String>,
    },
}

/// A language model: one request in, one response out, or a stream of increments.
///
/// Implement [`complete`](Model::complete); [`stream`](Model::stream) has a default that
/// replays the complete answer as one burst of events. Models are shared (`Arc<dyn Model>`), so
/// per-call options travel in the [`ModelRequest`], never in the model.
///
/// ```
/// use agentkit_core::model::{Model, ModelRequest, ModelResponse};
/// use agentkit_core::{Context, Message, Result, StopReason, Usage};
///
/// /// A model that always shouts the last message back.
/// struct Shout;
///
/// #[async_trait::async_trait]
/// impl Model for Shout {
///     fn id(&self) -> &str {
///         "shout-1"
///     }
///
///     async fn complete(&self, request: &ModelRequest<'_>, _cx: &Context) -> Result<ModelResponse> {
///         let last = request.last_message().map(|m| m.text_content()).unwrap_or_default();
///         Ok(ModelResponse {
///             message: Message::assistant(last.to_uppercase()),
///             usage: Usage::default(),
///             stop_reason: StopReason::EndTurn,
///             model: None,
///         })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let messages = [Message::user("hello")];
/// let response = Shout.complete(&ModelRequest::new(&messages), &Context::new()).await?;
/// assert_eq!(response.message.text_content(), "HELLO");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Model: Send + Sync {
    /// The model id sent to the provider and used for pricing (`"gpt-4o-mini"`).
    fn id(&self) -> &str;

    /// The provider, as the GenAI conventions name it (`"openai"`, `"anthropic"`, ...).
    fn provider(&self) -> &str {
        "unknown"
    }

    /// Answers `request` in one piece.
    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse>;

    /// Answers `request` as a stream of increments.
    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        let response = self.complete(request, cx).await?;
        Ok(Box::pin(futures::stream::iter(
            ResponseBuilder::events_of(response).into_iter().map(Ok),
        )))
    }
}

const _: Option<&dyn Model> = None;

#[async_trait]
impl<M: Model + ?Sized> Model for Arc<M> {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn provider(&self) -> &str {
        (**self).provider()
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        (**self).complete(request, cx).await
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        (**self).stream(request, cx).await
    }
}

#[async_trait]
impl<M: Model + ?Sized> Model for Box<M> {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn provider(&self) -> &str {
        (**self).provider()
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        (**self).complete(request, cx).await
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        (**self).stream(request, cx).await
    }
}
