//! The job queue conformance suite on Redis Streams (`REDIS_URL`, default loopback).

use std::sync::Arc;

use agentkit_testkit::jobs::job_result;
use agentkit_transport::jobs::JobQueue;
use agentkit_transport::jobs::redis::RedisJobQueue;

agentkit_testkit::job_queue_conformance!(|name: String| async move {
    let url = agentkit_testkit::redis_url()?;
    let queue: Arc<dyn JobQueue> = Arc::new(
        RedisJobQueue::connect(&url, &name)
            .unwrap()
            .with_visibility_timeout(agentkit_testkit::jobs::VISIBILITY),
    );
    Some(queue)
});

/// Finished jobs' stream entries are trimmed away by the claims' housekeeping (a node at a
/// time, not deleted one by one); the depth stays right and the jobs stay readable.
#[tokio::test]
async fn acknowledged_entries_are_trimmed() {
    use std::time::Duration;

    use agentkit_store::redis::RedisClient;
    use agentkit_transport::jobs::{Finish, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("trim");
    let client = RedisClient::connect(&url, 4).unwrap();
    let queue = RedisJobQueue::new(client.clone(), &name);
    let stream = format!("agentkit:{{jobs:{name}}}:stream");
    let length = || {
        let (client, stream) = (client.clone(), stream.clone());
        async move {
            client
                .run(Duration::from_secs(2), |mut c| async move {
                    redis::cmd("XLEN")
                        .arg(&stream)
                        .query_async::<u64>(&mut c)
                        .await
                })
                .await
                .unwrap()
        }
    };
    let mut ids = Vec::new();
    for i in 0..450 {
        let spec = agentkit_testkit::jobs::spec("assistant", &format!("job {i}"));
        ids.push(queue.enqueue(spec).await.unwrap().job_id);
    }
    assert_eq!(queue.depth().await.unwrap(), 450);
    let waiting = queue
        .get(&ids[449])
        .await
        .unwrap()
        .expect("a queued job reads");
    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(waiting.spec.unwrap().input[0].text_content(), "job 449");
    assert!(waiting.created_at_ms > 0);
    // Claim and finish the first 400 only.
    let mut finished = 0;
    while finished < 400 {
        let want = (400 - finished).min(64);
        let deliveries = queue
            .claim("c", want, Duration::from_secs(1))
            .await
            .unwrap();
        for delivery in &deliveries {
            let result = job_result(&delivery.job.job_id);
            queue
                .finish(delivery, Finish::Succeeded(result))
                .await
                .unwrap();
        }
        finished += deliveries.len();
    }
    assert_eq!(queue.depth().await.unwrap(), 50);
    // A claim after the housekeeping interval trims whole nodes below the oldest entry still
    // needed (claims above may have trimmed some already).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = queue.claim("c", 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 1);
    let left = length().await;
    assert!((50..450).contains(&left), "{left} entries left");
    assert_eq!(queue.depth().await.unwrap(), 49);
    let done = queue
        .get(&ids[0])
        .await
        .unwrap()
        .expect("a finished job reads");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result.unwrap().output, ids[0]);
    assert_eq!(
        queue.get(&ids[449]).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert!(queue.get("1-0").await.unwrap().is_none());
    assert!(queue.get("not-an-entry").await.unwrap().is_none());
}

/// A Redis command for the tests below, on `client`.
async fn command<T: redis::FromRedisValue + Send>(
    client: &agentkit_store::redis::RedisClient,
    cmd: redis::Cmd,
) -> T {
    client
        .run(std::time::Duration::from_secs(2), |mut c| async move {
            cmd.query_async(&mut c).await
        })
        .await
        .unwrap()
}

/// Jobs claimed or finished by the earlier version (whose first claim made the job's hash,
/// and whose finish wrote the outcome into it) still run and read.
#[tokio::test]
async fn hashes_of_the_earlier_version_still_run_and_read() {
    use agentkit_store::redis::RedisClient;
    use agentkit_testkit::jobs::{VISIBILITY, spec};
    use agentkit_transport::jobs::{Finish, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("earlier");
    let client = RedisClient::connect(&url, 4).unwrap();
    let queue = RedisJobQueue::new(client.clone(), &name).with_visibility_timeout(VISIBILITY);
    let prefix = format!("agentkit:{{jobs:{name}}}");
    let running = queue
        .enqueue(spec("assistant", "claimed before"))
        .await
        .unwrap();
    // The earlier version's claim: read the entry, make the job's hash.
    let read: redis::Value = command(
        &client,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg("old-worker")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(format!("{prefix}:stream"))
            .arg(">")
            .clone(),
    )
    .await;
    assert_ne!(read, redis::Value::Nil);
    let spec_json = serde_json::to_string(&spec("assistant", "claimed before")).unwrap();
    let job_key = format!("{prefix}:job:{}", running.job_id);
    let _: () = command(
        &client,
        redis::cmd("HSET")
            .arg(&job_key)
            .arg("spec")
            .arg(&spec_json)
            .arg("status")
            .arg("running")
            .arg("attempts")
            .arg(1)
            .arg("created")
            .arg(5)
            .arg("entry")
            .arg(&running.job_id)
            .arg("updated")
            .arg(6)
            .clone(),
    )
    .await;
    let read = queue.get(&running.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Running, 1));
    // Its worker died; this version reclaims and finishes it.
    let again = agentkit_testkit::jobs::reclaim(&queue, "new-worker").await;
    assert_eq!(
        (again.job.job_id.as_str(), again.attempt),
        (running.job_id.as_str(), 2)
    );
    let result = job_result("finished now");
    queue
        .finish(&again, Finish::Succeeded(result))
        .await
        .unwrap();
    let read = queue.get(&running.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Succeeded, 2));
    assert_eq!(read.result.unwrap().output, "finished now");
    assert_eq!(read.created_at_ms, 5);
    let hash_left: u8 = command(&client, redis::cmd("EXISTS").arg(&job_key).clone()).await;
    assert_eq!(hash_left, 0, "the outcome replaces the hash");

    // A job the earlier version finished reads from its hash.
    let old_result = serde_json::to_string(&job_result("finished then")).unwrap();
    let _: () = command(
        &client,
        redis::cmd("HSET")
            .arg(format!("{prefix}:job:old-job"))
            .arg("spec")
            .arg(&spec_json)
            .arg("status")
            .arg("succeeded")
            .arg("attempts")
            .arg(1)
            .arg("created")
            .arg(5)
            .arg("updated")
            .arg(6)
            .arg("result")
            .arg(&old_result)
            .clone(),
    )
    .await;
    let old = queue.get("old-job").await.unwrap().unwrap();
    assert_eq!(
        (old.status, old.attempts, old.updated_at_ms),
        (JobStatus::Succeeded, 1, 6)
    );
    assert_eq!(old.result.unwrap().output, "finished then");
}

