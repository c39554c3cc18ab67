//! PostgreSQL restarts under a running store: Unavailable while down, answering again without
//! being rebuilt once back. (Its own binary: stopping the server must not disturb other tests.)

use std::time::{Duration, Instant};

use agentkit_core::ErrorKind;
use agentkit_store::postgres::PostgresSessionStore;
use agentkit_store::{SaveOptions, Session, SessionStore};
use agentkit_testkit::restart::Restartable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_recovers_after_a_postgres_restart() {
    let Some(url) = agentkit_testkit::database_url() else {
        return;
    };
    let mut server = match Restartable::postgres(&url) {
        Ok(server) => server,
        Err(why) => {
            eprintln!(
                "*** NOT RUN: cannot restart PostgreSQL here ({why}); the recovery is untested on this machine ***"
            );
            return;
        }
    };
    let store = PostgresSessionStore::connect(&url)
        .await
        .unwrap()
        .with_namespace(agentkit_testkit::unique("restart"));
    store
        .save(&Session::new("acme", "before"), SaveOptions::default())
        .await
        .unwrap();

    server.stop().unwrap();
    let error = store.load("acme", "before").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");

    server.start().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match store.load("acme", "before").await {
            Ok(found) => {
                assert!(
                    found.is_some(),
                    "PostgreSQL keeps its data across a restart"
                );
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                assert!(Instant::now() < until, "the store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    store.ping().await.unwrap();
}
