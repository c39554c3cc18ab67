//! agentkit transport.
//!
//! - [`Api`]: an `axum::Router` with the agentkit HTTP API (invoke, sessions, SSE and WebSocket
//!   streaming, OpenAI-compatible chat completions, health, metrics, OpenAPI), auth
//!   ([`Authenticator`]: API keys and HS256 JWTs), per-tenant [`RateLimits`], body limits, request
//!   ids and JSON errors. Mount it in your own axum app or [`serve`] it.
//! - [`RemoteExecutor`]: an executor that calls an agent of another agentkit service.
//! - [`ServiceConfig`]: the bundled service's configuration from the environment.

mod api;
mod auth;
mod config;
mod error;
pub mod events;
pub mod jobs;
mod leases;
mod limit;
mod remote;
mod server;

pub use api::dto;
pub use api::{AgentOptions, Api, ApiBuilder, ApiJson, ApiPath, MetricsRenderer, ReadinessCheck};
pub use auth::{Authenticator, Principal};
pub use config::ServiceConfig;
pub use error::ApiError;
pub use limit::RateLimits;
pub use remote::{RemoteExecutor, RemoteExecutorBuilder};
pub use server::{serve, shutdown_signal};
