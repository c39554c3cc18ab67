//! [`OpenAiEmbedder`]: `POST /embeddings` of an OpenAI-compatible server.

use async_trait::async_trait;
use serde::Deserialize;

use super::{MAX_BODY_BYTES, OpenAiModel, transport_error};
use crate::model::Embedder;
use crate::{Context, Error, Result};

/// Vectors from the `POST /embeddings` endpoint of the server an [`OpenAiModel`] talks to,
/// with its key, timeouts and error mapping (made by [`OpenAiModel::embedder`]).
#[derive(Clone, Debug)]
pub struct OpenAiEmbedder {
    client: OpenAiModel,
    url: String,
    model: String,
    dimensions: usize,
    ask_dimensions: bool,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiModel {
    /// An embedder using `model` (`text-embedding-3-small` gives 1536 dimensions) on this
    /// client's server; vectors of any other length are an error.
    pub fn embedder(&self, model: impl Into<String>, dimensions: usize) -> OpenAiEmbedder {
        OpenAiEmbedder {
            url: format!("{}/embeddings", self.inner.base_url),
            client: self.clone(),
            model: model.into(),
            dimensions,
            ask_dimensions: false,
        }
    }
}

impl OpenAiEmbedder {
    /// Sends `dimensions` in each request, for models that shorten their vectors on request
    /// (OpenAI's `text-embedding-3-*`); servers that do not know the field may refuse it.
    #[must_use]
    pub fn request_dimensions(mut self) -> Self {
        self.ask_dimensions = true;
        self
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String], cx: &Context) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut body = serde_json::json!({"model": self.model, "input": texts});
        if self.ask_dimensions {
            body["dimensions"] = self.dimensions.into();
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let response = self.client.send_to(&self.url, body, cx, false).await?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(Error::unavailable("the embedding response is too large"));
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        let mut parsed: EmbeddingResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Error::unavailable(format!(
                "malformed response from the embedding provider: {e}"
            ))
        })?;
        parsed.data.sort_by_key(|item| item.index);
        let in_order = parsed
            .data
            .iter()
            .enumerate()
            .all(|(i, item)| item.index == i);
        if parsed.data.len() != texts.len() || !in_order {
            return Err(Error::unavailable(format!(
                "the embedding provider answered {} vectors for {} texts",
                parsed.data.len(),
                texts.len()
            )));
        }
        if let Some(item) = parsed
            .data
            .iter()
            .find(|item| item.embedding.len() != self.dimensions)
        {
            return Err(Error::unavailable(format!(
                "the embedding provider returned vectors of {} dimensions, not {}",
                item.embedding.len(),
                self.dimensions
            )));
        }
        Ok(parsed.data.into_iter().map(|item| item.embedding).collect())
    }
}
