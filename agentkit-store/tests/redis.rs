//! The conformance suite on a real Redis (`REDIS_URL`, default loopback).

use agentkit_store::redis::RedisSessionStore;

agentkit_testkit::session_store_conformance!(|namespace: String| async move {
    let url = agentkit_testkit::redis_url()?;
    Some(
        RedisSessionStore::connect(&url)
            .expect("redis pool")
            .with_prefix(namespace),
    )
});
