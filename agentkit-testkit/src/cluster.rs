//! A private Redis Cluster on loopback for the cluster tests: three primaries on free ports,
//! started once per test process with the machine's own `redis-server` and `redis-cli`.
//!
//! Each server runs under a small shell watcher that stops it when the test process is gone,
//! however that process ends (a static is never dropped, and a killed test runs no code).

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::services::in_ci;

const NODES: usize = 3;
const STARTUP: Duration = Duration::from_secs(30);

/// The seed URLs of this process's private cluster, comma-separated (the form
/// `RedisClient::connect` takes), started on first call. Where it cannot be started (no
/// `redis-server`/`redis-cli` here), the test fails under `CI` and skips loudly elsewhere.
pub fn redis_cluster_urls() -> Option<String> {
    static CLUSTER: OnceLock<Result<String, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(urls) => Some(urls.clone()),
        Err(why) if in_ci() => panic!("cannot start a Redis Cluster under CI: {why}"),
        Err(why) => {
            eprintln!("*** SKIPPED: cannot start a Redis Cluster here ({why}) ***");
            None
        }
    }
}

/// A loopback port that is free, whose cluster bus port (+10000) is free too.
fn free_port(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free pair of ports for a cluster node".into())
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    while !ready() {
        if Instant::now() >= deadline {
            return Err(format!("{what} within {} s", STARTUP.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn start() -> Result<String, String> {
    run("redis-server", &["--version"])?;
    run("redis-cli", &["--version"])?;
    let dir = std::env::temp_dir().join(format!("agentkit-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut ports = Vec::with_capacity(NODES);
    for _ in 0..NODES {
        ports.push(free_port(&ports)?);
    }
    let parent = std::process::id();
    for port in &ports {
        let server = format!(
            "redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
             --cluster-config-file nodes-{port}.conf --cluster-node-timeout 5000 \
             --save '' --appendonly no --dir '{}' --logfile cluster-{port}.log",
            dir.display()
        );
        // The watcher stops the server once the test process is gone, then removes the
        // node's files (and the folder, once it is the last).
        let watched = format!(
            "{server} & s=$!; while kill -0 {parent} 2>/dev/null && kill -0 $s 2>/dev/null; \
             do sleep 0.5; done; kill $s 2>/dev/null; wait $s; \
             cd '{dir}' && rm -f nodes-{port}.conf cluster-{port}.log && cd / && rmdir '{dir}' 2>/dev/null",
            dir = dir.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(watched)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
    }
    for port in &ports {
        wait_until(&format!("node {port} did not listen"), || {
            TcpStream::connect(("127.0.0.1", *port)).is_ok()
        })?;
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    run("redis-cli", &create)?;
    for port in &ports {
        let port = port.to_string();
        wait_until(
            &format!("node {port} did not report the cluster ok"),
            || {
                run("redis-cli", &["-p", &port, "cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            },
        )?;
    }
    Ok(ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(","))
}
