//! [`Fallback`]: a chain of models tried in order.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{Model, ModelRequest, ModelResponse, ModelStream};
use crate::{Context, Error, ErrorKind, Result};

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// Tries each model in turn until one answers.
///
/// By default the next model is tried after any error except invalid input (the request itself
/// is wrong) and cancellation; [`fall_back_if`](Fallback::fall_back_if) changes that. The
/// response names the model that answered, so cost is priced by the right table entry.
///
/// ```
/// use agentkit_core::model::{Fallback, Model, ScriptedModel};
///
/// let primary = ScriptedModel::builder().id("primary").demo_rules().build();
/// let backup = ScriptedModel::builder().id("backup").demo_rules().build();
/// let chain = Fallback::new(primary).or(backup);
/// assert_eq!(chain.id(), "primary");
/// ```
#[derive(Clone)]
pub struct Fallback {
    models: Vec<Arc<dyn Model>>,
    predicate: Predicate,
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.models.iter().map(|m| m.id()).collect();
        f.debug_struct("Fallback").field("models", &ids).finish()
    }
}

impl Fallback {
    /// A chain starting with `first`.
    pub fn new(first: impl Model + 'static) -> Self {
        Self {
            models: vec![Arc::new(first)],
            predicate: Arc::new(default_predicate),
        }
    }

    /// Appends a model to try after the previous ones failed.
    #[must_use]
    pub fn or(mut self, next: impl Model + 'static) -> Self {
        self.models.push(Arc::new(next));
        self
    }

    /// Appends a shared model.
    #[must_use]
    pub fn or_shared(mut self, next: Arc<dyn Model>) -> Self {
        self.models.push(next);
        self
    }

    /// Decides which errors move on to the next model.
    #[must_use]
    pub fn fall_back_if(
        mut self,
        predicate: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicate = Arc::new(predicate);
        self
    }

    fn give_up(&self, index: usize, error: &Error, cx: &Context) -> bool {
        let last = index + 1 == self.models.len();
        let out_of_time = cx.remaining().is_some_and(|r| r.is_zero());
        if last || out_of_time || cx.is_cancelled() || !(self.predicate)(error) {
            return true;
        }
        tracing::warn!(
            from = self.models[index].id(),
            to = self.models[index + 1].id(),
            error.code = error.code(),
            error.message = error.message(),
            "model failed; falling back"
        );
        false
    }
}

fn default_predicate(error: &Error) -> bool {
    !matches!(error.kind(), ErrorKind::InvalidInput | ErrorKind::Cancelled)
}

#[async_trait]
impl Model for Fallback {
    fn id(&self) -> &str {
        self.models[0].id()
    }

    fn provider(&self) -> &str {
        self.models[0].provider()
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        for (index, model) in self.models.iter().enumerate() {
            match model.complete(request, cx).await {
                Ok(mut response) => {
                    if response.model.is_none() && index > 0 {
                        response.model = Some(model.id().to_owned());
                    }
                    return Ok(response);
                }
                Err(error) if self.give_up(index, &error, cx) => return Err(error),
                Err(_) => {}
            }
        }
        Err(Error::internal("fallback chain is empty"))
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        for (index, model) in self.models.iter().enumerate() {
            match model.stream(request, cx).await {
                Ok(stream) => return Ok(stream),
                Err(error) if self.give_up(index, &error, cx) => return Err(error),
                Err(_) => {}
            }
        }
        Err(Error::internal("fallback chain is empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use crate::model::{ScriptedModel, ScriptedTurn};

    struct Down;

    #[async_trait]
    impl Model for Down {
        fn id(&self) -> &str {
            "down"
        }

        async fn complete(&self, _: &ModelRequest<'_>, _: &Context) -> Result<ModelResponse> {
            Err(Error::unavailable("provider down"))
        }
    }

    #[tokio::test]
    async fn falls_through_to_the_model_that_answers() {
        let backup = ScriptedModel::builder()
            .id("backup")
            .turns([ScriptedTurn::text("from backup")])
            .build();
        let chain = Fallback::new(Down).or(backup);
        let messages = [Message::user("hi")];
        let r = chain
            .complete(&ModelRequest::new(&messages), &Context::new())
            .await
            .unwrap();
        assert_eq!(r.message.text_content(), "from backup");
        assert_eq!(r.model.as_deref(), Some("backup"));
    }

    #[tokio::test]
    async fn last_error_is_returned_when_all_fail() {
        let chain = Fallback::new(Down).or(Down);
        let messages = [Message::user("hi")];
        let r = chain
            .complete(&ModelRequest::new(&messages), &Context::new())
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Unavailable);
    }
}
