//! agentkit-observe
