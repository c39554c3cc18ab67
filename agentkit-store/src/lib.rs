//! agentkit-store
