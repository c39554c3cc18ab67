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

/// `NATS_URL`, default `nats://127.0.0.1:4222`.
pub fn nats_url() -> Option<String> {
    require("NATS", "NATS_URL", "nats://127.0.0.1:4222")
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
