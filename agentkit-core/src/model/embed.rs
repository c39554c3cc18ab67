//! [`Embedder`]: text in, vectors out.

use async_trait::async_trait;

use crate::{Context, Result};

/// Turns texts into vectors of one dimension (for vector memory and retrieval).
///
/// ```
/// use agentkit_core::model::Embedder;
///
/// /// Vectors of text length and vowel count (an illustration, not a useful embedder).
/// struct Shape;
///
/// #[async_trait::async_trait]
/// impl Embedder for Shape {
///     fn dimensions(&self) -> usize {
///         2
///     }
///
///     async fn embed(
///         &self,
///         texts: &[String],
///         _cx: &agentkit_core::Context,
///     ) -> agentkit_core::Result<Vec<Vec<f32>>> {
///         Ok(texts
///             .iter()
///             .map(|t| vec![t.len() as f32, t.chars().filter(|c| "aeiou".contains(*c)).count() as f32])
///             .collect())
///     }
/// }
/// ```
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The length of every vector it returns.
    fn dimensions(&self) -> usize;

    /// One vector per text, in order, within the deadline (and under the cancellation and
    /// trace) of `cx`.
    async fn embed(&self, texts: &[String], cx: &Context) -> Result<Vec<Vec<f32>>>;
}
