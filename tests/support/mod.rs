//! Shared helpers of the facade's integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod process;

use std::sync::{Arc, Mutex};

use agentkit::transport::Api;

/// Serves `api` on a loopback port; its base URL.
pub async fn serve(api: Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Collects everything written to it (for captured logs).
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The JSON lines written so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A fresh W3C traceparent with a random trace id; the id as hex.
pub fn traceparent() -> (String, String) {
    let trace = agentkit::TraceContext::new_root();
    (trace.traceparent(), trace.trace_id_hex())
}
