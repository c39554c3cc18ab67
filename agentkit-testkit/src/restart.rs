//! Stopping and starting the loopback servers under a running test, the same way the machine
//! starts them. Only possible as the servers' administrator on the machine that runs them; the
//! constructors say why when it is not, and the test says so instead of faking a restart.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A server this test may stop and start; dropping it makes sure the server runs again.
#[derive(Debug)]
pub struct Restartable {
    name: &'static str,
    port: u16,
    stop: Vec<String>,
    start: Vec<String>,
    stopped: bool,
}

fn which(binary: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_loopback(url: &str) -> bool {
    crate::services::host_port(url).is_some_and(|hp| {
        hp.starts_with("127.0.0.1:") || hp.starts_with("localhost:") || hp.starts_with("[::1]:")
    })
}

fn port_of(url: &str) -> Option<u16> {
    crate::services::host_port(url)?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

impl Restartable {
    /// The Redis server at `url`, if this test can restart it.
    pub fn redis(url: &str) -> Result<Self, String> {
        if !is_loopback(url) {
            return Err(format!("Redis at {url} is not on this machine"));
        }
        if !which("redis-server") || !which("redis-cli") {
            return Err("redis-server/redis-cli are not installed here".into());
        }
        let port = port_of(url).unwrap_or(6379);
        let port_s = port.to_string();
        Ok(Self {
            name: "Redis",
            port,
            stop: [
                "redis-cli",
                "-h",
                "127.0.0.1",
                "-p",
                &port_s,
                "shutdown",
                "nosave",
            ]
            .map(String::from)
            .to_vec(),
            start: [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1 -::1",
                "--port",
                &port_s,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/var/lib/redis",
                "--logfile",
                "/var/log/redis/ci.log",
            ]
            .map(String::from)
            .to_vec(),
            stopped: false,
        })
    }

    /// The PostgreSQL cluster at `url`, if this test can restart it.
    pub fn postgres(url: &str) -> Result<Self, String> {
        if !is_loopback(url) {
            return Err(format!("PostgreSQL at {url} is not on this machine"));
        }
        if !which("pg_ctlcluster") {
            return Err("pg_ctlcluster is not installed here".into());
        }
        let version = std::fs::read_dir("/etc/postgresql")
            .map_err(|e| format!("cannot read /etc/postgresql: {e}"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or("no PostgreSQL cluster in /etc/postgresql")?;
        let ctl = |action: &str| {
            let mut args = vec![
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                &version,
                "main",
                action,
            ];
            if action == "stop" {
                args.extend(["-m", "fast"]);
            }
            args.into_iter().map(String::from).collect::<Vec<_>>()
        };
        Ok(Self {
            name: "PostgreSQL",
            port: port_of(url).unwrap_or(5432),
            stop: ctl("stop"),
            start: ctl("start"),
            stopped: false,
        })
    }

    fn run(argv: &[String]) -> Result<(), String> {
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                argv.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn open(&self) -> bool {
        TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(300),
        )
        .is_ok()
    }

    fn wait(&self, open: bool) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if self.open() == open {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{} did not {} in 30 s",
            self.name,
            if open { "start" } else { "stop" }
        ))
    }

    /// Stops the server and waits until its port is closed.
    pub fn stop(&mut self) -> Result<(), String> {
        // redis-cli reports the dropped connection of SHUTDOWN as an error; the port decides.
        let _ = Self::run(&self.stop);
        self.stopped = true;
        self.wait(false)
    }

    /// Starts the server and waits until its port answers.
    pub fn start(&mut self) -> Result<(), String> {
        Self::run(&self.start)?;
        self.wait(true)?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if self.stopped
            && !self.open()
            && let Err(e) = Self::run(&self.start).and_then(|()| self.wait(true))
        {
            eprintln!("could not start {} again: {e}", self.name);
        }
    }
}
