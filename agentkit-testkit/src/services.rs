//! Loopback services and the skip-or-fail policy.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> Option<String> {
    require("Redis", "REDIS_URL", "redis://127.0.0.1:6379")
}

/// `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> Option<String> {
    require(
        "PostgreSQL",
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

/// `NATS_URL`, default `nats://127.0.0.1:4222`. The first call in a process also deletes
/// the job queues that test processes no longer running left on the server.
pub fn nats_url() -> Option<String> {
    let url = require("NATS", "NATS_URL", "nats://127.0.0.1:4222")?;
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep_nats(&url));
    Some(url)
}

/// Deletes the JetStream streams of job queues (and their buckets, and the bench's raw loops)
/// named by [`unique`] in processes that have ended. Tests make a queue per case and never
/// delete it: left alone, every run adds its streams to the server's disk, run after run on
/// the same machine. Streams of live processes, and any not named by `unique`, are left
/// alone. Runs on a thread of its own (callers are inside a runtime), for at most 10 s;
/// failures only warn.
fn sweep_nats(url: &str) {
    let url = url.to_owned();
    let swept = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), delete_stale_streams(&url))
                .await
                .map_err(|_| "timed out".to_owned())?
        })
    })
    .join();
    match swept {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => eprintln!("(deleted {n} NATS streams of earlier test runs)"),
        Ok(Err(error)) => eprintln!("(could not sweep earlier test runs' NATS streams: {error})"),
        Err(_) => eprintln!("(the sweep of earlier test runs' NATS streams panicked)"),
    }
}

async fn delete_stale_streams(url: &str) -> Result<usize, String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    Ok(delete_nats_streams(&js, of_ended_process).await)
}

/// Deletes the JetStream streams (key-value buckets' included) whose names `which` picks;
/// how many it deleted.
pub async fn delete_nats_streams(
    js: &async_nats::jetstream::Context,
    which: impl Fn(&str) -> bool,
) -> usize {
    use futures::StreamExt;
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    let mut deleted = 0;
    for name in names.iter().filter(|name| which(name)) {
        if js.delete_stream(name).await.is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// Whether `stream` is a job queue's (or its bucket's), or a `queue_throughput` raw loop's,
/// named by [`unique`] in a process that is no longer running.
fn of_ended_process(stream: &str) -> bool {
    let stream = stream.strip_prefix("KV_").unwrap_or(stream);
    let Some(rest) = ["AGENTKIT_JOBS_t", "AGENTKIT_LIVE_t", "RAW_t"]
        .iter()
        .find_map(|prefix| stream.strip_prefix(prefix))
    else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or_default();
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether this run is CI (the `CI` variable is set and not `false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The URL of a service if it answers on TCP. Under CI a missing service panics (the test
/// fails); elsewhere the test is told to skip, loudly.
fn require(name: &str, variable: &str, default: &str) -> Option<String> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    if reachable(&url) {
        return Some(url);
    }
    if in_ci() {
        panic!("{name} is required under CI but does not answer at {url} (set {variable})");
    }
    eprintln!(
        "\n*** SKIPPED: {name} does not answer at {url}; set {variable} or start it. \
         (Under CI this fails.) ***\n"
    );
    None
}

/// `host:port` of a URL like `scheme://user:pass@host:port/path`.
pub fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    Some(host.to_owned())
}

fn reachable(url: &str) -> bool {
    let Some(address) = host_port(url) else {
        return false;
    };
    let Ok(mut addresses) = address.to_socket_addrs() else {
        return false;
    };
    addresses.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// A name unique to this process and call, for per-test namespaces.
pub fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t{}-{nanos:x}-{n}-{label}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queues_of_ended_test_processes_are_swept() {
        let alive = format!("AGENTKIT_JOBS_{}", unique("x"));
        assert!(!of_ended_process(&alive));
        assert!(!of_ended_process(&format!("KV_{alive}")));
        // Pid 0 is never a process of ours (`/proc/0` does not exist).
        assert!(of_ended_process("AGENTKIT_JOBS_t0-1a2b-3-crash"));
        assert!(of_ended_process("KV_AGENTKIT_JOBS_t0-1a2b-3-crash"));
        assert!(of_ended_process("KV_RAW_t0-1a2b-3-rawbench"));
        // Not named by `unique`: a user's queue, or a stream of something else.
        assert!(!of_ended_process("AGENTKIT_JOBS_orders"));
        assert!(!of_ended_process("AGENTKIT_JOBS_t-1"));
        assert!(!of_ended_process("ORDERS"));
    }

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("redis://127.0.0.1:6379/0").as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            host_port("postgres://postgres:pw@db.local:5432/test?x=1").as_deref(),
            Some("db.local:5432")
        );
        assert_eq!(
            host_port("nats://127.0.0.1:4222").as_deref(),
            Some("127.0.0.1:4222")
        );
    }
}
