//! The conformance suite on the in-memory store.

use agentkit_store::MemorySessionStore;

agentkit_testkit::session_store_conformance!(|_namespace: String| async move {
    Some(MemorySessionStore::new())
});
