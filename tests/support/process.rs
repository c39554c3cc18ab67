//! The bundled `service` example as a child process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The example binary cargo built next to this test (`target/<profile>/examples/NAME`).
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test builds examples",
        path.display()
    );
    path
}

/// A running `service` example; killed (SIGKILL) when dropped.
pub struct Service {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Service {
    /// Starts the service on a free loopback port with the scripted model, in-memory
    /// sessions and no credentials, then `envs` on top; returns once it listens.
    pub fn start(envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(example("service"));
        command
            .env("AGENTKIT_ADDR", "127.0.0.1:0")
            .env_remove("OPENAI_API_KEY")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env_remove("AGENTKIT_API_KEYS")
            .env_remove("AGENTKIT_JWT_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the service starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Log lines (JSON) may come first; the address line is plain text.
        let base = loop {
            let line = lines
                .next()
                .expect("the service printed its address")
                .unwrap();
            if let Some(base) = line.strip_prefix("listening on ") {
                break base.to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Self { child, base }
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
