//! agentkit-transport
