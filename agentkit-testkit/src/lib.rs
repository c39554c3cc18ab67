//! Test support for the agentkit workspace (not published).
//!
//! - [`services`]: the loopback services tests talk to, with the CI policy: under `CI` a
//!   missing service fails the test; elsewhere the test prints loudly that it skipped.
//! - [`session`]: the conformance suite every [`SessionStore`](agentkit_store::SessionStore) +
//!   [`LeaseStore`](agentkit_store::LeaseStore) backend must pass, and the concurrency cases
//!   of [`SessionAgent`](agentkit_store::SessionAgent); [`session_store_conformance!`] expands
//!   them into one `#[tokio::test]` per case.

pub mod jobs;
pub mod restart;
pub mod services;
pub mod session;

pub use services::{database_url, nats_url, redis_url, unique};
