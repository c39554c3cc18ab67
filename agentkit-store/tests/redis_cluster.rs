//! The conformance suite on a Redis Cluster: three primaries this test process starts on
//! loopback (see `agentkit_testkit::cluster`). Each session's keys share a hash tag, so its
//! scripts stay in one slot; the paging index and listing cross slots.

use agentkit_store::redis::{RedisClient, RedisSessionStore};

agentkit_testkit::session_store_conformance!(|namespace: String| async move {
    let urls = agentkit_testkit::redis_cluster_urls()?;
    let client = RedisClient::connect(&urls, 8).expect("cluster client");
    assert!(client.is_cluster());
    Some(RedisSessionStore::new(client).with_prefix(namespace))
});
