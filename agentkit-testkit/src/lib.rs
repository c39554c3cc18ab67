//! Test support for the agentkit workspace (not published).
//!
//! - [`services`]: the loopback services tests talk to, with the CI policy: under `CI` a
//!   missing service fails the test; elsewhere the test prints loudly that it skipped.
//! - [`session`]: the conformance suite every [`SessionStore`](agentkit_store::SessionStore) +
//!   [`LeaseStore`](agentkit_store::LeaseStore) backend must pass, and the concurrency cases
//!   of [`SessionAgent`](agentkit_store::SessionAgent); [`session_store_conformance!`] expands
//!   them into one `#[tokio::test]` per case.
//! - [`cluster`]: a private Redis Cluster on loopback for the cluster runs of the suites.

pub mod cluster;
pub mod jobs;
pub mod restart;
pub mod services;
pub mod session;

pub use cluster::redis_cluster_urls;
pub use services::{database_url, nats_url, redis_url, unique};
