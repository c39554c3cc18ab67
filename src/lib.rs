//! # agentkit
//!
//! Take an LLM agent from a working prototype to a dependable production service.
//!
//! This facade re-exports the workspace's crates:
//!
//! - everything in [`agentkit_core`] at the root: [`Agent`], [`Executor`], [`Context`],
//!   [`Error`], the [`model`] and [`tool`] modules;
//! - [`store`] (feature `store`): session, record and vector stores;
//! - [`transport`] (feature `transport`): the HTTP surface, queues and workers;
//! - [`observe`] (feature `observe`): JSON logs, Prometheus metrics, OpenTelemetry traces.
//!
//! ```
//! use agentkit::{Executor, Invocation};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let agent = agentkit::demo::assistant_builder(std::sync::Arc::new(agentkit::model::ScriptedModel::demo()))
//!     .build()?;
//! let reply = agent.execute(Invocation::text("What is 17 + 25?")).await?;
//! assert_eq!(reply.output, "17 + 25 = 42");
//! # Ok::<_, agentkit::Error>(())
//! # }).unwrap();
//! ```

pub use agentkit_core::*;

#[cfg(feature = "observe")]
pub use agentkit_observe as observe;
#[cfg(feature = "store")]
pub use agentkit_store as store;
#[cfg(feature = "transport")]
pub use agentkit_transport as transport;