/// A worker whose job was reclaimed by another (it went silent past the visibility timeout)
/// cannot hand the job back: the job stays with the worker that holds it, and ends once.
#[tokio::test]
async fn a_worker_whose_job_was_reclaimed_cannot_hand_it_back() {
    use std::time::Duration;

    use agentkit_testkit::jobs::{VISIBILITY, spec};
    use agentkit_transport::jobs::{Finish, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let queue = RedisJobQueue::connect(&url, &agentkit_testkit::unique("stale"))
        .unwrap()
        .with_visibility_timeout(VISIBILITY);
    let job = queue.enqueue(spec("assistant", "slow")).await.unwrap();
    let stale = queue
        .claim("slow-worker", 1, Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let holder = agentkit_testkit::jobs::reclaim(&queue, "other-worker").await;
    assert_eq!(holder.attempt, 2);
    queue
        .release(&stale, Duration::ZERO, Some("late".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0, "not queued again");
    let read = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Running, 2));
    let result = job_result("done");
    queue
        .finish(&holder, Finish::Succeeded(result))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        queue
            .claim("third-worker", 1, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    let read = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Succeeded, 2));
}

/// A server that lost its script cache (a restart, a failover, `SCRIPT FLUSH`) still finishes
/// jobs: the finish loads its script again.
#[tokio::test]
async fn a_finish_loads_its_script_again_after_the_cache_is_flushed() {
    use std::time::Duration;

    use agentkit_store::redis::RedisClient;
    use agentkit_testkit::jobs::spec;
    use agentkit_transport::jobs::{Finish, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let client = RedisClient::connect(&url, 4).unwrap();
    let queue = RedisJobQueue::new(client.clone(), &agentkit_testkit::unique("flush"));
    let job = queue.enqueue(spec("assistant", "hi")).await.unwrap();
    let delivery = queue
        .claim("c", 1, Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let _: () = command(&client, redis::cmd("SCRIPT").arg("FLUSH").clone()).await;
    let result = job_result("done");
    let doc = queue
        .finish(&delivery, Finish::Succeeded(result))
        .await
        .unwrap();
    assert_eq!(doc.status, JobStatus::Succeeded);
    let read = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!(read.result.unwrap().output, "done");
}

/// A caller awaiting a job still hears of its end when the connection reading the queue's end
/// notices is killed under it (a Redis failover, a proxy's idle cut): the reader's failure
/// wakes it to look at the job, and its next wait starts another reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hears_of_the_end_after_the_notices_connection_dies() {
    use std::time::Duration;

    use agentkit_store::redis::RedisClient;
    use agentkit_testkit::jobs::{claim_one, spec};
    use agentkit_transport::jobs::{Finish, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let client = RedisClient::connect(&url, 4).unwrap();
    let queue = Arc::new(RedisJobQueue::new(
        client.clone(),
        &agentkit_testkit::unique("notices"),
    ));
    let job = queue.enqueue(spec("assistant", "hi")).await.unwrap().job_id;
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(5))
        .await
        .expect("claimed");
    let waiting = {
        let (queue, job) = (queue.clone(), job.clone());
        tokio::spawn(async move { queue.until_ended(&job, Duration::from_secs(600)).await })
    };
    // The reader blocks in `XREAD` (other tests' readers may be killed too: they recover the
    // same way).
    let mut killed = 0;
    for _ in 0..100 {
        let clients: String = command(&client, redis::cmd("CLIENT").arg("LIST").clone()).await;
        for line in clients.lines().filter(|l| l.contains(" cmd=xread ")) {
            let id = line.split_whitespace().find_map(|f| f.strip_prefix("id="));
            let cmd = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id.unwrap())
                .clone();
            killed += command::<u32>(&client, cmd).await;
        }
        if killed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(killed > 0, "a connection reading the notices");
    assert!(!waiting.is_finished(), "answered before the job ended");
    queue
        .finish(&delivery, Finish::Succeeded(job_result("done")))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the caller heard of the end")
        .unwrap()
        .unwrap()
        .expect("the job");
    assert_eq!(ended.status, JobStatus::Succeeded);
}

/// Followers of live logs share one connection: more followers than the client's pool has
/// connections each read their job's run to its end, and the worker's blocking claims still
/// get connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_followers_share_one_connection() {
    use std::time::Duration;

    use agentkit_core::AgentEvent;
    use agentkit_core::model::ScriptedModel;
    use agentkit_store::redis::RedisClient;
    use agentkit_testkit::jobs::RunningWorker;
    use agentkit_transport::jobs::{JobStatus, Worker};
    use futures::StreamExt;

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("live-share");
    // The shared connection, the worker's blocking claim and one more.
    let client = RedisClient::connect(&url, 3).unwrap();
    let queue: Arc<dyn JobQueue> = Arc::new(RedisJobQueue::new(client, &name));
    let mut followers = Vec::new();
    for i in 0..12 {
        let mut spec = agentkit_testkit::jobs::spec("assistant", &format!("What is {i} + 2?"));
        spec.stream = true;
        let job_id = queue.enqueue(spec).await.unwrap().job_id;
        // Two followers for the first job: one before it runs, one later.
        let count = if i == 0 { 2 } else { 1 };
        for _ in 0..count {
            followers.push((
                i,
                job_id.clone(),
                queue.follow_live(&job_id).await.unwrap().unwrap(),
            ));
        }
    }
    let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent)
        .concurrency(4)
        .build()
        .unwrap();
    let running = RunningWorker::spawn(worker);
    let late = queue.follow_live(&followers[0].1).await.unwrap().unwrap();
    followers.push((0, followers[0].1.clone(), late));
    for (i, job_id, mut live) in followers {
        let mut text = String::new();
        loop {
            let entry = tokio::time::timeout(Duration::from_secs(20), live.next())
                .await
                .unwrap_or_else(|_| panic!("job {i}'s live events stopped at {text:?}"))
                .expect("the live log does not end by itself")
                .unwrap();
            match entry.event {
                Some(AgentEvent::TextDelta { text: delta }) => text.push_str(&delta),
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(text, format!("{i} + 2 = {}", i + 2), "job {job_id}");
        // The end marker is written before the job's outcome.
        let doc = queue
            .until_ended(&job_id, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(doc.status, JobStatus::Succeeded);
    }
    running.stop().await.unwrap();
}
