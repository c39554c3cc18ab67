//! The conformance suite on a real PostgreSQL (`DATABASE_URL`, default loopback).

use agentkit_store::postgres::PostgresSessionStore;

agentkit_testkit::session_store_conformance!(|namespace: String| async move {
    let url = agentkit_testkit::database_url()?;
    let store = PostgresSessionStore::connect(&url)
        .await
        .expect("postgres store");
    Some(store.with_namespace(namespace))
});
