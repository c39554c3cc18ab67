//! Redis restarts under a running store: the store reports Unavailable while the server is down
//! and answers again, without being rebuilt, once it is back. (Its own binary: stopping the
//! server must not disturb other tests.)

use std::time::{Duration, Instant};

use agentkit_core::ErrorKind;
use agentkit_store::redis::RedisSessionStore;
use agentkit_store::{SaveOptions, Session, SessionStore};
use agentkit_testkit::restart::Restartable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_recovers_after_a_redis_restart() {
    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let mut server = match Restartable::redis(&url) {
        Ok(server) => server,
        Err(why) => {
            eprintln!(
                "*** NOT RUN: cannot restart Redis here ({why}); the recovery is untested on this machine ***"
            );
            return;
        }
    };
    let store = RedisSessionStore::connect(&url)
        .unwrap()
        .with_prefix(agentkit_testkit::unique("restart"))
        .with_timeout(Duration::from_secs(2));
    store
        .save(&Session::new("acme", "before"), SaveOptions::default())
        .await
        .unwrap();

    server.stop().unwrap();
    let error = store.load("acme", "before").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.is_retryable());

    server.start().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match store
            .save(&Session::new("acme", "after"), SaveOptions::default())
            .await
        {
            Ok(version) => {
                assert_eq!(version, 1);
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                assert!(Instant::now() < until, "the store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(store.load("acme", "after").await.unwrap().is_some());
    store.ping().await.unwrap();
}
